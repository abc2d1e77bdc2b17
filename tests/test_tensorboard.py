"""TensorBoard events of a training run: the CSV logs' numbers, the final image sheet, nothing else,
and the same training with and without them."""

from __future__ import annotations

import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import without_progress
from dydis.cli.main import app
from dydis.config import TrainVQGANConfig, build_config
from dydis.distributed import Context
from dydis.errors import ConfigError
from dydis.training import ldm, vqgan
from dydis.training.csvlog import read_rows
from dydis.training.tensorboard import FOLDER, tensorboard_enabled
from test_train_ldm_monitor import _config as ldm_config
from test_train_ldm_monitor import _data as ldm_data
from test_train_ldm_monitor import _monitor, _same_weights

CPU = Context(0, 1, torch.device("cpu"))
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def events(run_dir: Path):
    """Every scalar and image of a run folder's event files, as TensorBoard reads them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir / FOLDER), size_guidance={"scalars": 0, "images": 0}).Reload()


def board_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = events(run_dir)
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def csv_scalars(path: Path, section: str) -> dict[str, list[tuple[int, float]]]:
    """Each number of a log CSV as TensorBoard stores it (float32) under section/column, by step."""
    found: dict[str, list[tuple[int, float]]] = {}
    for row in read_rows(path):
        for column, text in row.items():
            try:
                value = float(text)
            except ValueError:  # an empty cell, or the anchors per unit as text
                continue
            if column != "step":
                found.setdefault(f"{section}/{column}", []).append((int(row["step"]), float(np.float32(value))))
    return found


def vqgan_config(**flags) -> TrainVQGANConfig:
    base = {"data": "unused", "preset": "tiny", "batch_size": 8, "accumulate": 1, "max_steps": 5, "log_every": 2,
            "model": {"ch": 8, "norm_groups": 4, "n_embed": 32}, "loss": {"disc_width": 8, "disc_start": 2}}
    return build_config(TrainVQGANConfig, flags={**base, **flags})


def test_ldm_events_are_its_logs_numbers_and_leave_training_unchanged(tmp_path):
    """train_log.csv (loss, lr, images/s, gradient norm, delta, the --eval-every scores) as train/,
    dyga_rounds.csv (the round's anchor counts: mean, min, max; points, seconds) as dyga/, each
    value at its step; the weights are those of the same run without TensorBoard, bit for bit."""
    pytest.importorskip("tensorboard")
    data = ldm_data()
    plain = ldm.fit(CPU, ldm_config(), *data, tmp_path / "plain", resume=False,
                    monitor=_monitor(data[0], rows=32, metrics=("mig",)))
    logged = ldm.fit(CPU, ldm_config(), *data, tmp_path / "logged", resume=False,
                     monitor=_monitor(data[0], rows=32, metrics=("mig",)), tensorboard=True)
    _same_weights(plain, logged)
    assert not (tmp_path / "plain" / FOLDER).exists()
    columns = ("loss", "lr", "extractor_grad_norm", "delta_mean", "mig")
    same = [[r[k] for k in ("step", *columns)] for r in read_rows(tmp_path / "plain" / ldm.LOG_CSV)]
    assert same == [[r[k] for k in ("step", *columns)] for r in read_rows(tmp_path / "logged" / ldm.LOG_CSV)]

    expected = {**csv_scalars(tmp_path / "logged" / ldm.LOG_CSV, "train"),
                **csv_scalars(tmp_path / "logged" / ldm.ROUNDS_CSV, "dyga")}
    assert board_scalars(tmp_path / "logged") == expected
    assert {"train/loss", "train/images_per_s", "train/delta_mean", "train/mig", "dyga/anchors_mean",
            "dyga/anchors_min", "dyga/anchors_max"} <= set(expected)
    assert [step for step, _ in expected["train/mig"]] == [2, 4, 5] and expected["dyga/anchors_max"][0][0] == 4


def test_vqgan_events_follow_a_resumed_run(tmp_path):
    """The loss log's numbers as train/; training is unchanged by TensorBoard; a run resumed
    from an earlier checkpoint hides what an attempt logged after it (as its CSV drops those
    rows), so the events stay the CSV's, one value per step."""
    pytest.importorskip("tensorboard")
    images = torch.randint(0, 256, (32, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    rows = torch.arange(32)
    plain = vqgan.fit(CPU, vqgan_config(max_steps=3), images, rows, tmp_path / "plain", resume=False)
    run = tmp_path / "run"
    _same_weights(plain, vqgan.fit(CPU, vqgan_config(max_steps=3), images, rows, run, resume=False, tensorboard=True))
    shutil.copy(run / "checkpoint.pt", tmp_path / "at_3.pt")
    vqgan.fit(CPU, vqgan_config(), images, rows, run, resume=True, tensorboard=True)  # logs steps 4 and 5
    assert [step for step, _ in board_scalars(run)["train/l1"]] == [2, 3, 4, 5]
    shutil.copy(tmp_path / "at_3.pt", run / "checkpoint.pt")  # as if it had stopped before saving step 4
    time.sleep(1.1)  # event files sort by their second of creation, then by a per-process counter
    vqgan.fit(CPU, vqgan_config(max_steps=4), images, rows, run, resume=True, tensorboard=True)
    expected = csv_scalars(run / vqgan.LOG_CSV, "train")
    assert [step for step, _ in expected["train/l1"]] == [2, 3, 4]
    assert {"train/l1", "train/g_loss", "train/d_loss", "train/images_per_s", "train/epoch"} <= set(expected)
    assert board_scalars(run) == expected


def test_the_stages_log_their_final_sheet_and_no_tensorboard_writes_nothing(tmp_path):
    """train-vqgan --tensorboard: the log as in the loop and reconstructions.png at the last step;
    train-ldm likewise with samples.png; --no-tensorboard leaves no event files."""
    pytest.importorskip("tensorboard")
    root, runs = str(tmp_path / "store"), tmp_path / "runs"
    steps = {"train-vqgan": 3, "train-ldm": 4}
    commands = {"train-vqgan": ["--data", "prepare-data/synthetic", "--set", "model.ch=8",
                                "--set", "model.norm_groups=4", "--set", "model.n_embed=32",
                                "--set", "loss.disc_width=8", "--set", "holdout=8"],
                "train-ldm": ["--dataset", "synthetic", "--latent-units", "2", "--set", "dyga.subsample=32",
                              "--set", "dyga.max_components=2", "--set", "diffusion.ddim_steps=2",
                              "--set", "sample_images=2"]}
    made = runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", "2,2,2,1,2,2", "--root", root])
    assert made.exit_code == 0, made.output
    for stage, sheet, log in (("train-vqgan", "reconstructions", "loss.csv"),
                              ("train-ldm", "samples", "train_log.csv")):
        result = runner.invoke(app, [stage, *commands[stage], "--preset", "tiny", "--max-steps", str(steps[stage]),
                                     "--batch-size", "8", "--tensorboard", "--root", root, "--runs", str(runs)])
        assert result.exit_code == 0, result.output
        artifact, run_dir = Path(result.stdout.strip()), runs / stage / "synthetic"
        logged, expected = board_scalars(run_dir), csv_scalars(artifact / log, "train")
        assert {tag: logged[tag] for tag in logged if tag.startswith("train/")} == expected
        (image,) = events(run_dir).Images(sheet)
        assert image.step == steps[stage]
        drawn = np.asarray(Image.open(artifact / f"{sheet}.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), drawn)
    quiet = runner.invoke(app, ["train-vqgan", *commands["train-vqgan"], "--preset", "tiny", "--max-steps", "1",
                                "--batch-size", "8", "--no-tensorboard", "--name", "quiet", "--root", root,
                                "--runs", str(runs)])
    assert quiet.exit_code == 0, quiet.output
    assert (runs / "train-vqgan" / "quiet" / "checkpoint.pt").is_file()
    assert not (runs / "train-vqgan" / "quiet" / FOLDER).exists()


def test_without_the_package_tensorboard_is_off_unless_asked_for(tmp_path, monkeypatch):
    """Auto (no flag) trains without it; --tensorboard is one line saying how to install it
    (exit 2), before any input is read."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert tensorboard_enabled(None) is False and tensorboard_enabled(False) is False
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
        tensorboard_enabled(True)
    for stage in ("train-vqgan", "train-ldm"):
        result = runner.invoke(app, [stage, "--data", "prepare-data/none", "--max-steps", "1", "--tensorboard",
                                     "--root", str(tmp_path / "store"), "--runs", str(tmp_path / "runs")])
        assert result.exit_code == 2, result.output
        (line,) = without_progress(result.stderr)
        assert line.startswith("error: --tensorboard: the tensorboard package is not installed; pip install -e "
                               "'.[tensorboard]'")
    assert not (tmp_path / "runs").exists()
