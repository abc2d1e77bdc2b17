"""`dydis train-ldm` end to end: dataset + vqgan artifacts -> an ldm artifact."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import artifact_dirs, replace_artifact_file, without_progress, write_code_payload
from dydis.artifacts import ArtifactStore
from dydis.cli.main import app
from dydis.errors import TrainingInterrupted
from dydis.training.checkpoint import load_checkpoint
from dydis.training.csvlog import read_rows
from dydis.training.ldm import load_model
from dydis.training.runs import RunFolder

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
VQ_SMALL = ["--preset", "tiny", "--max-steps", "1", "--batch-size", "8", "--set", "model.ch=8",
            "--set", "model.norm_groups=4", "--set", "model.n_embed=32", "--set", "loss.disc_width=8",
            "--set", "holdout=8"]
LDM_SMALL = ["--preset", "tiny", "--max-steps", "4", "--batch-size", "16", "--latent-units", "3",
             "--set", "dyga.subsample=64", "--set", "dyga.max_components=4", "--set", "dyga.max_iter=5",
             "--set", "diffusion.ddim_steps=5", "--set", "sample_images=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two synthetic datasets (64 and 32 images; the second has a constant factor) and a tiny vqgan for each."""
    root = tmp_path_factory.mktemp("store")
    runs = tmp_path_factory.mktemp("runs")  # its own: another module's run of the same name holds a checkpoint
    for name, grid in (("synthetic", "2,2,2,2,2,2"), ("other", "2,2,2,1,2,2")):
        made = runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", grid, "--name", name,
                                   "--root", str(root)])
        assert made.exit_code == 0, made.output
        vq = runner.invoke(app, ["train-vqgan", "--data", f"prepare-data/{name}", *VQ_SMALL, "--root", str(root),
                                 "--runs", str(runs)])
        assert vq.exit_code == 0, vq.output
    return root


def test_train_ldm_publishes_model_anchors_logs_and_samples(store, tmp_path):
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--set", "log_every=3",
                                 "--root", str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    # stderr is not a terminal here: log steps (every 3 and the last) and the long passes leave plain lines
    number = r"[0-9.e+-]+"
    logged = re.findall(rf"^train-ldm step (\d+)/4 epoch ({number}) loss ({number}) images/s ({number}) eta \S+$",
                        result.stderr, re.MULTILINE)
    assert [(int(step), float(epoch)) for step, epoch, *_ in logged] == [(3, 0.75), (4, 1.0)]
    assert all(float(loss) > 0 and float(rate) > 0 for _, _, loss, rate in logged)
    for line in (r"DyGA round 1: features start \d+/64 img", r"DyGA round 1: features done 64/64 img in \d+:\d\d:\d\d",
                 r"train-ldm done 4/4 step in \d+:\d\d:\d\d"):
        assert re.search(rf"^{line}$", result.stderr, re.MULTILINE), line
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert manifest["kind"] == "ldm"
    assert {i["role"]: i["ref"] for i in manifest["inputs"]} == {"data": "prepare-data/synthetic@v1",
                                                                 "vqgan": "train-vqgan/synthetic@v1"}
    config = manifest["config"]
    assert config["dataset"] == "synthetic" and config["dyga"]["every"] == 1  # the dataset's default, resolved
    for name in ("model.pt", "train_log.csv", "loss.png", "samples.png", "dyga_rounds.csv"):
        assert name in manifest["files"]
    results = manifest["results"]
    assert results["steps"] == 4 and results["epochs"] == 1.0 and results["dyga_rounds"] == 1
    assert 0 < results["train_seconds"] < 600  # the training loop's wall time, from the checkpoint
    assert len(results["anchors_per_unit"]) == 3 and all(1 <= k <= 4 for k in results["anchors_per_unit"])
    model, anchors, _ = load_model(f"{path}/model.pt")
    assert model.feature_extractor.cfg.latent_units == 3 and anchors.n_components == results["anchors_per_unit"]
    units = model.extract(torch.zeros(2, 3, 64, 64)).units
    assert units.shape == (2, 3, 32)
    assert "DyGA rounds: 1" in " ".join(result.stderr.split())


def test_train_ldm_refuses_a_vqgan_of_another_dataset(store, tmp_path):
    before = artifact_dirs(store)
    result = runner.invoke(app, ["train-ldm", "--data", "prepare-data/synthetic", "--vqgan", "train-vqgan/other",
                                 *LDM_SMALL, "--root", str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 2
    assert "trained on another dataset artifact than prepare-data/synthetic@v1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and artifact_dirs(store) == before


@pytest.mark.parametrize("flags, message", [
    (["--dyga", "--quantizer", "fsq"], "--dyga contradicts --quantizer fsq"),
    (["--no-dyga", "--quantizer", "dyga"], "--no-dyga contradicts --quantizer dyga"),
    ([], "batch_size: 512 x 1 processes is more than the 64 images"),
    (["--skip-dropout-levels", "x,y"], "--skip-dropout-levels: expected code, paper or ds values"),
    (["--set", "unet.context_dim=16"], "must equal feature_extractor.unit_dim 32"),
    (["--dataset", "cars3d"], "cars3d"),  # no such artifact in this store
])
def test_train_ldm_bad_configuration_is_one_line(store, tmp_path, flags, message):
    args = ["train-ldm", "--max-steps", "1", "--root", str(store), "--runs", str(tmp_path)]
    if "--dataset" not in flags:
        args += ["--data", "prepare-data/synthetic"]
    result = runner.invoke(app, args + flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(without_progress(result.stderr)) == 1


def test_train_ldm_resume_must_keep_the_config_but_may_train_on(store, tmp_path):
    first = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "2", "--root",
                                str(store), "--runs", str(tmp_path)])
    assert first.exit_code == 0, first.output
    changed = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "2", "--lambda", "0.2",
                                  "--resume", "--root", str(store), "--runs", str(tmp_path)])
    assert changed.exit_code == 2 and "started with a different config (dyga.lam)" in changed.stderr
    checkpoint = tmp_path / "train-ldm" / "other" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    for key in ("psi", "merge"):  # as a release before these keys wrote it
        del state["config"]["dyga"][key]
    torch.save(state, checkpoint)
    merge = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "2", "--set",
                                "dyga.merge=none", "--resume", "--root", str(store), "--runs", str(tmp_path)])
    assert merge.exit_code == 2 and "started with a different config (dyga.merge)" in merge.stderr
    shorter = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "1", "--resume",
                                  "--root", str(store), "--runs", str(tmp_path)])
    assert shorter.exit_code == 2 and "the checkpoint is at step 2, past the 1 steps" in shorter.stderr
    longer = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "3", "--resume",
                                 "--root", str(store), "--runs", str(tmp_path)])
    assert longer.exit_code == 0, longer.output
    trained_on = ArtifactStore(store).load(longer.stdout.strip())
    assert trained_on.version == ArtifactStore(store).load(first.stdout.strip()).version + 1
    assert trained_on.results["steps"] == 3 and trained_on.config["max_steps"] == 3
    assert [row["step"] for row in read_rows(tmp_path / "train-ldm" / "other" / "train_log.csv")] == ["2", "3"]


@pytest.fixture(scope="module")
def ldm_artifact(store, tmp_path_factory):
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--name", "scored", "--root",
                                 str(store), "--runs", str(tmp_path_factory.mktemp("runs"))])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_eval_metrics_of_a_model_stores_its_representation(store, ldm_artifact):
    """The stored copy: float16 units within float16's rounding, the exact float32 scalars; the
    metrics score the model's float32 units, not the copy."""
    import json

    import numpy as np

    from dydis.data.standard import DatasetFile
    from dydis.progress import SilentProgress
    from dydis.stages.representations import representations
    from dydis.training.ldm import represent

    result = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/scored", "--metrics", "mig,sap", "--n-jobs", "1",
                                 "--root", str(store)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert {i["role"] for i in manifest["inputs"]} == {"data", "model_0"}  # the data comes from the model's inputs
    with np.load(f"{path}/reps.npz") as reps:
        codes, scalars = reps["codes"], reps["scalars"]
    model = load_model(f"{ldm_artifact}/model.pt").model
    metrics = ArtifactStore(store).load(path)
    with DatasetFile(ArtifactStore(store).input_of(metrics, "data", "dataset").file("data.h5")) as data:
        images = data.images[()]
    expected_units, expected_scalars = represent(model, lambda part: images[part], len(images), torch.device("cpu"))
    assert codes.shape == (64, 3, 32) and scalars.shape == (64, 3)  # every row, in dataset order
    assert (codes.dtype, scalars.dtype) == (np.float16, np.float32)
    assert json.load(open(f"{path}/metrics.json"))["runs"][0]["codes_dtype"] == "float16"
    scale = np.abs(expected_units).max(axis=0)  # each feature's largest magnitude
    assert np.all(np.abs(codes - expected_units) <= scale * 2.0 ** -11 + 1e-6)
    np.testing.assert_allclose(scalars, expected_scalars, rtol=1e-5, atol=1e-6)
    assert set(manifest["results"]["metrics"]) == {"mig", "sap"}
    with representations(ArtifactStore(store), models=("train-ldm/scored",), reps=(), data="", reduce="pca", gpus=0,
                         batch_size=256, progress=SilentProgress()) as found:
        scored = found.codes[0]
    np.testing.assert_allclose(scored, expected_units, rtol=1e-5, atol=1e-6)
    assert scored.dtype == np.float64 and not np.array_equal(scored, codes.astype(np.float64))


def test_eval_metrics_measures_how_much_the_model_reads_its_units(store, ldm_artifact, monkeypatch):
    """`conditioning`: the training probe's gains on the model's own training data and VQ latents,
    overall and per factor (the 2^6 grid is full, so every factor has partners), with the
    metrics' seed; the default for models; refused for representation files."""
    import json

    from dydis.data.standard import DatasetFile
    from dydis.training import ldm
    from dydis.training.conditioning import ConditioningProbe, FactorGrid

    def reading_units(path):
        """The model with its weights jittered: after 4 steps its units hardly differ between
        images (their spread is 1e-5) and its U-Net hardly reads them, so every gain is about 0."""
        trained = load_model(path)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in trained.model.parameters():
                weight.add_(0.3 * torch.randn(weight.shape, generator=generator))
        return trained

    monkeypatch.setattr(ldm, "load_model", reading_units)
    result = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/scored", "--metrics", "mig,conditioning",
                                 "--n-jobs", "1", "--root", str(store)])
    assert result.exit_code == 0, result.output
    scores = json.load(open(f"{result.stdout.strip()}/metrics.json"))["runs"][0]["metrics"]
    names = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    gains = ["conditioning_gain", *(f"conditioning_gain_{n}" for n in names)]
    assert list(scores) == ["mig", *gains]
    trained = reading_units(f"{ldm_artifact}/model.pt")
    vqgan = ArtifactStore(store).input_of(ArtifactStore(store).load(ldm_artifact), "vqgan", "vqgan")
    with h5py.File(vqgan.file("latents.h5"), "r") as h5:
        latents = h5["latents"][()] * np.float32(trained.scale_factor)
    with DatasetFile(Path(store) / "prepare-data/synthetic/v1/data.h5") as data:
        images, factors = data.images[()], data.factors
    grid = FactorGrid(images.__getitem__, factors, (2,) * 6, names, np.arange(64))  # the probe's 256 rows: all 64
    expected = ConditioningProbe(images, latents, 0, grid).measure(trained.model, torch.device("cpu"))
    assert [scores[k] for k in gains] == pytest.approx([expected[k] for k in gains], abs=1e-6)
    assert len({round(scores[k], 6) for k in gains}) == len(gains) and max(abs(scores[k]) for k in gains) > 1e-3
    monkeypatch.undo()
    default = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/scored", "--n-jobs", "1", "--root", str(store)])
    assert default.exit_code == 0, default.output
    assert set(gains) <= set(json.load(open(f"{default.stdout.strip()}/metrics.json"))["summary"])
    reps = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps",
                               f"{result.stdout.strip()}/reps.npz", "--metrics", "conditioning", "--root", str(store)])
    assert reps.exit_code == 2 and "conditioning needs a generative model (--model), not --reps" in reps.stderr


def test_the_stored_representation_is_read_back_by_reps(store, ldm_artifact):
    """eval-metrics' reps.npz as --reps of eval-metrics and downstream-gbt: its float32 scalars give
    the model's own scores; its float16 units are scored with a warning that says so."""
    import json

    def scores(*args, reduce="scalar"):
        result = runner.invoke(app, ["eval-metrics", *args, "--metrics", "mig,sap", "--n-jobs", "1", "--reduce", reduce,
                                     "--root", str(store)])
        assert result.exit_code == 0, result.output
        made = result.stdout.strip()
        return f"{made}/reps.npz", yaml.safe_load(open(f"{made}/manifest.yaml"))["results"]["metrics"], result.stderr

    reps, of_model, _ = scores("--model", "train-ldm/scored")
    _, of_copy, stderr = scores("--data", "prepare-data/synthetic", "--reps", reps)
    assert of_copy == of_model and "float16" not in stderr  # the scalars are stored exactly
    _, _, stderr = scores("--data", "prepare-data/synthetic", "--reps", reps, reduce="pca")
    assert "the codes are float16" in " ".join(stderr.split())
    downstream = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", reps, "--sizes",
                                     "20,10", "--test-size", "10", "--seeds", "0", "--n-jobs", "1", "--root", str(store)])
    assert downstream.exit_code == 0, downstream.output
    report = json.load(open(f"{downstream.stdout.strip()}/downstream.json"))
    assert report["models"][0]["reps"] == str(Path(reps).resolve()) and 0 <= report["summary"]["acc_20"]["mean"] <= 1


class CountingInception(torch.nn.Module):
    """A stand-in FID network that counts the images it sees: (b, 3, 64, 64) -> (b, 8)."""

    def __init__(self, seen: list[int]):
        super().__init__()
        self.seen = seen
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 8))

    def forward(self, images):
        self.seen.append(len(images))
        return self.net(images)


def test_fid_reuses_the_real_images_statistics(store, ldm_artifact, tmp_path, monkeypatch):
    """The second evaluation reads the 3 real images' statistics from <root>/.cache/fid and
    passes only its 3 generated images through the network, for the same FID; other weights,
    --no-fid-cache and a damaged file compute them again."""
    from dydis.stages import eval_metrics

    seen = []
    monkeypatch.setattr(eval_metrics, "load_fid_inception", lambda path: CountingInception(seen))
    weights, other_weights = tmp_path / "inception.pth", tmp_path / "other.pth"
    weights.write_bytes(b"weights")
    other_weights.write_bytes(b"other weights")

    def evaluate(*extra, weights=weights):
        seen.clear()
        result = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/scored", "--metrics", "fid", "--fid-weights",
                                     str(weights), "--fid-samples", "3", "--set", "fid_steps=2", "--set",
                                     "fid_reference=3", "--root", str(store), *extra])
        assert result.exit_code == 0, result.output
        results = yaml.safe_load(open(f"{result.stdout.strip()}/manifest.yaml"))["results"]
        return results["fid_reference"], results["metrics"]["fid"]["mean"], sum(seen), result.stderr

    first, fid, images, _ = evaluate()
    assert first["source"] == "computed" and first["images"] == 3 and images == 6
    cached = store / ".cache" / "fid" / f"{first['key']}.npz"
    assert cached.is_file()
    second, fid_again, images, _ = evaluate()
    assert second == {**first, "source": "cache"} and images == 3 and fid_again == fid
    uncached, fid_again, images, _ = evaluate("--no-fid-cache")
    assert uncached == first and images == 6 and fid_again == fid
    other, _, images, _ = evaluate(weights=other_weights)
    assert other["key"] != first["key"] and other["source"] == "computed" and images == 6
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    repaired, fid_again, images, stderr = evaluate()
    assert repaired == first and images == 6 and fid_again == fid and "damaged" in stderr


def test_downstream_gbt_of_a_model_with_its_scalars(store, ldm_artifact):
    result = runner.invoke(app, ["downstream-gbt", "--model", "train-ldm/scored", "--reduce", "scalar", "--sizes",
                                 "20,10", "--test-size", "10", "--seeds", "0,1", "--n-jobs", "1", "--root", str(store)])
    assert result.exit_code == 0, result.output
    import json

    report = json.load(open(f"{result.stdout.strip()}/downstream.json"))
    assert report["models"][0]["model"] == "train-ldm/scored@v1" and 0 <= report["summary"]["acc_20"]["mean"] <= 1


def test_models_of_another_dataset_are_refused(store, ldm_artifact):
    result = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/scored", "--data", "prepare-data/other",
                                 "--root", str(store)])
    assert result.exit_code == 2 and "was trained on prepare-data/synthetic@v1, not on prepare-data/other@v1" in (
        result.stderr)


def test_train_ldm_scores_disentanglement_while_training(store, tmp_path):
    """--eval-every: the scores in train_log.csv, disentanglement.png and the scaled protocol in
    the manifest; the last scores are evaluate's on the representation eval-metrics computes
    from the published model (the dataset's 64 rows are fewer than eval_rows: all of them)."""
    from dydis.metrics import GroundTruth, evaluate
    from dydis.progress import SilentProgress
    from dydis.stages.representations import representations
    from dydis.training.conditioning import COLUMNS as CONDITIONING_COLUMNS
    from dydis.training.csvlog import read_rows

    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--eval-every", "3", "--name",
                                 "monitored", "--root", str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert {"disentanglement.png", "factors.png"} <= set(manifest["files"]) and manifest["config"]["eval_every"] == 3
    protocol = manifest["results"]["disentanglement_while_training"]
    assert protocol["rows"] == 64 and protocol["options"]["dci"] == {"n_train": 64, "n_test": 32}
    log = read_rows(tmp_path / "train-ldm" / "monitored" / "train_log.csv")
    assert [r["step"] for r in log if r["eval_seconds"]] == ["3", "4"]  # every 3rd step and the last
    assert protocol["last"] == {k: float(log[-1][k]) for k in protocol["last"]}

    with representations(ArtifactStore(store), models=("train-ldm/monitored",), reps=(), data="", reduce="pca",
                         gpus=0, batch_size=256, progress=SilentProgress()) as found:  # what eval-metrics scores
        truth = GroundTruth(found.data.factors, found.data.factor_sizes)
        expected = evaluate(found.codes[0], truth, metrics=protocol["metrics"], options=protocol["options"])
    accuracy = {k: v for k, v in protocol["last"].items() if k.startswith("dci_accuracy_")}
    gains = {k: v for k, v in protocol["last"].items() if k.startswith("conditioning_gain_")}
    scores = {k: v for k, v in protocol["last"].items()
              if k not in CONDITIONING_COLUMNS and k not in accuracy and k not in gains}
    factors = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    assert list(gains) == [f"conditioning_gain_{n}" for n in factors]  # a full grid: every factor has partners
    assert scores == pytest.approx(dict(expected), abs=1e-9)
    # DCI's test accuracy of each factor, by name; informativeness is their mean
    assert list(accuracy) == [f"dci_accuracy_{n}" for n in factors]
    assert np.mean(list(accuracy.values())) == pytest.approx(expected["dci_informativeness"], abs=1e-9)
    assert 0 < protocol["last"]["cond_loss"] and 0 < protocol["last"]["shuffled_loss"]  # the conditioning probe
    assert "step 4, 64 rows: factor_vae" in " ".join(result.stderr.split())


def test_train_ldm_refuses_evaluation_without_varying_factors(store, tmp_path):
    result = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--eval-every", "2", "--root",
                                 str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "the factors ['scale'] take a single value" in result.stderr
    assert len(without_progress(result.stderr)) == 1


# ---- reliability: model files, run folders, Ctrl-C ---------------------------------------------

def _one_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = without_progress(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


def _copy_of(store: Path, copy: Path) -> Path:
    """A private copy of the store (manifests name their inputs relative to the store, so the copy reads its own)."""
    shutil.copytree(store, copy)
    return copy


def test_code_in_a_model_file_is_refused_not_run(store, ldm_artifact, tmp_path):
    """A pickle payload in an ldm or vqgan model.pt, with a manifest rewritten to match, is refused
    by every command that loads it (exit 2, one line naming the file) and never runs."""
    marker = tmp_path / "code-ran"
    copy = _copy_of(store, tmp_path / "store")
    ldm_dir = copy / "train-ldm" / "scored" / "v1"
    replace_artifact_file(ldm_dir, "model.pt", lambda path: write_code_payload(path, marker, model={}, configs={}))
    for args in (["eval-metrics", "--model", "train-ldm/scored", "--metrics", "mig"],
                 ["downstream-gbt", "--model", "train-ldm/scored"],
                 ["visualize", "units", "--model", "train-ldm/scored"]):
        result = runner.invoke(app, [*args, "--root", str(copy)])
        assert not marker.exists(), args
        assert _one_line(result) == (f"error: {ldm_dir / 'model.pt'}: refused: expected only tensors and plain "
                                     "values in the ldm model file, found other Python objects (loading them could "
                                     "run code)")
    copy = _copy_of(store, tmp_path / "store2")
    vqgan_dir = copy / "train-vqgan" / "synthetic" / "v1"
    replace_artifact_file(vqgan_dir, "model.pt", lambda path: write_code_payload(path, marker, model={}, config={}))
    refused = (f"error: {vqgan_dir / 'model.pt'}: refused: expected only tensors and plain values in the vqgan model "
               "file, found other Python objects (loading them could run code)")
    figure = runner.invoke(app, ["visualize", "interchange", "--model", "train-ldm/scored", "--root", str(copy)])
    assert _one_line(figure) == refused
    checkpoint = tmp_path / "runs" / "train-ldm" / "synthetic" / "checkpoint.pt"  # a run to --restart
    checkpoint.parent.mkdir(parents=True)
    torch.save({"step": 1, "config": {}}, checkpoint)
    restart = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--restart", "--root", str(copy),
                                  "--runs", str(tmp_path / "runs")])
    assert _one_line(restart) == refused  # train-ldm reads the vqgan (its decoder) before deleting the run
    assert load_checkpoint(checkpoint)["step"] == 1 and not marker.exists()


def test_restart_checks_the_lpips_files_before_deleting_the_run(store, tmp_path):
    args = ["train-vqgan", "--data", "prepare-data/synthetic", *VQ_SMALL, "--name", "lpips", "--root", str(store),
            "--runs", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    checkpoint = tmp_path / "train-vqgan" / "lpips" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    missing = tmp_path / "vgg16.pth"
    result = runner.invoke(app, [*args, "--restart", "--lpips-vgg", str(missing), "--lpips-heads", str(missing)])
    assert _one_line(result) == f"error: {missing}: torch state dict not found"
    assert checkpoint.read_bytes() == before


def test_code_in_a_checkpoint_is_refused_on_resume(store, tmp_path):
    runs, marker = tmp_path / "runs", tmp_path / "code-ran"
    checkpoint = runs / "train-ldm" / "synthetic" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    write_code_payload(checkpoint, marker, step=1, config={})
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--resume", "--root", str(store),
                                 "--runs", str(runs)])
    assert not marker.exists()
    assert _one_line(result) == (f"error: {checkpoint}: refused: expected only tensors and plain values in the "
                                 "checkpoint, found other Python objects (loading them could run code)")


def test_names_outside_the_runs_folder_are_refused_before_anything_is_touched(store, tmp_path):
    """The old commands wiped RUNS/<stage>/<name> first: ../../victim or an absolute path deleted
    that folder even though the command was then rejected (here: a batch larger than the data,
    LPIPS files that do not exist)."""
    victim, runs = tmp_path / "victim", tmp_path / "runs"
    victim.mkdir()
    (victim / "keep.txt").write_text("data")
    rejected = {"train-ldm": ["--dataset", "synthetic", "--max-steps", "1", "--batch-size", "512"],
                "train-vqgan": ["--data", "prepare-data/synthetic", *VQ_SMALL, "--lpips-vgg", str(tmp_path / "no.pth"),
                                "--lpips-heads", str(tmp_path / "no.pth")]}
    for command, args in rejected.items():
        for name in ("../../victim", str(victim), ".."):
            result = runner.invoke(app, [command, *args, "--name", name, "--root", str(store), "--runs", str(runs)])
            assert _one_line(result) == (f"error: --name {name!r}: expected one name of letters, digits and . _ + -, "
                                         "starting with a letter or digit (it names the artifact and the run folder)")
            assert (victim / "keep.txt").read_text() == "data"
    assert not runs.exists()


def test_a_run_with_a_checkpoint_is_never_deleted_implicitly(store, tmp_path):
    runs = tmp_path / "runs"
    args = ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--max-steps", "2", "--name", "kept", "--root",
            str(store), "--runs", str(runs)]
    assert runner.invoke(app, args).exit_code == 0
    folder = runs / "train-ldm" / "kept"
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}  # tensorboard/ too
    again = runner.invoke(app, args)  # e.g. after Ctrl-C, without --resume
    assert _one_line(again) == (f"error: {folder}: this run folder holds a checkpoint: continue it with --resume, "
                                "or delete it and start over with --restart")
    rejected = runner.invoke(app, [*args, "--restart", "--batch-size", "512"])  # --restart, but a bad value
    assert "config key batch_size: 512 x 1 processes is more than the 64 images" in _one_line(rejected)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    restarted = runner.invoke(app, [*args, "--restart", "--seed", "7"])
    assert restarted.exit_code == 0, restarted.output
    assert load_checkpoint(folder / "checkpoint.pt")["config"]["seed"] == 7
    nothing = runner.invoke(app, [*args, "--resume", "--name", "never-ran"])
    assert _one_line(nothing) == (f"error: {runs / 'train-ldm' / 'never-ran'}: --resume: no checkpoint to continue in "
                                  "this run folder; drop --resume to start a new run")


def test_a_second_run_of_a_folder_in_use_stops_at_once(store, tmp_path):
    runs = tmp_path / "runs"
    folder = RunFolder(runs, "train-ldm", "busy")
    with folder.claim(resume=False, restart=False, config={}):  # another train-ldm --name busy, running
        result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--name", "busy", "--root",
                                     str(store), "--runs", str(runs)])
    assert _one_line(result) == (f"error: {folder.path}: another process is using this run folder (a run of the same "
                                 "stage and --name); wait for it to finish or pick another --name")
    assert [p.name for p in folder.path.iterdir()] == [".lock"]


@pytest.mark.parametrize("stop", [TrainingInterrupted("stopped at step 2 of 4; continue with --resume", "ckpt.pt"),
                                  KeyboardInterrupt()])
def test_an_interrupted_run_exits_130(store, tmp_path, monkeypatch, stop):
    def interrupted(*args, **kwargs):
        raise stop

    monkeypatch.setattr("dydis.training.ldm.fit", interrupted)
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--root", str(store), "--runs",
                                 str(tmp_path)])
    assert _one_line(result, 130) == (f"error: {stop}" if str(stop) else "error: interrupted")


def test_compile_on_the_cpu_is_refused_before_training(store, tmp_path):
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--compile", "--root", str(store),
                                 "--runs", str(tmp_path)])
    assert _one_line(result) == ("error: config key compile: torch.compile of the U-Net runs on the GPU only; drop "
                                 "--compile or train with --gpus 1 or more")
    assert not (tmp_path / "train-ldm").exists()
