"""The `train-ldm` loop: latent diffusion conditioned on the feature extractor, with DyGA rounds.

One step: a shuffled batch of images and their cached VQ latents (scaled), the feature
extractor's units (FSQ-quantised if chosen), aligned to the anchors of the last DyGA round once
there is one (eq. 6), and the epsilon-prediction loss of the U-Net (Skip Dropout inside it).
AdamW updates both networks; an EMA tracks the U-Net.

Every ``dyga.every`` epochs, the extractor's raw outputs (eval-mode BatchNorm, no alignment) on
a seeded subsample of the training rows are fitted anew; with several processes each computes
the features of its share of the rows, the features are gathered, each process fits its share
of the units, and the fitted anchors are exchanged, so every process aligns with the same ones.

Everything random in a step is drawn from generators seeded by (seed, rank, step) (our own for
timesteps, noise, Skip Dropout and Gumbel noise; torch's global one for nn.Dropout) and the
batches are a pure function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from dydis.config import TrainLDMConfig, from_dict, to_dict
from dydis.distributed import Context, autocast_for
from dydis.dyga import DyGA
from dydis.dyga.align import DeltaStats
from dydis.errors import ConfigError
from dydis.models.config import DiffusionConfig, FeatureExtractorConfig, FSQConfig, UNetConfig
from dydis.models.ema import EMA
from dydis.models.ldm import LatentDiffusion
from dydis.progress import Progress, SilentProgress
from dydis.torchfile import load_torch_file, load_weights, require_keys
from dydis.training.batches import BatchStream, to_model_input
from dydis.training.checkpoint import Checkpoint, stop_requests
from dydis.training.csvlog import CsvLog
from dydis.training.runs import CHECKPOINT
from dydis.training.tensorboard import open_board

if TYPE_CHECKING:
    from dydis.training.monitor import DisentanglementMonitor

LOG_CSV = "train_log.csv"
ROUNDS_CSV = "dyga_rounds.csv"
log = logging.getLogger("dydis.train_ldm")


def build_model(cfg: TrainLDMConfig) -> LatentDiffusion:
    """The networks, initialised from ``cfg.seed`` without touching the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LatentDiffusion(cfg.feature_extractor, cfg.unet, cfg.diffusion,
                               cfg.fsq if cfg.quantizer == "fsq" else None)


def steps_per_epoch(cfg: TrainLDMConfig, n_rows: int, world_size: int) -> int:
    return n_rows // (cfg.batch_size * world_size)


def total_steps(cfg: TrainLDMConfig, n_rows: int, world_size: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * steps_per_epoch(cfg, n_rows, world_size)))


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank) * 10_000_019 + step


def gradient_norm(module: torch.nn.Module) -> float:
    """Total L2 norm of the gradients of ``module``'s parameters (0 when none has one)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


# ---- anchors -------------------------------------------------------------------------------


class Anchors:
    """DyGA mixtures for all N units, possibly fitted in groups of units (one per process)."""

    def __init__(self, groups: list[tuple[list[int], DyGA]]):
        self.groups = groups
        order = torch.tensor([u for units, _ in groups for u in units])
        self._inverse = torch.argsort(order)

    def align(self, c: Tensor, lam: float, tau: float, generator: torch.Generator | None = None,
              delta_grad: str | None = None, stats: DeltaStats | None = None) -> Tensor:
        """Eq. (6) for every unit of c (b, N, D); gradients flow to c. ``stats`` collects delta."""
        parts = []
        for units, dyga in self.groups:
            out = dyga.alignment(c[:, units], lam=lam, tau=tau, generator=generator, delta_grad=delta_grad)
            parts.append(out.features)
            if stats is not None:
                stats.add(out.delta)
        return torch.cat(parts, 1)[:, self._inverse.to(c.device)]

    @property
    def n_components(self) -> list[int]:
        """Anchors per unit, in unit order."""
        counts = [int(k) for _, dyga in self.groups for k in dyga.n_components_]
        return [counts[i] for i in self._inverse.tolist()]

    def to(self, device: torch.device) -> "Anchors":
        for _, dyga in self.groups:
            dyga.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [{"units": list(units), "dyga": dyga.state_dict()} for units, dyga in self.groups]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Anchors":
        return cls([(list(g["units"]), DyGA().load_state_dict(g["dyga"])) for g in state["groups"]])


@torch.no_grad()
def extract_features(model: LatentDiffusion, images: Tensor, rows: Tensor, batch_size: int,
                     device: torch.device, autocast=nullcontext, on_rows: Callable[[int], None] | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Raw units (n, N, D) and scalars (n, N), float32 on ``device``, of ``images[rows]``.

    The extractor runs in eval mode (BatchNorm running statistics) and its mode is restored.
    """
    was_training = model.training
    model.eval()
    units, scalars = [], []
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start: start + batch_size]
            x = to_model_input(images[part.to(images.device)]).to(device, non_blocking=True)
            with autocast():
                out = model.extract(x)
            units.append(out.units.float())
            scalars.append(out.scalars.float())
            if on_rows is not None:
                on_rows(len(part))
    finally:
        model.train(was_training)
    return torch.cat(units), torch.cat(scalars)


def fit_anchors(ctx: Context, cfg: TrainLDMConfig, model: LatentDiffusion, images: Tensor, train_rows: Tensor,
                round_index: int, autocast, progress: Progress) -> tuple[Anchors, dict[str, Any]]:
    """One DyGA round on a seeded subsample of the training rows; identical result on every rank."""
    started = time.perf_counter()
    n = min(cfg.dyga.subsample, len(train_rows))
    n -= n % ctx.world_size  # equal shares, for the all-gather
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + round_index)
    picked = train_rows[torch.randperm(len(train_rows), generator=generator)[:n].sort().values]
    share = picked[ctx.rank::ctx.world_size]
    with progress.task(f"DyGA round {round_index}: features", total=len(share), unit="img") as task:
        units, _ = extract_features(model, images, share, cfg.dyga.feature_batch, ctx.device, autocast,
                                    on_rows=task.advance)
    if ctx.distributed:
        gathered = [torch.empty_like(units) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, units)
        units = torch.cat(gathered)
    n_units = units.shape[1]
    my_units = [int(u) for u in np.array_split(np.arange(n_units), ctx.world_size)[ctx.rank]]
    groups: list[tuple[list[int], DyGA]] = []
    with progress.task(f"DyGA round {round_index}: anchors for {n_units} units", total=1, unit="fit") as task:
        if my_units:
            dyga = DyGA(cfg.dyga.mode, n_init=cfg.dyga.n_init, max_components=cfg.dyga.max_components,
                        max_iter=cfg.dyga.max_iter, psi=cfg.dyga.psi, merge=cfg.dyga.merge,
                        random_state=cfg.seed * 7919 + round_index)
            dyga.fit(units[:, my_units], units=my_units)  # each unit's own stream
            groups.append((my_units, dyga))
        task.advance(1)
    if ctx.distributed:
        states: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(states, [(u, d.state_dict()) for u, d in groups])
        groups = [(u, DyGA().load_state_dict(s)) for per_rank in states for u, s in per_rank]
    anchors = Anchors(groups).to(ctx.device)
    report = {"round": round_index, "points": int(units.shape[0]), "seconds": round(time.perf_counter() - started, 2),
              "anchors_mean": round(float(np.mean(anchors.n_components)), 2),
              "anchors_min": min(anchors.n_components), "anchors_max": max(anchors.n_components),
              "anchors": " ".join(map(str, anchors.n_components))}
    return anchors, report


# ---- the loop ------------------------------------------------------------------------------


def fit(ctx: Context, cfg: TrainLDMConfig, images: Tensor, latents: Tensor, train_rows: Tensor, run_dir: Path,
        resume: bool, progress: Progress | None = None, monitor: DisentanglementMonitor | None = None,
        tensorboard: bool = False) -> LatentDiffusion:
    """Train from scratch or from ``run_dir/checkpoint.pt``; returns this process's model (the live
    U-Net, not the EMA). The final state, EMA included, is also saved as the checkpoint.

    ``images`` is the dataset, uint8 (n, 64, 64, 3); ``latents`` its cached VQ latents already
    multiplied by the scale factor, (n, c, h, w); ``train_rows`` the rows to train on. A
    ``monitor`` adds the disentanglement scores to the log rows of the steps it is due (main
    process only: the others wait for it in the next step's all-reduce). ``tensorboard``: the
    main process also writes the logs' numbers to ``run_dir/tensorboard`` (``dydis.training.tensorboard``).
    """
    if cfg.batch_size is None or cfg.dyga.every is None:
        raise ConfigError("batch_size and dyga.every must be set: resolve the config with for_dataset() first")
    progress = progress or SilentProgress()
    device = ctx.device
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg).to(device)
    ema = EMA(model.unet, cfg.ema_decay)
    on_gpu = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=on_gpu)
    stream = BatchStream(len(train_rows), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    per_epoch = stream.batches_per_epoch
    steps = total_steps(cfg, len(train_rows), ctx.world_size)
    step, anchors, rounds = 0, None, 0
    checkpoint = Checkpoint(run_dir / CHECKPOINT, writes=ctx.is_main, lr_key="lr")
    if resume:
        state = checkpoint.load(steps)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, rounds = state["step"], state["dyga_rounds"]
        if state["anchors"] is not None:
            anchors = Anchors.from_state_dict(state["anchors"]).to(device)
        if ctx.is_main:
            log.info("resumed from %s at step %d of %d", checkpoint.path, step, steps)
    if on_gpu:
        model.unet.to(memory_format=torch.channels_last)
        images, latents = images.to(device), latents.to(device)
    if cfg.compile:
        model.unet.compile()
    ddp = DistributedDataParallel(model, device_ids=[device] if on_gpu else None) if ctx.distributed else model
    rows_on_device = train_rows.to(images.device)
    autocast = autocast_for(device, cfg.precision)
    generator = torch.Generator(device=device)

    def save(at_step: int) -> None:
        checkpoint.save(at_step, {"model": model, "ema": ema, "optimizer": optimizer},
                        anchors=None if anchors is None else anchors.state_dict(), dyga_rounds=rounds,
                        config=to_dict(cfg))

    monitor = monitor if ctx.is_main else None
    seen, train_seconds, window = 0, 0.0, []
    delta_stats = DeltaStats()  # eq. (6)'s delta between log lines
    model.train()
    with (stop_requests() as stop_requested, progress.task("train-ldm", total=steps, unit="step") as task,
          open_board(run_dir, tensorboard and ctx.is_main, resumed_at=step) as board):
        logger = CsvLog(run_dir / LOG_CSV, keep_until=step, board=board) if ctx.is_main else None
        rounds_log = CsvLog(run_dir / ROUNDS_CSV, keep_until=step, board=board, section="dyga") if ctx.is_main else None
        task.advance(step)
        while step < steps:
            tick = time.perf_counter()
            rows = rows_on_device[stream.batch(step).to(rows_on_device.device)]
            x = to_model_input(images[rows]).to(device, non_blocking=True)
            z0 = latents[rows].to(device, non_blocking=True)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            generator.manual_seed(step_seed(cfg.seed, ctx.rank, step))
            torch.manual_seed(step_seed(cfg.seed + 1, ctx.rank, step))  # nn.Dropout draws from the global generator
            align = None if anchors is None else partial(anchors.align, lam=cfg.dyga.lam, tau=cfg.dyga.tau,
                                                         generator=generator, delta_grad=cfg.dyga.delta_grad,
                                                         stats=delta_stats)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            with autocast():
                loss = ddp(x, z0, align=align, generator=generator)
            loss.backward()
            logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == steps
            grad_norm = gradient_norm(model.feature_extractor) if logging_step else None  # a sync, on log steps only
            # one host sync per step: the loss (averaged over processes) and any stop request agree everywhere
            shared = torch.stack([loss.detach().float(), torch.tensor(float(stop_requested()), device=device)])
            if ctx.distributed:
                dist.all_reduce(shared)
                shared[0] /= ctx.world_size
            loss_value, stop = shared.tolist()
            if not math.isfinite(loss_value):
                raise checkpoint.diverged(f"the loss became non-finite at step {step}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model.unet)
            step += 1
            seen += cfg.batch_size * ctx.world_size
            train_seconds += time.perf_counter() - tick
            window.append(loss_value)
            task.advance(1)
            evaluating = monitor is not None and monitor.due(step, steps)
            if step % cfg.log_every == 0 or step == steps or evaluating:
                row = {"step": step, "epoch": round(step / per_epoch, 4), "loss": sum(window) / len(window),
                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": round(seen / train_seconds, 1),
                       "anchors": "" if anchors is None else " ".join(map(str, anchors.n_components)),
                       "extractor_grad_norm": grad_norm, **delta_stats.read()}
                if evaluating:
                    row.update(monitor.evaluate(model, device, step, progress))
                window = []
                task.log({"epoch": row["epoch"], "loss": row["loss"], "images/s": row["images_per_s"]})
                if logger is not None:
                    logger.write(row)
            epoch_done = step % per_epoch == 0
            if cfg.quantizer == "dyga" and epoch_done and (step // per_epoch) % cfg.dyga.every == 0:
                rounds += 1
                anchors, report = fit_anchors(ctx, cfg, model, images, rows_on_device, rounds, autocast, progress)
                if rounds_log is not None:
                    rounds_log.write({"step": step, "epoch": step // per_epoch, **report})
                    log.info("DyGA round %d after epoch %d: %s anchors per unit (%.1f s)", rounds,
                             step // per_epoch, report["anchors"], report["seconds"])
            if stop:
                save(step)
                raise checkpoint.interrupted(step, steps)
            if epoch_done or step % cfg.checkpoint_every == 0 or step == steps:
                save(step)
    return model


# ---- using a trained model -----------------------------------------------------------------


class TrainedLDM(NamedTuple):
    model: LatentDiffusion  # the extractor, the EMA U-Net and FSQ, in eval mode
    anchors: Anchors | None  # the last DyGA round's
    scale_factor: float  # the VQ latents were multiplied by it for training


def load_model(path: Path) -> TrainedLDM:
    """What an ldm artifact's ``model.pt`` holds, read once; a file that is missing, unreadable,
    refused (it holds more than tensors and plain values) or not an ldm model is a ``DataError``."""
    saved = require_keys(load_torch_file(path, "ldm model file"), ("model", "configs", "scale_factor"),
                         "ldm model file", path)
    configs = saved["configs"]
    fsq = from_dict(FSQConfig, configs["fsq"]) if configs.get("fsq") is not None else None
    model = LatentDiffusion(from_dict(FeatureExtractorConfig, configs["feature_extractor"]),
                            from_dict(UNetConfig, configs["unet"]), from_dict(DiffusionConfig, configs["diffusion"]),
                            fsq)
    load_weights(model, saved["model"], path)
    anchors = Anchors.from_state_dict(saved["anchors"]) if saved.get("anchors") is not None else None
    return TrainedLDM(model.eval(), anchors, float(saved["scale_factor"]))


def final_model_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The artifact's weights: the live extractor (and FSQ) with the EMA U-Net in place of the live one."""
    state = dict(checkpoint["model"])
    for key, value in checkpoint["ema"].items():
        if key.startswith("module."):
            state["unet." + key[len("module."):]] = value
    return state


@torch.no_grad()
def represent(model: LatentDiffusion, read_images: Callable[[slice], np.ndarray], n: int, device: torch.device,
              batch_size: int = 256, on_rows: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The evaluated representation of dataset rows 0..n-1, in order (DESIGN section 7): raw units
    (n, N, D) float32 and their pre-MLP scalars (n, N), eval mode, no anchoring."""
    units = np.empty((n, model.feature_extractor.cfg.latent_units, model.feature_extractor.cfg.unit_dim), np.float32)
    scalars = np.empty((n, model.feature_extractor.cfg.latent_units), np.float32)
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        chunk = torch.from_numpy(read_images(part))
        u, s = extract_features(model, chunk, torch.arange(len(chunk)), batch_size, device)
        units[part], scalars[part] = u.cpu().numpy(), s.cpu().numpy()
        if on_rows is not None:
            on_rows(len(chunk))
    return units, scalars
