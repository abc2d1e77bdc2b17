"""`train-vqgan`: train the first stage on a dataset artifact, publish weights + cached latents."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import TrainVQGANConfig, neutral_values, to_dict
from dydis.data.preview import save_grid
from dydis.data.standard import DatasetFile
from dydis.distributed import launch, pick_device, publishes_results
from dydis.errors import ConfigError
from dydis.models.vqgan import VQGAN
from dydis.plots import loss_curves
from dydis.progress import Progress, SilentProgress
from dydis.training import vqgan as training
from dydis.training.checkpoint import ELAPSED, load_checkpoint
from dydis.training.runs import RunFolder
from dydis.training.tensorboard import open_board, tensorboard_enabled

STAGE = "train-vqgan"
log = logging.getLogger("dydis.train_vqgan")


def split_rows(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) rows; the held-out images are never trained on."""
    if holdout >= n:
        raise ConfigError(f"config key holdout: {holdout} held-out images leave none of the {n} to train on")
    held = np.sort(np.random.default_rng(seed).choice(n, size=holdout, replace=False))
    return np.setdiff1d(np.arange(n), held), held


def run(cfg: TrainVQGANConfig, store: ArtifactStore, *, name: str | None = None, runs_dir: Path = Path("runs"),
        resume: bool = False, restart: bool = False, progress: Progress | None = None,
        tensorboard: bool | None = None) -> Artifact | None:
    """Train in ``runs_dir/train-vqgan/<name>`` and publish the vqgan artifact (None on torchrun's
    ranks other than 0); ``resume``, ``restart``, the folder's lock and ``tensorboard`` (the log
    and the reconstruction sheet) as in train-ldm (``dydis.training.runs``)."""
    board = tensorboard_enabled(tensorboard)
    data_artifact = store.load(cfg.data, kind="dataset")
    folder = RunFolder(runs_dir, STAGE, name or data_artifact.name)
    owner = publishes_results()  # under torchrun, rank 0 holds the (shared) run folder
    with folder.claim(resume=resume, restart=restart, config=to_dict(cfg), owner=owner,
                      neutral=neutral_values(type(cfg))):
        return _train(cfg, store, folder, data_artifact, resume, owner, progress or SilentProgress(), board)


def _train(cfg: TrainVQGANConfig, store: ArtifactStore, folder: RunFolder, data_artifact: Artifact, resume: bool,
           owner: bool, progress: Progress, board: bool) -> Artifact | None:
    name, run_dir = folder.path.name, folder.path
    device = pick_device(cfg.gpus)
    lpips = training.load_lpips(cfg)  # first: a missing or refused weights file stops before any work
    with DatasetFile(data_artifact.file("data.h5")) as data:
        with progress.task("loading images", total=1, unit="file") as task:
            images = data.images[()]
            task.advance(1)
    train_rows, held_rows = split_rows(len(images), min(cfg.holdout, max(1, len(images) // 10)), cfg.seed)
    folder.start(resume=resume)
    world = max(1, cfg.gpus)
    launch(training.fit, world, "nccl" if cfg.gpus else "gloo", cfg, torch.from_numpy(images),
           torch.from_numpy(train_rows), run_dir, resume, progress if world == 1 else None, lpips, board)
    if not owner:
        return None

    state = load_checkpoint(folder.checkpoint)
    model = VQGAN(cfg.model)
    model.load_state_dict(state["model"])
    model.to(device)
    metrics = training.evaluate_reconstructions(model, images[held_rows], device)
    with open(run_dir / training.LOG_CSV, newline="") as handle:
        log_rows = list(csv.DictReader(handle))

    with store.create(stage=STAGE, name=name, kind="vqgan", config=to_dict(cfg), inputs={"data": data_artifact},
                      seed=cfg.seed, device=str(device)) as writer:
        torch.save({"model": state["model"], "config": to_dict(cfg.model)}, writer.dir / "model.pt")
        shown = held_rows[np.linspace(0, len(held_rows) - 1, min(16, len(held_rows))).astype(int)]
        sheet = np.concatenate([images[shown[:8]], training.reconstruct(model, images[shown[:8]], device),
                                images[shown[8:16]], training.reconstruct(model, images[shown[8:16]], device)])
        save_grid(sheet, writer.dir / "reconstructions.png")
        with open_board(run_dir, board) as events:  # the loop draws no images: the final sheet only
            if events is not None:
                events.image("reconstructions", writer.dir / "reconstructions.png", int(state["step"]))
        shutil.copy(run_dir / training.LOG_CSV, writer.dir / "loss.csv")
        loss_curves(log_rows, ["l1", "lpips", "codebook", "g_loss", "d_loss", "d_weight"], writer.dir / "loss.png",
                    f"train-vqgan {name}")
        with progress.task("encoding latents", total=len(images), unit="img") as task:
            scale = _write_latents(model, images, held_rows, device, writer.dir / "latents.h5", task.advance)
        writer.results.update({
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
            "holdout_images": int(len(held_rows)),
            "steps": int(state["step"]),
            # over every session of a resumed run; None when an older checkpoint did not count it
            "train_seconds": None if state.get(ELAPSED) is None else round(state[ELAPSED], 1),
            "images_per_second": float(log_rows[-1]["images_per_s"]) if log_rows else None,
            "lpips": any("lpips" in r for r in log_rows),
            "scale_factor": scale,
            "parameters": sum(p.numel() for p in model.parameters()),
        })
    return writer.artifact


def _write_latents(model: VQGAN, images: np.ndarray, held_rows: np.ndarray, device: torch.device, path: Path,
                   on_rows) -> float:
    """latents.h5: float16 (n, d, 16, 16) pre-quantisation latents in dataset order, and 1/std."""
    size = model.cfg.latent_size
    latents = np.empty((len(images), model.cfg.embed_dim, size, size), np.float32)
    training.encode_all(model, lambda part: images[part], len(images), device, latents, on_rows=on_rows)
    std = float(latents.astype(np.float64).std())
    scale = 1.0 / std
    with h5py.File(path, "w") as h5:
        h5.create_dataset("latents", data=latents.astype(np.float16))
        h5.create_dataset("holdout_rows", data=held_rows)
        h5.attrs["scale_factor"] = scale
        h5.attrs["std"] = std
    return round(scale, 6)
