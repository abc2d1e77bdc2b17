"""Disentanglement while training: eval-metrics' scores on a fixed subsample, logged without
changing the training trajectory."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from dydis.config import TrainLDMConfig, build_config
from dydis.distributed import Context
from dydis.errors import ConfigError
from dydis.metrics import GroundTruth, evaluate
from dydis.metrics.ground_truth import grid_factors
from dydis.training import ldm as training
from dydis.training.batches import to_model_input
from dydis.training.monitor import SCORES, DisentanglementMonitor, protocol_options

CPU = Context(0, 1, torch.device("cpu"))
SIZES = (2, 2, 2, 2, 2)  # 32 rows, a full grid in canonical order
FAST = ("factor_vae", "mig")
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**flags) -> TrainLDMConfig:
    base = {"data": "unused", "preset": "tiny", "batch_size": 8, "max_steps": 5, "log_every": 2,
            "dyga": {"every": 1, "subsample": 32, "max_components": 3, "n_init": 2, "max_iter": 4}}
    return build_config(TrainLDMConfig, flags={**base, **flags})


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose first pixels carry the factors (so the units have something to find)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 64, 64, 3), generator=generator, dtype=torch.uint8)
    images[:, :32, :32] = torch.from_numpy(grid_factors(SIZES)[:, :3] * 120).to(torch.uint8)[:, None, None]
    latents = torch.randn(32, 3, 16, 16, generator=generator)
    return images, latents, torch.arange(32)


def _monitor(images: torch.Tensor, rows: int, metrics=("factor_vae", "dci", "mig"),
             latents: torch.Tensor | None = None) -> DisentanglementMonitor:
    return DisentanglementMonitor(images.numpy(), grid_factors(SIZES), SIZES, list("abcde"), every=2, rows=rows,
                                  metrics=metrics, latents=None if latents is None else latents.numpy())


def _log(run_dir) -> list[dict[str, str]]:
    with open(run_dir / training.LOG_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_scores_are_logged_on_due_steps_without_changing_training_and_resume_continues(tmp_path):
    """Every 2nd step and the last: evaluate's scores, in [0, 1], each on a log row (one is
    added where none was due). Training (a DyGA round at step 4 included) ends with the weights
    it has without evaluation, and a run of 3 steps resumed to 5 ends with the same weights and
    the same scores. (DCI, slow, is left out here; the next test trains with it.)"""
    data = _data()
    plain = training.fit(CPU, _config(), *data, tmp_path / "plain", resume=False)
    monitored = training.fit(CPU, _config(), *data, tmp_path / "monitored", resume=False,
                             monitor=_monitor(data[0], rows=2_000, metrics=FAST, latents=data[1]))
    _same_weights(plain, monitored)
    assert monitored.training  # the evaluation's eval mode was undone

    rows = _log(tmp_path / "monitored")
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # log_every 2 and the last step
    columns = [key for metric in FAST for key in SCORES[metric]]
    assert set(columns + ["eval_seconds"]) <= set(rows[0])  # evaluate's own names, beside the loss columns
    for row in rows:
        assert all(0 <= float(row[k]) <= 1 for k in columns if k != "factor_vae_active")
        assert 0 <= float(row["factor_vae_active"]) <= 6  # kept codes of the tiny preset's 6 units
    assert float(rows[0]["eval_seconds"]) > 0
    assert all(float(r["cond_loss"]) > 0 and float(r["shuffled_loss"]) > 0 for r in rows)  # the probe ran

    training.fit(CPU, _config(max_steps=3, log_every=4), *data, tmp_path / "split", resume=False,
                 monitor=_monitor(data[0], rows=2_000, metrics=FAST))
    resumed = training.fit(CPU, _config(log_every=4), *data, tmp_path / "split", resume=True,
                           monitor=_monitor(data[0], rows=2_000, metrics=FAST))
    _same_weights(monitored, resumed)
    split = _log(tmp_path / "split")
    assert [r["step"] for r in split] == ["2", "3", "4", "5"]  # 2 (due) and 3 (the first part's last) kept
    assert all(r["loss"] and r["eval_seconds"] for r in split)  # every row here is an evaluation row
    assert [[r[k] for k in columns] for r in split if r["step"] != "3"] == [[r[k] for k in columns] for r in rows]
    assert [(r["step"], r["loss"]) for r in _log(tmp_path / "plain")] == [(r["step"], r["loss"]) for r in rows]


def test_logged_scores_equal_evaluate_on_the_subsample(tmp_path, monkeypatch):
    """The last row's scores are ``evaluate`` on the final extractor's raw units of the
    subsample's rows, computed here without the monitor: PCA(1) per unit, RandomState(0),
    every 10,000 of the protocol scaled to the 20 rows and every 5,000 to 10. The weights are
    those of training without evaluation."""
    build = training.build_model

    def with_larger_units(cfg):
        """The tiny extractor's units (spread ~2e-4) scaled past FactorVAE's prune threshold (0.05)."""
        model = build(cfg)
        with torch.no_grad():
            for p in model.feature_extractor.unit_mlps.layers[2].parameters():
                p.mul_(1000)
        return model

    monkeypatch.setattr(training, "build_model", with_larger_units)
    data = _data()
    monitor = _monitor(data[0], rows=20)
    assert len(monitor.rows) == 20 and np.all(np.diff(monitor.rows) > 0)  # distinct rows, in dataset order
    model = training.fit(CPU, _config(max_steps=3), *data, tmp_path, resume=False, monitor=monitor)
    _same_weights(training.fit(CPU, _config(max_steps=3), *data, tmp_path / "plain", resume=False), model)
    model.eval()
    with torch.no_grad():
        units = model.extract(to_model_input(data[0][torch.from_numpy(monitor.rows)])).units.double().numpy()
    expected = evaluate(units, GroundTruth(grid_factors(SIZES)[monitor.rows], SIZES), metrics="factor_vae,dci,mig",
                        options={"factor_vae": {"n_variance": 20, "n_train": 20, "n_eval": 10},
                                 "dci": {"n_train": 20, "n_test": 10}, "mig": {"n_samples": 20}})
    last = _log(tmp_path)[-1]
    assert last["step"] == "3"
    assert {k: float(last[k]) for k in expected} == pytest.approx(dict(expected), abs=1e-9)
    assert [float(last[f"dci_accuracy_{name}"]) for name in "abcde"] == list(expected.arrays["dci_test_accuracy"])
    assert expected["factor_vae_active"] > 0 and expected["dci_informativeness"] > 0 and expected["mig"] > 0


def test_only_the_chosen_metrics_are_logged(tmp_path):
    data = _data()
    training.fit(CPU, _config(max_steps=3, log_every=1), *data, tmp_path, resume=False,
                 monitor=_monitor(data[0], rows=32, metrics=("mig",)))
    rows = _log(tmp_path)
    assert list(rows[0])[-2:] == ["mig", "eval_seconds"] and "factor_vae" not in rows[0]
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert [r["step"] for r in rows if r["mig"]] == ["2", "3"]  # every 2nd step and the last


def test_protocol_scales_every_sample_count_to_the_subsample():
    assert protocol_options(2_000) == {"factor_vae": {"n_variance": 2_000, "n_train": 2_000, "n_eval": 1_000},
                                       "dci": {"n_train": 2_000, "n_test": 1_000}, "mig": {"n_samples": 2_000}}


def test_score_columns_are_what_evaluate_returns():
    factors = grid_factors((2, 3))
    codes = factors + np.random.default_rng(0).normal(0, 0.1, factors.shape)
    for metric, keys in SCORES.items():
        options = {metric: protocol_options(len(factors))[metric]}
        assert tuple(evaluate(codes, GroundTruth(factors, (2, 3)), metrics=metric, options=options)) == keys


@pytest.mark.parametrize("sizes, names, message", [
    ((), (), r"has none \(CelebA\)"),
    ((2, 1), ("a", "b"), r"factors \['b'\] take a single value"),
])
def test_a_dataset_without_varying_factors_is_refused(sizes, names, message):
    images = np.zeros((4, 64, 64, 3), np.uint8)
    factors = np.zeros((4, len(sizes)), np.int64)
    with pytest.raises(ConfigError, match=message):
        DisentanglementMonitor(images, factors, sizes, names, every=1, rows=10)


def test_visualize_curves_reads_and_draws_the_scores(tmp_path):
    """The curves figure gets a row of score panels when a run was evaluated while training, and
    a row per per-factor measure; rows without an evaluation (blank scores) are skipped, a factor
    blank on one evaluation is NaN there, and a run without any evaluation draws none."""
    from PIL import Image

    from dydis.viz.curves import SCORE_COLUMNS, run_curves
    from dydis.viz.figures import training_curves

    base = {"step": "1", "epoch": "0.5", "loss": "0.8", "eval_seconds": ""}
    scored = {**base, "step": "2", "epoch": "1.0", "eval_seconds": "0.5", "factor_vae_active": "3.0",
              **{k: str(0.1 * (i + 1)) for i, k in enumerate(SCORE_COLUMNS)}}
    with_scores = run_curves("a", [{**base, **{k: "" for k in SCORE_COLUMNS}}, scored], [])
    without = run_curves("b", [base], [])
    assert with_scores.score_epochs.tolist() == [1.0] and list(with_scores.scores) == list(SCORE_COLUMNS)
    assert with_scores.scores["mig"].tolist() == [float(scored["mig"])] and without.scores == {}
    assert with_scores.factor_scores == {} == without.factor_scores
    factors = {"dci_accuracy_hue": "0.9", "dci_accuracy_shape": "0.4", "conditioning_gain_hue": "0.3",
               "conditioning_gain_shape": ""}
    later = {**scored, "step": "4", "epoch": "2.0", **factors, "conditioning_gain_shape": "0.1"}
    by_factor = run_curves("c", [base, {**scored, **factors}, later], [])
    assert list(by_factor.factor_scores) == ["DCI test accuracy", "conditioning gain"]
    assert by_factor.factor_scores["DCI test accuracy"]["shape"].tolist() == [0.4, 0.4]
    np.testing.assert_array_equal(by_factor.factor_scores["conditioning gain"]["shape"], [np.nan, 0.1])
    assert list(by_factor.factor_scores["conditioning gain"]) == ["hue", "shape"]
    training_curves([with_scores, without], tmp_path / "with.png", "t")
    training_curves([without], tmp_path / "without.png", "t")
    training_curves([by_factor, with_scores], tmp_path / "factors.png", "t")
    heights = {name: Image.open(tmp_path / f"{name}.png").size[1] for name in ("with", "without", "factors")}
    assert heights["with"] > 1.8 * heights["without"] and heights["factors"] > 1.4 * heights["with"]


class _RecordingMonitor(DisentanglementMonitor):
    """Leaves a file per process that evaluated (spawned processes share only the disk)."""

    def evaluate(self, model, device, step, progress=None):
        (self.run_dir / f"evaluated_by_rank_{torch.distributed.get_rank()}_at_{step}").touch()
        return super().evaluate(model, device, step, progress)


def _ddp_worker(ctx, cfg, images, latents, rows, run_dir, monitor, tensorboard):
    model = training.fit(ctx, cfg, images, latents, rows, run_dir, resume=False, monitor=monitor,
                         tensorboard=tensorboard)
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(checksum) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(gathered, checksum)
    if ctx.is_main:
        torch.save(torch.stack(gathered), run_dir / "sums.pt")


def test_with_two_processes_only_the_main_one_evaluates(tmp_path):
    """... and only it writes TensorBoard events (one file), when the package is installed."""
    from dydis.distributed import launch
    from dydis.training.tensorboard import FOLDER, tensorboard_enabled

    images, latents, rows = _data()
    monitor = _RecordingMonitor(images.numpy(), grid_factors(SIZES), SIZES, list("abcde"), every=1, rows=32,
                                metrics=("mig",))
    monitor.run_dir = tmp_path
    board = tensorboard_enabled(None)
    launch(_ddp_worker, 2, "gloo", _config(max_steps=2, batch_size=4, log_every=2), images, latents, rows, tmp_path,
           monitor, board)
    assert sorted(p.name for p in tmp_path.glob("evaluated_by_*")) == ["evaluated_by_rank_0_at_1",
                                                                      "evaluated_by_rank_0_at_2"]
    assert len(list((tmp_path / FOLDER).glob("events.out.tfevents.*"))) == (1 if board else 0)
    assert [(r["step"], bool(r["mig"])) for r in _log(tmp_path)] == [("1", True), ("2", True)]
    sums = torch.load(tmp_path / "sums.pt")
    torch.testing.assert_close(sums[0], sums[1], rtol=0, atol=1e-9)  # the processes stayed in step
