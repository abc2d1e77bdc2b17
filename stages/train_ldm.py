"""`train-ldm`: the diffusion model with the feature extractor, DyGA and Skip Dropout.

Reads a dataset artifact and a vqgan artifact trained on it (its cached latents, so the VQ
encoder never runs in the loop, and its decoder for the sample sheet); publishes an ldm
artifact with the extractor, the EMA U-Net and the anchors of the last DyGA round.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import TrainLDMConfig, neutral_values, to_dict
from dydis.data.preview import save_grid
from dydis.data.standard import DatasetFile
from dydis.distributed import launch, pick_device, publishes_results
from dydis.errors import ArtifactError, ConfigError
from dydis.models.vqgan import VQGAN
from dydis.plots import factor_curves, loss_curves
from dydis.progress import Progress, SilentProgress
from dydis.stages.representations import load_latents
from dydis.training import ldm as training
from dydis.training.checkpoint import ELAPSED, load_checkpoint
from dydis.training.csvlog import read_rows
from dydis.training.monitor import DisentanglementMonitor
from dydis.training.runs import RunFolder
from dydis.training.tensorboard import open_board, tensorboard_enabled
from dydis.viz.sampler import Sampler

STAGE = "train-ldm"


def resolve_inputs(cfg: TrainLDMConfig, store: ArtifactStore) -> tuple[TrainLDMConfig, Artifact, Artifact]:
    """The dataset and vqgan artifacts, and the config with the dataset's paper defaults filled in.

    ``--dataset NAME`` alone means the latest ``prepare-data/NAME`` and ``train-vqgan/NAME``.
    """
    data = store.load(cfg.data or f"prepare-data/{cfg.dataset}", kind="dataset")
    dataset = data.config.get("dataset", "")
    if cfg.dataset and cfg.data and cfg.dataset != dataset:
        raise ConfigError(f"--dataset {cfg.dataset} but --data {data.ref} holds {dataset or 'another dataset'}")
    vqgan = store.load(cfg.vqgan or f"train-vqgan/{data.name}", kind="vqgan")
    trained_on = [entry["manifest_sha256"] for entry in vqgan.inputs("data")]
    if trained_on != [data.manifest_sha256()]:
        raise ArtifactError(f"this vqgan artifact was trained on another dataset artifact than {data.ref}; "
                            "pass the vqgan trained on it (--vqgan)", vqgan.path)
    cfg = dataclasses.replace(cfg, data=data.ref, vqgan=vqgan.ref).for_dataset(dataset)
    return cfg, data, vqgan


def run(cfg: TrainLDMConfig, store: ArtifactStore, *, name: str | None = None, runs_dir: Path = Path("runs"),
        resume: bool = False, restart: bool = False, progress: Progress | None = None,
        tensorboard: bool | None = None) -> Artifact | None:
    """Train in ``runs_dir/train-ldm/<name>`` and publish the ldm artifact (None on torchrun's
    ranks other than 0). ``resume`` continues the run folder's checkpoint, ``restart`` deletes
    it first; a folder holding a checkpoint needs one of them, and the folder stays locked until
    the artifact is published (``dydis.training.runs``). ``tensorboard`` (None: when installed)
    also writes the logs and the sample sheet as TensorBoard events into the run folder; it is no
    config key, as it changes nothing the artifact holds (and so no resume or workflow cache)."""
    board = tensorboard_enabled(tensorboard)
    cfg, data_artifact, vqgan_artifact = resolve_inputs(cfg, store)
    folder = RunFolder(runs_dir, STAGE, name or data_artifact.name)
    owner = publishes_results()  # under torchrun, rank 0 holds the (shared) run folder
    with folder.claim(resume=resume, restart=restart, config=to_dict(cfg), owner=owner,
                      neutral=neutral_values(type(cfg))):
        return _train(cfg, store, folder, data_artifact, vqgan_artifact, resume, owner, progress or SilentProgress(),
                      board)


def _train(cfg: TrainLDMConfig, store: ArtifactStore, folder: RunFolder, data_artifact: Artifact,
           vqgan_artifact: Artifact, resume: bool, owner: bool, progress: Progress, board: bool) -> Artifact | None:
    name, run_dir = folder.path.name, folder.path
    device = pick_device(cfg.gpus)
    with DatasetFile(data_artifact.file("data.h5")) as data:
        with progress.task("loading images", total=1, unit="file") as task:
            images = data.images[()]
            task.advance(1)
        factors = data.factors, data.factor_sizes, data.factor_names
    latents, scale = load_latents(vqgan_artifact, len(images), cfg.unet)
    monitor = DisentanglementMonitor(images, *factors, every=cfg.eval_every, rows=cfg.eval_rows,
                                     metrics=cfg.eval_metrics, latents=latents) if cfg.eval_every else None
    world = max(1, cfg.gpus)
    if len(images) < cfg.batch_size * world:
        raise ConfigError(f"config key batch_size: {cfg.batch_size} x {world} processes is more than the "
                          f"{len(images)} images of {data_artifact.ref}")
    decoder = VQGAN.from_file(vqgan_artifact.file("model.pt"))  # for the sample sheet; checked before the run
    folder.start(resume=resume)
    launch(training.fit, world, "nccl" if cfg.gpus else "gloo", cfg, torch.from_numpy(images),
           torch.from_numpy(latents), torch.arange(len(images)), run_dir, resume, progress if world == 1 else None,
           monitor, board)
    if not owner:
        return None

    state = load_checkpoint(folder.checkpoint)
    weights = training.final_model_state(state)
    saved = {"model": weights, "anchors": state["anchors"], "scale_factor": scale,
             "configs": {"feature_extractor": to_dict(cfg.feature_extractor), "unet": to_dict(cfg.unet),
                         "diffusion": to_dict(cfg.diffusion),
                         "fsq": to_dict(cfg.fsq) if cfg.quantizer == "fsq" else None}}
    log_rows = read_rows(run_dir / training.LOG_CSV)
    rounds = read_rows(run_dir / training.ROUNDS_CSV)
    with store.create(stage=STAGE, name=name, kind="ldm", config=to_dict(cfg),
                      inputs={"data": data_artifact, "vqgan": vqgan_artifact}, seed=cfg.seed,
                      device=str(device)) as writer:
        torch.save(saved, writer.dir / "model.pt")
        shutil.copy(run_dir / training.LOG_CSV, writer.dir / "train_log.csv")
        if rounds:
            shutil.copy(run_dir / training.ROUNDS_CSV, writer.dir / "dyga_rounds.csv")
        loss_curves(log_rows, ["loss"], writer.dir / "loss.png", f"train-ldm {name}")
        if monitor is not None:
            evaluated = [row for row in log_rows if row.get("eval_seconds")]
            protocol = f"on {len(monitor.rows)} rows, scaled protocol (not eval-metrics')"
            panels = monitor.factor_panels
            per_factor = {column for columns in panels.values() for column in columns.values()}
            loss_curves(evaluated, [c for c in monitor.columns if c not in per_factor],
                        writer.dir / "disentanglement.png", f"train-ldm {name}: {protocol}",
                        scores=monitor.plotted, marker="o")
            if panels:
                factor_curves(evaluated, panels, writer.dir / "factors.png",
                              f"{name}: which factors the units hold and the U-Net reads ({protocol})")
            writer.results["disentanglement_while_training"] = {
                **monitor.describe(), "last": {k: float(evaluated[-1][k]) for k in monitor.columns}}
        with progress.task("samples.png: DDIM from the images' units", total=1, unit="sheet") as task:
            _sample_sheet(writer.dir / "model.pt", decoder, images, cfg, device, writer.dir / "samples.png")
            task.advance(1)
        with open_board(run_dir, board) as events:  # the loop draws no images: the final sheet only
            if events is not None:
                events.image("samples", writer.dir / "samples.png", int(state["step"]))
        writer.results.update({
            "steps": int(state["step"]),
            "epochs": float(log_rows[-1]["epoch"]) if log_rows else 0.0,
            "final_loss": float(log_rows[-1]["loss"]) if log_rows else None,
            # over every session of a resumed run; None when an older checkpoint did not count it
            "train_seconds": None if state.get(ELAPSED) is None else round(state[ELAPSED], 1),
            "images_per_second": float(log_rows[-1]["images_per_s"]) if log_rows else None,
            "dyga_rounds": int(state["dyga_rounds"]),
            "anchors_per_unit": [int(k) for k in rounds[-1]["anchors"].split()] if rounds else None,
            "latent_units": cfg.feature_extractor.latent_units,
            "parameters": {"feature_extractor": _count(weights, "feature_extractor."),
                           "unet": _count(weights, "unet.")},
        })
    return writer.artifact


def _sample_sheet(model_path: Path, decoder: VQGAN, images: np.ndarray, cfg: TrainLDMConfig, device: torch.device,
                  out: Path) -> None:
    """Originals above DDIM samples (EMA U-Net, eta from the config) conditioned on their units."""
    trained = training.load_model(model_path)
    sampler = Sampler(trained.model.to(device), decoder.to(device), trained.scale_factor,
                      steps=cfg.diffusion.ddim_steps, eta=cfg.diffusion.ddim_eta)
    shown = np.linspace(0, len(images) - 1, min(cfg.sample_images, len(images))).astype(int)
    generated = sampler.generate(sampler.units(images[shown]), sampler.noise(len(shown), cfg.seed))
    save_grid(np.concatenate([images[shown], generated]), out)


def _count(weights: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(v.numel() for k, v in weights.items() if k.startswith(prefix))
