"""The train-ldm loop: DyGA rounds and alignment, resume, DDP, guards, FSQ and backbone dropout."""

from __future__ import annotations

import re
import signal

import pytest
import torch
import torch.distributed as dist

from conftest import InterruptAt
from dydis.config import TrainLDMConfig, build_config
from dydis.distributed import Context, launch
from dydis.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from dydis.training import ldm as training
from dydis.training.batches import BatchStream
from dydis.training.checkpoint import load_checkpoint
from dydis.training.csvlog import read_rows

CPU = Context(0, 1, torch.device("cpu"))
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**flags) -> TrainLDMConfig:
    base = {"data": "unused", "preset": "tiny", "batch_size": 8, "max_steps": 4, "log_every": 1,
            "dyga": {"every": 1, "subsample": 48, "max_components": 4, "n_init": 2, "max_iter": 5}}
    overrides = [f"{k}={v}" for k, v in flags.pop("set", {}).items()]
    return build_config(TrainLDMConfig, flags={**base, **flags}, overrides=overrides)


def _data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 64, 64, 3), generator=generator, dtype=torch.uint8)
    latents = torch.randn(n, 3, 16, 16, generator=generator)
    return images, latents, torch.arange(n)


def _rounds(run_dir) -> list[dict]:
    return read_rows(run_dir / training.ROUNDS_CSV)


def _log(run_dir) -> list[dict]:
    return read_rows(run_dir / training.LOG_CSV)


def test_model_loss_is_a_scalar_and_trains_both_networks():
    """The conditioning enters through zero-initialised projections (as LDM's output conv and
    transformer projections): the extractor gets gradients from the third update on."""
    model = training.build_model(_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, latents, _ = _data(4)
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(x, latents, generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
    assert loss.dim() == 0 and torch.isfinite(loss)
    for network in (model.feature_extractor, model.unet):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_alignment_starts_after_the_first_round_and_changes_the_conditioning(tmp_path, monkeypatch):
    """Batches of epoch 0 (before r = 1 epochs) are not aligned; every batch after it is."""
    aligned_steps, changes = [], []
    original = training.Anchors.align

    def spy(self, c, lam, tau, generator=None, **options):
        out = original(self, c, lam, tau, generator, **options)
        aligned_steps.append(len(aligned_steps))
        assert options["delta_grad"] == "detach"  # dyga.delta_grad reaches every alignment
        changes.append(float((out - c).detach().abs().max()))
        return out

    monkeypatch.setattr(training.Anchors, "align", spy)
    cfg = _config(max_steps=12, dyga={"every": 2, "subsample": 48, "max_components": 4, "n_init": 2, "max_iter": 5,
                                      "delta_grad": "detach"})
    training.fit(CPU, cfg, *_data(32), tmp_path, resume=False)  # 4 steps per epoch; rounds after epochs 2 and 4 (none: 12 steps = 3 epochs)
    rounds = _rounds(tmp_path)
    assert [int(r["epoch"]) for r in rounds] == [2]
    assert len(aligned_steps) == 4  # steps 9-12, the third epoch, only
    assert all(change > 0 for change in changes)
    log = _log(tmp_path)
    assert [row["anchors"] for row in log[:8]] == [""] * 8 and all(row["anchors"] for row in log[8:])
    # what the alignment did, from its first step on: delta averaged since the previous line
    assert [row["delta_mean"] for row in log[:8]] == [""] * 8
    assert all(0 < float(row["delta_mean"]) <= cfg.dyga.lam for row in log[8:])
    assert all(0 <= float(row["delta_below_1e-3"]) <= 1 for row in log[8:])
    # the extractor's gradient norm on every log line (zero-initialised projections: 0 at first)
    norms = [float(row["extractor_grad_norm"]) for row in log]
    assert all(norm >= 0 for norm in norms) and norms[-1] > 0
    state = load_checkpoint(tmp_path / training.CHECKPOINT)
    anchors = training.Anchors.from_state_dict(state["anchors"])
    assert len(anchors.n_components) == cfg.feature_extractor.latent_units
    assert all(1 <= k <= 4 for k in anchors.n_components)


def test_delta_grad_is_a_dyga_config_key():
    assert _config().dyga.delta_grad is None  # the mode's: paper detaches delta
    assert _config(set={"dyga.delta_grad": "full"}).dyga.delta_grad == "full"
    with pytest.raises(ConfigError, match="delta_grad"):
        _config(set={"dyga.delta_grad": "through"})


def test_psi_and_merge_set_how_each_round_fits_its_anchors(tmp_path):
    cfg = _config(set={"dyga.psi": 0.3, "dyga.merge": "none"})
    training.fit(CPU, cfg, *_data(32), tmp_path, resume=False)  # one round, after the first epoch
    anchors = training.Anchors.from_state_dict(load_checkpoint(tmp_path / training.CHECKPOINT)["anchors"])
    assert [(dyga.psi, dyga.merge) for _, dyga in anchors.groups] == [(0.3, "none")]
    assert _config().dyga.merge is None and _config().dyga.psi == 0.5  # the mode's merge, the paper's psi


def test_anchor_groups_align_each_unit_with_its_own_mixture():
    """Units fitted in groups (as several processes do) come back in unit order."""
    from dydis.dyga import DyGA

    torch.manual_seed(0)
    features = torch.randn(200, 3, 8) + torch.arange(3.0)[:, None] * 5  # [points, units, dims]
    fits = [DyGA("official", n_init=2, max_components=3, max_iter=5, random_state=u).fit(features[:, [u]])
            for u in range(3)]  # official mode aligns with a hard argmax: no Gumbel noise to line up
    anchors = training.Anchors([([2], fits[2]), ([0], fits[0]), ([1], fits[1])])
    c = features[:16]
    expected = torch.cat([fits[u].align(c[:, [u]], lam=0.1) for u in range(3)], 1)
    torch.testing.assert_close(anchors.align(c, 0.1, 1e-4), expected)
    assert anchors.n_components == [int(f.n_components_[0]) for f in fits]


def test_a_tiny_model_lowers_its_loss(tmp_path):
    cfg = _config(max_steps=40, quantizer="none", lr=2e-3, batch_size=16)
    training.fit(CPU, cfg, *_data(64), tmp_path, resume=False)
    losses = [float(line.split(",")[2]) for line in (tmp_path / training.LOG_CSV).read_text().splitlines()[1:]]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.9 * first, (first, last)


def test_resume_equals_uninterrupted_training(tmp_path):
    """A finished 5-step run (after a DyGA round at step 4) trained on to 7 steps gives the 7-step
    run's weights: what `--resume` with a longer length relies on. A length shorter than the
    checkpoint's step is refused without touching the run."""
    data = _data(32)
    straight = training.fit(CPU, _config(max_steps=7), *data, tmp_path / "straight", resume=False)
    training.fit(CPU, _config(max_steps=5), *data, tmp_path / "split", resume=False)
    checkpoint = tmp_path / "split" / training.CHECKPOINT
    before = checkpoint.read_bytes()
    with pytest.raises(ConfigError) as caught:
        training.fit(CPU, _config(max_steps=4), *data, tmp_path / "split", resume=True)
    assert str(caught.value) == (f"{checkpoint}: --resume: the checkpoint is at step 5, past the 4 steps this run "
                                 "trains; give a length of at least 5 steps, or start over with --restart")
    assert checkpoint.read_bytes() == before
    resumed = training.fit(CPU, _config(max_steps=7), *data, tmp_path / "split", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    a = load_checkpoint(tmp_path / "straight" / training.CHECKPOINT)
    b = load_checkpoint(tmp_path / "split" / training.CHECKPOINT)
    assert a["step"] == b["step"] == 7 and a["dyga_rounds"] == b["dyga_rounds"] == 1
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=1e-5, atol=1e-6)
    steps = [line.split(",")[0] for line in (tmp_path / "split" / training.LOG_CSV).read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 8)]


def test_fsq_and_backbone_dropout_paths_train(tmp_path):
    fsq = training.fit(CPU, _config(max_steps=2, quantizer="fsq"), *_data(16), tmp_path / "fsq", resume=False)
    assert fsq.fsq is not None and _rounds(tmp_path / "fsq") == []  # no DyGA rounds with FSQ
    backbone = _config(max_steps=2, quantizer="none", set={"unet.backbone_dropout": 0.1, "unet.skip_dropout": 0})
    model = training.fit(CPU, backbone, *_data(16), tmp_path / "backbone", resume=False)
    assert model.unet.backbone_dropout.rate == 0.1 and model.unet.skip_dropout.rate == 0
    assert load_checkpoint(tmp_path / "backbone" / training.CHECKPOINT)["step"] == 2


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    images, latents, rows = _data(16)
    latents[:] = float("nan")
    with pytest.raises(TrainingDiverged) as caught:
        training.fit(CPU, _config(max_steps=2), images, latents, rows, tmp_path, resume=False)
    assert str(caught.value) == (f"{tmp_path}: the loss became non-finite at step 0; no checkpoint was saved; lower lr "
                                 "and start over with --restart")


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """The third update overflows one weight (its loss was finite): the checkpoint of step 3 is
    refused, the one of step 2 stays, and the error says so."""
    original, updates = torch.optim.AdamW.step, []

    def overflowing(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        updates.append(1)
        if len(updates) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    with pytest.raises(TrainingDiverged) as caught:
        training.fit(CPU, _config(max_steps=4, quantizer="none", checkpoint_every=1), *_data(16), tmp_path,
                     resume=False)
    assert re.fullmatch(rf"{tmp_path / training.CHECKPOINT}: the state became non-finite by step 3 \(model 1 of "
                        r"\d+ tensors\); the checkpoint of step 2 is kept; lower lr and start over with --restart",
                        str(caught.value))
    state = load_checkpoint(tmp_path / training.CHECKPOINT)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for part in ("model", "ema") for t in state[part].values()
               if t.is_floating_point())


def test_a_diverged_resumed_run_names_the_checkpoint_it_keeps(tmp_path):
    training.fit(CPU, _config(max_steps=2, quantizer="none"), *_data(16), tmp_path, resume=False)
    kept = (tmp_path / training.CHECKPOINT).read_bytes()
    images, latents, rows = _data(16)
    latents[:] = float("inf")
    with pytest.raises(TrainingDiverged) as caught:
        training.fit(CPU, _config(max_steps=4, quantizer="none"), images, latents, rows, tmp_path, resume=True)
    assert str(caught.value) == (f"{tmp_path / training.CHECKPOINT}: the loss became non-finite at step 2; the "
                                 "checkpoint of step 2 is kept; lower lr and start over with --restart")
    assert (tmp_path / training.CHECKPOINT).read_bytes() == kept


def test_ctrl_c_checkpoints_and_stops_cleanly(tmp_path):
    """Ctrl-C after step 3: the request is shared between processes in the next step's sync, so
    the loop stops after step 4 with a checkpoint there."""
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in a background job
    with pytest.raises(TrainingInterrupted, match="stopped at step 4 of 6; continue with --resume"):
        training.fit(CPU, _config(max_steps=6, quantizer="none"), *_data(16), tmp_path, resume=False,
                     progress=InterruptAt("train-ldm", 3))
    assert load_checkpoint(tmp_path / training.CHECKPOINT)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def _ddp_worker(ctx, cfg, images, latents, rows, run_dir):
    model = training.fit(ctx, cfg, images, latents, rows, run_dir, resume=False)
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])
    stream = BatchStream(len(rows), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    seen = torch.cat([stream.batch(i) for i in range(4)])
    gathered_sums = [torch.zeros_like(checksum) for _ in range(ctx.world_size)]
    gathered_rows = [torch.zeros_like(seen) for _ in range(ctx.world_size)]
    dist.all_gather(gathered_sums, checksum)
    dist.all_gather(gathered_rows, seen)
    if ctx.is_main:
        torch.save({"sums": torch.stack(gathered_sums), "rows": torch.stack(gathered_rows)}, run_dir / "ranks.pt")


def test_ddp_with_two_cpu_processes(tmp_path):
    """Two gloo processes stay in step, see disjoint rows, and share anchors fitted in two groups."""
    cfg = _config(max_steps=4, batch_size=4)  # 32 rows / (4 x 2) = 4 steps per epoch: one DyGA round at step 4
    launch(_ddp_worker, 2, "gloo", cfg, *_data(32), tmp_path)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    torch.testing.assert_close(ranks["sums"][0], ranks["sums"][1], rtol=0, atol=1e-9)
    assert not set(ranks["rows"][0].tolist()) & set(ranks["rows"][1].tolist())
    state = load_checkpoint(tmp_path / training.CHECKPOINT)
    groups = state["anchors"]["groups"]
    assert [g["units"] for g in groups] == [[0, 1, 2], [3, 4, 5]]  # the tiny preset's 6 units over 2 processes
    assert _rounds(tmp_path)[0]["points"] == "32"  # both processes' features were gathered
