"""Can the small U-Net read the object's factors at all within a CPU run? Train it conditioned on
the true factors instead of the feature extractor's units, and measure the probe's gain per factor.

The trained extractors' U-Nets read only the two background hues from the units (per-factor gain of
object hue, scale, shape and orientation <= 0.003). Either the extractor does not offer the object's
factors in a form the U-Net can use, or the U-Net, at this size and length, gains nothing from
knowing them. Conditioning on the factors themselves separates the two: one learned 32-wide token
per factor value (an nn.Embedding per factor, six tokens instead of the units), the same U-Net
(the small preset), diffusion, optimiser, learning rate, warm-up, batch and steps as the
cpu-ablation baseline. If this U-Net does not read the object either, no change on the extractor's
side (DyGA, Skip Dropout, the final ReLU) can make the units disentangle the object at this scale.

The gain is the conditioning probe's (dydis/training/conditioning.py): its 256 rows, timesteps and
noise for seed 0, eval mode; a factor's gain swaps each row's tokens for those of the row that
differs in that factor only (a seeded other value), the random-partner gain those of another row.

    python oracle_conditioning.py scratch/art/train-vqgan/ablation-synthetic/v1/latents.h5 \
        scratch/art/prepare-data/ablation-synthetic/v1/data.h5 [--steps 2400] [--seed 42]
"""
import argparse
import time

import h5py
import numpy as np
import torch
from torch import nn

from dydis.data.standard import DatasetFile
from dydis.models.config import UNET_PRESETS, DiffusionConfig
from dydis.models.diffusion import GaussianDiffusion
from dydis.models.unet import UNet
from dydis.training.conditioning import ConditioningProbe, single_factor_partners


class FactorTokens(nn.Module):
    """One learned token per value of each factor: (b, n_factors) int -> (b, n_factors, dim)."""

    def __init__(self, sizes, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(size, dim) for size in sizes)

    def forward(self, factors: torch.Tensor) -> torch.Tensor:
        return torch.stack([table(factors[:, j]) for j, table in enumerate(self.tables)], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("latents")
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--every", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)

    with h5py.File(args.latents, "r") as h5:
        latents = torch.from_numpy(h5["latents"][()].astype(np.float32) * float(h5.attrs["scale_factor"]))
    with DatasetFile(args.data) as data:
        factors, sizes, names = data.factors[()], tuple(data.factor_sizes), data.factor_names
    factor_tensor = torch.from_numpy(factors.astype(np.int64))

    torch.manual_seed(args.seed)
    unet_cfg = UNET_PRESETS["small"]
    unet, tokens = UNet(unet_cfg), FactorTokens(sizes, unet_cfg.context_dim)
    diffusion = GaussianDiffusion(DiffusionConfig())
    params = [*unet.parameters(), *tokens.parameters()]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)

    # the probe's rows, timesteps and noise (it never looks at the images we give it here)
    rows = np.sort(np.random.RandomState(0).choice(len(factors), 256, replace=False))
    probe = ConditioningProbe(np.zeros((len(factors), 1, 1, 3), np.uint8), latents.numpy(), 0)
    t_probe = probe.timesteps(diffusion.num_timesteps)
    partners = single_factor_partners(factors, sizes, rows, 0)

    def probe_loss(rows_of_tokens: np.ndarray) -> float:
        context = tokens(factor_tensor[torch.from_numpy(rows_of_tokens)])
        return diffusion.training_loss(unet, probe.latents, context, t=t_probe, noise=probe.noise).loss.item()

    def measure() -> str:
        unet.eval()
        with torch.no_grad():
            own = probe_loss(rows)
            out = [f"random {1 - own / probe_loss(rows[probe.partner.numpy()]):.3f}"]
            out += [f"{name} {1 - own / probe_loss(partners[j]):.3f}" for j, name in enumerate(names)]
        unet.train()
        return " ".join(out)

    generator = torch.Generator().manual_seed(args.seed)
    started, recent = time.perf_counter(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = 5e-4 * min(1.0, (step + 1) / 100)
        batch = torch.randint(0, len(factors), (64,), generator=generator)
        loss = diffusion.training_loss(unet, latents[batch], tokens(factor_tensor[batch]), generator=generator).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            print(f"step {step + 1} loss {np.mean(recent):.4f} ({time.perf_counter() - started:.0f} s) | gain {measure()}",
                  flush=True)
            recent = []


if __name__ == "__main__":
    main()
