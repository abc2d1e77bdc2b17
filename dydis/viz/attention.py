"""Cross-attention maps per latent unit (paper section 4.3, Figs. 4, 9, 10), DAAM-style.

The authors did not release this part (DESIGN 9 row 16). DAAM (Tang et al. 2023) aggregates
a token's cross-attention over layers, heads and denoising steps after upsampling each map to
the image size. Here: the image's VQ latent is DDIM-inverted under its own units, then DDIM
regenerates it from there while every cross-attention layer reports its softmax over the N
unit tokens; each map is averaged over heads, upsampled to the image size and averaged over
layers and steps. The maps therefore lie on the image itself (the regenerated image is
returned to show how close it came).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from dydis.models.unet import record_cross_attention
from dydis.viz.sampler import Sampler


class UnitAttention(NamedTuple):
    maps: np.ndarray  # (b, N, size, size) float32, >= 0, summing to 1 over the N units at every pixel
    regenerated: np.ndarray  # (b, 64, 64, 3) uint8: the DDIM sample the maps were recorded on


def token_maps(probs: Tensor, size: int) -> Tensor:
    """One cross-attention layer's softmax (b, heads, h, w, n) -> per-token maps (b, n, size, size).

    Heads are averaged and the maps upsampled bilinearly: unlike DAAM's bicubic kernel, its
    weights are non-negative and sum to one, so the maps stay non-negative and still sum to 1
    over the tokens at every pixel.
    """
    per_token = rearrange(probs.float().mean(dim=1), "b h w n -> b n h w")
    return F.interpolate(per_token, size=(size, size), mode="bilinear", align_corners=False)


class _Average:
    """Running mean of ``token_maps`` over every layer and DDIM step, so that memory holds one
    sum, not 16 layers x 100 steps of maps."""

    def __init__(self, recorded: dict[str, list[Tensor]], size: int):
        self.recorded, self.size = recorded, size
        self.total: Tensor | None = None
        self.count = 0

    def __call__(self, done: int, steps: int) -> None:
        """Fold in the maps the last DDIM step recorded and drop them."""
        for layer_maps in self.recorded.values():
            for probs in layer_maps:
                maps = token_maps(probs, self.size)
                self.total = maps if self.total is None else self.total + maps
                self.count += 1
        self.recorded.clear()

    def mean(self) -> Tensor:
        assert self.total is not None, "no cross-attention was recorded: the U-Net has no transformer"
        return self.total / self.count


def unit_attention(sampler: Sampler, images: np.ndarray, size: int = 64) -> UnitAttention:
    """Averaged cross-attention maps of each unit token for images (b, 64, 64, 3) uint8."""
    maps, regenerated = [], []
    for start in range(0, len(images), sampler.batch_size):
        chunk = images[start: start + sampler.batch_size]
        context = sampler.units(chunk)
        x_T = sampler.invert(chunk, context)
        with record_cross_attention(sampler.model.unet) as recorded:
            average = _Average(recorded, size)
            regenerated.append(sampler.sample(context, x_T, callback=average))
        maps.append(average.mean().cpu().numpy())
    return UnitAttention(np.concatenate(maps), np.concatenate(regenerated))


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each (image, unit) map of (b, N, h, w) min-max scaled to [0, 1] for display, as DAAM shows
    its heat maps: the units' raw shares differ in scale, their layouts are what the figure shows."""
    low = maps.min(axis=(2, 3), keepdims=True)
    span = maps.max(axis=(2, 3), keepdims=True) - low
    return (maps - low) / np.maximum(span, 1e-12)
