"""Latent interpolation (paper appendix, Fig. 6): images generated from units linearly mixed
between two images' units, from one starting noise per pair. The paper found slerp (as
DiffMorpher uses for diffusion latents) to look unnatural here, so the mix is linear."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from dydis.viz.sampler import Sampler


def interpolation_contexts(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """(p, N, D), (p, N, D) -> (p, steps, N, D): (1 - w) start + w end for w = 0 .. 1 in ``steps``
    equal steps, so the first cell is the start's units and the last the end's."""
    weights = rearrange(torch.linspace(0.0, 1.0, steps, device=start.device, dtype=start.dtype), "s -> 1 s 1 1")
    return rearrange(start, "p n d -> p 1 n d") * (1 - weights) + rearrange(end, "p n d -> p 1 n d") * weights


def latent_interpolation(sampler: Sampler, starts: np.ndarray, ends: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """Images (p, steps, 64, 64, 3) uint8 along the line between the units of images
    (p, 64, 64, 3) uint8 and those of images (p, 64, 64, 3) uint8."""
    return sampler.generate_rows(interpolation_contexts(sampler.units(starts), sampler.units(ends), steps), seed)
