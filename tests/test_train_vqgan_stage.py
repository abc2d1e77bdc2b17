"""`dydis train-vqgan` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import re

import h5py
import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from conftest import artifact_dirs
from dydis.artifacts import ArtifactStore
from dydis.cli.main import app

runner = CliRunner()
SMALL = ["--set", "model.ch=8", "--set", "model.norm_groups=4", "--set", "model.n_embed=32",
         "--set", "loss.disc_width=8", "--set", "holdout=8"]


def test_train_vqgan_writes_weights_and_latent_cache(tmp_path):
    root = str(tmp_path / "store")
    data = runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", "2,2,2,1,2,2", "--root", root])
    assert data.exit_code == 0, data.output
    result = runner.invoke(app, ["train-vqgan", "--data", "prepare-data/synthetic", "--preset", "tiny", "--max-steps",
                                 "3", "--batch-size", "8", "--root", root, "--runs", str(tmp_path / "runs"), *SMALL,
                                 "--set", "log_every=2"])
    assert result.exit_code == 0, result.output
    # stderr is not a terminal here: the log steps (every 2 and the last) are plain lines
    number = r"[0-9.e+-]+"
    logged = re.findall(rf"^train-vqgan step (\d+)/3 epoch {number} l1 ({number}) images/s {number} eta \S+$",
                        result.stderr, re.MULTILINE)
    assert [int(step) for step, _ in logged] == [2, 3] and all(float(l1) > 0 for _, l1 in logged)
    assert re.search(r"^train-vqgan done 3/3 step in \d+:\d\d:\d\d$", result.stderr, re.MULTILINE)
    path = result.stdout.strip()
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert manifest["kind"] == "vqgan" and manifest["inputs"][0]["ref"] == "prepare-data/synthetic@v1"
    assert manifest["config"]["model"]["ch"] == 8 and manifest["results"]["steps"] == 3
    for name in ("model.pt", "latents.h5", "reconstructions.png", "loss.csv", "loss.png"):
        assert name in manifest["files"]
    with h5py.File(f"{path}/latents.h5") as h5:
        latents = h5["latents"][()]
        assert latents.shape == (32, 3, 16, 16) and latents.dtype == np.float16
        assert h5.attrs["scale_factor"] == 1 / h5.attrs["std"]
        assert len(h5["holdout_rows"][()]) == 3  # at most a tenth of the 32 images are held out
    # the cached latents are the weights' encodings of the dataset rows, in order
    from dydis.data.standard import DatasetFile
    from dydis.models.vqgan import VQGAN
    from dydis.training.batches import to_model_input

    model = VQGAN.from_file(f"{path}/model.pt")
    store = ArtifactStore(root)
    data_dir = store.input_of(store.load(path), "data", "dataset").path
    with DatasetFile(data_dir / "data.h5") as ds, torch.no_grad():
        expected = model.encode(to_model_input(torch.from_numpy(ds.images[:4]))).numpy()
    np.testing.assert_allclose(latents[:4].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert 0 < manifest["results"]["codebook_usage"] <= 1 and manifest["results"]["psnr"] > 0


def test_train_vqgan_refuses_a_wrong_kind_input(tmp_path):
    root = str(tmp_path / "store")
    runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", "2,2,2,1,2,2", "--root", root])
    first = runner.invoke(app, ["train-vqgan", "--data", "prepare-data/synthetic", "--preset", "tiny", "--max-steps", "1",
                                "--batch-size", "8", "--root", root, "--runs", str(tmp_path / "runs"), *SMALL])
    assert first.exit_code == 0, first.output
    before = artifact_dirs(tmp_path / "store")
    result = runner.invoke(app, ["train-vqgan", "--data", "train-vqgan/synthetic", "--max-steps", "1", "--root", root])
    assert result.exit_code == 2
    assert "expected a dataset artifact, found a vqgan artifact" in result.stderr
    assert artifact_dirs(tmp_path / "store") == before
    missing = runner.invoke(app, ["train-vqgan", "--max-steps", "1", "--root", root])
    assert missing.exit_code == 2 and "data" in missing.stderr


def test_the_paper_preset_without_lpips_weights_stops_unless_told_to_train_without(tmp_path, monkeypatch):
    import dydis.training.vqgan as vqgan_training

    monkeypatch.setattr(vqgan_training, "HUB_VGG16", tmp_path / "no-hub" / "vgg16-397923af.pth")
    root, runs = str(tmp_path / "store"), tmp_path / "runs"
    runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", "2,2,2,1,2,2", "--root", root])
    before = artifact_dirs(tmp_path / "store")
    args = ["train-vqgan", "--data", "prepare-data/synthetic", "--preset", "paper", "--max-steps", "1",
            "--batch-size", "8", "--root", root, "--runs", str(runs), *SMALL]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.output
    assert refused.stderr.strip().startswith("error: config keys lpips_vgg / lpips_heads: the paper preset trains with LPIPS")
    assert "--lpips-heads" in refused.stderr and "--no-lpips" in refused.stderr
    assert artifact_dirs(tmp_path / "store") == before
    assert [p.name for p in runs.rglob("*") if p.is_file()] == [".lock"]  # nothing trained, no checkpoint
    without = runner.invoke(app, [*args, "--no-lpips"])
    assert without.exit_code == 0, without.output
    assert "LPIPS disabled" not in without.stderr
    manifest = yaml.safe_load(open(f"{without.stdout.strip()}/manifest.yaml"))
    assert manifest["config"]["lpips"] is False and manifest["results"]["lpips"] is False
