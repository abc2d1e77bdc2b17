"""`dydis train-ldm` end to end: dataset + vqgan artifacts -> an ldm artifact."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import artifact_dirs
from dydis.artifacts import ArtifactStore
from dydis.cli.main import app
from dydis.training.ldm import load_model

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
    for name, grid in (("synthetic", "2,2,2,2,2,2"), ("other", "2,2,2,1,2,2")):
        made = runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", grid, "--name", name,
                                   "--root", str(root)])
        assert made.exit_code == 0, made.output
        vq = runner.invoke(app, ["train-vqgan", "--data", f"prepare-data/{name}", *VQ_SMALL, "--root", str(root),
                                 "--runs", str(root.parent / "runs")])
        assert vq.exit_code == 0, vq.output
    return root


def test_train_ldm_publishes_model_anchors_logs_and_samples(store, tmp_path):
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--root", str(store),
                                 "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
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
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_train_ldm_resume_must_keep_the_config(store, tmp_path):
    first = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "2", "--root",
                                str(store), "--runs", str(tmp_path)])
    assert first.exit_code == 0, first.output
    changed = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--max-steps", "2", "--lambda", "0.2",
                                  "--resume", "--root", str(store), "--runs", str(tmp_path)])
    assert changed.exit_code == 2 and "started with a different config" in changed.stderr


@pytest.fixture(scope="module")
def ldm_artifact(store, tmp_path_factory):
    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--name", "scored", "--root",
                                 str(store), "--runs", str(tmp_path_factory.mktemp("runs"))])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_eval_metrics_of_a_model_stores_its_representation(store, ldm_artifact):
    import numpy as np

    from dydis.data.standard import DatasetFile
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
    np.testing.assert_allclose(codes, expected_units, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scalars, expected_scalars, rtol=1e-5, atol=1e-6)
    assert set(manifest["results"]["metrics"]) == {"mig", "sap"}


def test_fid_of_a_model_uses_the_given_inception_weights(store, ldm_artifact, tmp_path):
    from dydis.models.inception import FIDInceptionV3

    weights = tmp_path / "inception.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(FIDInceptionV3().state_dict(), weights)
    args = ["eval-metrics", "--model", "train-ldm/scored", "--metrics", "fid", "--fid-weights", str(weights),
            "--fid-samples", "3", "--set", "fid_steps=2", "--set", "fid_reference=3", "--root", str(store)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(open(f"{result.stdout.strip()}/manifest.yaml"))
    assert manifest["results"]["metrics"]["fid"]["mean"] > 0 and manifest["config"]["fid_samples"] == 3
    missing = runner.invoke(app, args[:5] + ["--fid-weights", str(tmp_path / "nowhere.pth")] + args[7:])
    assert missing.exit_code == 2 and "nowhere.pth" in missing.stderr


def test_downstream_gbt_of_a_model_with_its_scalars(store, ldm_artifact):
    result = runner.invoke(app, ["downstream-gbt", "--model", "train-ldm/scored", "--reduce", "scalar", "--sizes",
                                 "20,10", "--test-size", "10", "--seeds", "2", "--n-jobs", "1", "--root", str(store)])
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
    import numpy as np

    from dydis.data.standard import DatasetFile
    from dydis.metrics import GroundTruth, evaluate
    from dydis.training.csvlog import read_rows

    result = runner.invoke(app, ["train-ldm", "--dataset", "synthetic", *LDM_SMALL, "--eval-every", "3", "--name",
                                 "monitored", "--root", str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert "disentanglement.png" in manifest["files"] and manifest["config"]["eval_every"] == 3
    protocol = manifest["results"]["disentanglement_while_training"]
    assert protocol["rows"] == 64 and protocol["options"]["dci"] == {"n_train": 64, "n_test": 32}
    log = read_rows(tmp_path / "train-ldm" / "monitored" / "train_log.csv")
    assert [r["step"] for r in log if r["eval_seconds"]] == ["3", "4"]  # every 3rd step and the last
    assert protocol["last"] == {k: float(log[-1][k]) for k in protocol["last"]}

    scored = runner.invoke(app, ["eval-metrics", "--model", "train-ldm/monitored", "--metrics", "mig", "--n-jobs",
                                 "1", "--root", str(store)])
    assert scored.exit_code == 0, scored.output
    with np.load(f"{scored.stdout.strip()}/reps.npz") as reps:
        codes = reps["codes"].astype(np.float64)
    data_path = next(i["path"] for i in manifest["inputs"] if i["role"] == "data")
    with DatasetFile(f"{data_path}/data.h5") as data:
        truth = GroundTruth(data.factors, data.factor_sizes)
    expected = evaluate(codes, truth, metrics=protocol["metrics"], options=protocol["options"])
    assert protocol["last"] == pytest.approx(dict(expected), abs=1e-9)
    assert "step 4, 64 rows: factor_vae" in " ".join(result.stderr.split())


def test_train_ldm_refuses_evaluation_without_varying_factors(store, tmp_path):
    result = runner.invoke(app, ["train-ldm", "--dataset", "other", *LDM_SMALL, "--eval-every", "2", "--root",
                                 str(store), "--runs", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "the factors ['scale'] take a single value" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
