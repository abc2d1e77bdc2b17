"""`dydis train-ldm` end to end: dataset + vqgan artifacts -> an ldm artifact."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import artifact_dirs
from dydis.cli.main import app
from dydis.training.ldm import load_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
VQ_SMALL = ["--preset", "tiny", "--max-steps", "1", "--batch-size", "8", "--set", "model.ch=8",
            "--set", "model.norm_groups=4", "--set", "model.n_embed=32", "--set", "loss.disc_width=8",
            "--set", "holdout=8"]
LDM_SMALL = ["--preset", "tiny", "--max-steps", "4", "--batch-size", "8", "--latent-units", "3",
             "--set", "dyga.subsample=32", "--set", "dyga.max_components=4", "--set", "dyga.max_iter=5",
             "--set", "diffusion.ddim_steps=5", "--set", "sample_images=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two synthetic datasets (32 and 16 images) and a tiny vqgan for each."""
    root = tmp_path_factory.mktemp("store")
    for name, grid in (("synthetic", "2,2,2,1,2,2"), ("other", "2,2,2,1,2,1")):
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
    model, anchors = load_model(f"{path}/model.pt")
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
    ([], "batch_size: 512 x 1 processes is more than the 32 images"),
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
