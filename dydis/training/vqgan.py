"""The VQ-GAN training loop, its evaluation (PSNR, codebook use) and the latent cache.

One optimiser update ("step") accumulates ``accumulate`` micro-batches per process; with
several processes, gradients are averaged across them after accumulation, as DDP would.
The loop runs in every process; only rank 0 writes checkpoints and logs. Ctrl-C stops it
after the current step with a checkpoint to resume from, as in train-ldm.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

from dydis.config import TrainVQGANConfig, to_dict
from dydis.errors import ConfigError
from dydis.distributed import Context, autocast_for
from dydis.models.lpips import HUB_VGG16, LPIPS
from dydis.models.vqgan import VQGAN
from dydis.models.vqgan_loss import VQGANLoss
from dydis.progress import Progress, SilentProgress
from dydis.training.batches import BatchStream, to_images, to_model_input
from dydis.training.checkpoint import Checkpoint, stop_requests
from dydis.training.csvlog import CsvLog
from dydis.training.runs import CHECKPOINT
from dydis.training.tensorboard import open_board

log = logging.getLogger("dydis.train_vqgan")
LOG_CSV = "log.csv"


def build_models(cfg: TrainVQGANConfig, lpips: LPIPS | None) -> tuple[VQGAN, VQGANLoss]:
    """The autoencoder and its loss, initialised from ``cfg.seed`` without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return VQGAN(cfg.model), VQGANLoss(cfg.loss, lpips)


def load_lpips(cfg: TrainVQGANConfig) -> LPIPS | None:
    """LPIPS from local files, or None when the config trains without it.

    The paper preset without its weights is an error, not a silently different model; the small
    presets (smoke and CPU runs) train without LPIPS then, with a warning.
    """
    if not cfg.lpips or cfg.loss.perceptual_weight == 0:
        return None
    vgg = cfg.lpips_vgg or (str(HUB_VGG16) if HUB_VGG16.is_file() else None)
    if vgg is None or cfg.lpips_heads is None:
        if cfg.preset == "paper":
            raise ConfigError("config keys lpips_vgg / lpips_heads: the paper preset trains with LPIPS and its "
                              "weights are missing: give --lpips-vgg vgg16-397923af.pth (or put it in "
                              f"{HUB_VGG16.parent}) and --lpips-heads vgg.pth (LPIPS v0.1), or --no-lpips to train "
                              "without it on purpose")
        log.warning("LPIPS disabled: needs local VGG16 weights (lpips_vgg) and LPIPS heads (lpips_heads); "
                    "training with L1 + GAN + codebook only (--no-lpips says so on purpose)")
        return None
    return LPIPS.from_files(vgg, cfg.lpips_heads)


def total_steps(cfg: TrainVQGANConfig, n_train: int, world_size: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    micro_per_epoch = n_train // (cfg.batch_size * world_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.accumulate))


def _average_gradients(parameters: list[torch.nn.Parameter], ctx: Context) -> None:
    """Average gradients across processes with one flat all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not ctx.distributed or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def fit(ctx: Context, cfg: TrainVQGANConfig, images: torch.Tensor, train_rows: torch.Tensor, run_dir: Path,
        resume: bool, progress: Progress | None = None, lpips: LPIPS | None = None, tensorboard: bool = False) -> VQGAN:
    """Train from scratch or from ``run_dir/checkpoint.pt``; returns this process's trained model.

    The final state is also saved as the checkpoint (by rank 0).

    ``images`` is the whole dataset, uint8 (n, 64, 64, 3); ``train_rows`` the rows to train on;
    ``lpips`` the perceptual loss's network (``load_lpips(cfg)``, loaded by the caller so that its
    files are checked before a run starts), None to train without it; ``tensorboard``: rank 0 also
    writes the log's numbers to ``run_dir/tensorboard`` (``dydis.training.tensorboard``).
    """
    progress = progress or SilentProgress()
    device = ctx.device
    run_dir.mkdir(parents=True, exist_ok=True)
    model, loss_fn = build_models(cfg, lpips)
    model.to(device)
    loss_fn.to(device)
    discriminator = loss_fn.discriminator
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    lr = cfg.base_lr * cfg.batch_size * cfg.accumulate * ctx.world_size  # taming's scaling rule
    fused = device.type == "cuda"
    opt_ae = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9), fused=fused)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.9), fused=fused)
    stream = BatchStream(len(train_rows), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    steps = total_steps(cfg, len(train_rows), ctx.world_size)
    step = 0
    checkpoint = Checkpoint(run_dir / CHECKPOINT, writes=ctx.is_main, lr_key="base_lr")
    if resume:
        state = checkpoint.load(steps)
        model.load_state_dict(state["model"])
        discriminator.load_state_dict(state["discriminator"])
        opt_ae.load_state_dict(state["opt_ae"])
        opt_d.load_state_dict(state["opt_d"])
        step = state["step"]
        if ctx.is_main:
            log.info("resumed from %s at step %d of %d", checkpoint.path, step, steps)
    images_on_device = images.to(device) if device.type == "cuda" else images
    rows_on_device = train_rows.to(images_on_device.device)
    autocast = autocast_for(device, cfg.precision)
    model_params, disc_params = list(model.parameters()), list(discriminator.parameters())

    def save(at_step: int) -> None:
        checkpoint.save(at_step, {"model": model, "discriminator": discriminator, "opt_ae": opt_ae, "opt_d": opt_d},
                        config=to_dict(cfg))

    started, seen = time.perf_counter(), 0
    with (stop_requests() as stop_requested, progress.task("train-vqgan", total=steps, unit="step") as task,
          open_board(run_dir, tensorboard and ctx.is_main, resumed_at=step) as board):
        logger = CsvLog(run_dir / LOG_CSV, keep_until=step, board=board) if ctx.is_main else None
        task.advance(step)
        while step < steps:
            totals: dict[str, torch.Tensor] = {}
            for micro in range(cfg.accumulate):
                rows = rows_on_device[stream.batch(step * cfg.accumulate + micro).to(rows_on_device.device)]
                x = to_model_input(images_on_device[rows]).to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    out = model(x)
                    discriminator.requires_grad_(False)  # the generator's pass must not train D
                    g = loss_fn.generator(x, out.reconstruction, out.codebook_loss, model.last_layer, step)
                    discriminator.requires_grad_(True)
                    d = loss_fn.discriminator_step(x, out.reconstruction, step)
                (g.loss / cfg.accumulate).backward()
                (d.loss / cfg.accumulate).backward()
                for key, value in {**g.logs, **d.logs}.items():
                    totals[key] = totals.get(key, 0.0) + value.float() / cfg.accumulate
            _average_gradients(model_params, ctx)
            _average_gradients(disc_params, ctx)
            # one host sync per step: the losses and any stop request, averaged over processes so all agree
            shared = torch.stack([totals["ae_loss"], totals["d_loss"],
                                  torch.tensor(float(stop_requested()), device=device)])
            if ctx.distributed:
                dist.all_reduce(shared)
                shared /= ctx.world_size
            ae_loss, d_loss, stop = shared.tolist()
            if not (math.isfinite(ae_loss) and math.isfinite(d_loss)):
                raise checkpoint.diverged(f"the loss became non-finite at step {step} (ae {ae_loss:.4g}, "
                                          f"d {d_loss:.4g})")
            opt_ae.step()
            opt_d.step()
            opt_ae.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            step += 1
            if cfg.dead_code_restart and step % cfg.dead_code_restart == 0:
                totals["restarted_codes"] = torch.tensor(float(_restart_dead_codes(model, x, step, cfg, ctx)))
            seen += cfg.batch_size * cfg.accumulate * ctx.world_size
            task.advance(1)
            if step % cfg.log_every == 0 or step == steps:
                rate = seen / (time.perf_counter() - started)
                row = {"step": step, "epoch": round(stream.epoch_of(step * cfg.accumulate), 4),
                       **{k: float(v) for k, v in totals.items()}, "images_per_s": round(rate, 1)}
                task.log({"epoch": row["epoch"], "l1": row["l1"], "images/s": row["images_per_s"]})
                if logger is not None:
                    logger.write(row)
            if stop:
                save(step)
                raise checkpoint.interrupted(step, steps)
            if step % cfg.checkpoint_every == 0 or step == steps:
                save(step)
    return model


def _restart_dead_codes(model: VQGAN, x: torch.Tensor, step: int, cfg: TrainVQGANConfig, ctx: Context) -> int:
    """Re-seed unused codes from this batch's encodings, identically in every process."""
    quantizer = model.quantize
    if ctx.distributed:
        dist.all_reduce(quantizer.usage)
    with torch.no_grad():
        encodings = model.encode(x).float().permute(0, 2, 3, 1).reshape(-1, model.cfg.embed_dim)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    restarted = quantizer.restart_dead_codes_(encodings, generator)
    if ctx.distributed:  # rank 0's encodings win, so the replicas keep one codebook
        dist.broadcast(quantizer.embedding.weight.data, 0)
    return restarted


# ---- evaluation and the latent cache -------------------------------------------------------


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def evaluate_reconstructions(model: VQGAN, images: np.ndarray, device: torch.device, batch_size: int = 256) -> dict:
    """PSNR (dB, on uint8 pixels) and codebook statistics on images (n, 64, 64, 3) uint8."""
    model.eval()
    psnrs, counts = [], torch.zeros(model.cfg.n_embed, dtype=torch.float64)
    for part in batches(len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[part])).to(device)
        out = model(x)
        recon = ((out.reconstruction.clamp(-1, 1) + 1) * 127.5).round()
        target = torch.from_numpy(images[part]).to(device).permute(0, 3, 1, 2).float()
        mse = (recon - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append((10 * torch.log10(255.0 ** 2 / mse)).cpu())
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=model.cfg.n_embed).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"psnr": float(torch.cat(psnrs).mean()), "codebook_usage": float((counts > 0).double().mean()),
            "codes_used": int((counts > 0).sum()), "perplexity": float(entropy.exp())}


@torch.no_grad()
def reconstruct(model: VQGAN, images: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    out = model(to_model_input(torch.from_numpy(images)).to(device)).reconstruction
    return to_images(out)


@torch.no_grad()
def encode_all(model: VQGAN, read_images, n: int, device: torch.device, out: np.ndarray, batch_size: int = 512,
               on_rows=None) -> None:
    """Fill ``out`` (n, embed_dim, 16, 16) with the pre-quantisation latents of rows 0..n-1."""
    model.eval()
    for part in batches(n, batch_size):
        x = to_model_input(torch.from_numpy(read_images(part))).to(device)
        out[part] = model.encode(x).float().cpu().numpy().astype(out.dtype)
        if on_rows is not None:
            on_rows(part.stop - part.start)
