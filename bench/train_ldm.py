"""Speed of one `train-ldm` training step (issue 5, DESIGN section 8).

Times full optimiser steps (feature extractor + U-Net forward, backward, fused AdamW on GPU,
EMA update) of a preset on random images and latents, after warm-up, and prints for each
variant: seconds per step, images/s, and the achieved TFLOP/s from a FLOP count of one step
(torch's FlopCounterMode) against ``--peak-tflops`` (the device's dense bf16 peak; 989 for an
H100/H200 SXM). Alignment to DyGA anchors is left out: it costs well under 1% of a step.

Usage:
  python bench/train_ldm.py                        # CPU: paper preset, batch 64
  python bench/train_ldm.py --device cuda --batch-size 512 --variants fp32,bf16,bf16-compile
  python bench/train_ldm.py --preset small --batch-size 64 --threads 2   # the CPU-study preset
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dydis.config import TrainLDMConfig, build_config
from dydis.models.ema import EMA
from dydis.training.ldm import build_model


def make_step(cfg: TrainLDMConfig, device: torch.device, variant: str, batch: int):
    model = build_model(cfg).to(device).train()
    ema = EMA(model.unet, cfg.ema_decay)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model.unet.to(memory_format=torch.channels_last)
    if variant.endswith("compile"):
        model.unet.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=on_gpu)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    latents = torch.randn(batch, 3, 16, 16, device=device)
    if on_gpu:
        images = images.contiguous(memory_format=torch.channels_last)
    bf16 = variant.startswith("bf16")

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(images, latents, generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model.unet)

    return model, step


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=["paper", "small", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 512 on GPU")
    parser.add_argument("--variants", default=None, help="comma list of fp32, bf16, bf16-compile [CPU: fp32]")
    parser.add_argument("--steps", type=int, default=None, help="timed steps [CPU 3, GPU 20]")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first [CPU 1, GPU 5]")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (512 if on_gpu else 64)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    variants = (args.variants or ("fp32,bf16,bf16-compile" if on_gpu else "fp32")).split(",")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = build_config(TrainLDMConfig, flags={"data": "bench", "preset": args.preset, "max_steps": 1,
                                              "batch_size": batch})
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"train-ldm step, preset {args.preset}, batch {batch}, {name}")
    for variant in variants:
        model, step = make_step(cfg, device, variant, batch)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for _ in range(warmup):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
        warm_seconds = time.perf_counter() - started
        flops = count_flops(step) if not variant.endswith("compile") else None
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
        per_step = (time.perf_counter() - started) / steps
        if flops is None:  # the compiled step does the same arithmetic as the eager one
            flops = count_flops(make_step(cfg, device, "bf16", batch)[1])
        memory = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if on_gpu else ""
        share = f" ({flops / per_step / 1e12 / args.peak_tflops:.1%} of {args.peak_tflops:.0f})" if on_gpu else ""
        print(f"  {variant:13s} {per_step:8.4f} s/step  {batch / per_step:9.1f} img/s  "
              f"{flops / per_step / 1e12:7.3f} TFLOP/s{share}  {flops / 1e12:.3f} TFLOP/step, "
              f"warm-up {warm_seconds:.1f} s{memory}")
        params = sum(p.numel() for p in model.parameters())
        del model, step
    print(f"  parameters: {params:,} (feature extractor + U-Net{' + FSQ' if cfg.quantizer == 'fsq' else ''})")


if __name__ == "__main__":
    main()
