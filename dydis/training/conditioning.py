"""How much the U-Net reads the latent units: its loss with each image's own units against another image's.

The feature extractor is shaped only by what the U-Net does with its units, so units can only
become disentangled once the U-Net relies on them. That takes time: the cross-attention output
projections start at zero (the units have no effect at all at step 0), and on simple images the
U-Net denoises well from the noisy latent alone. The disentanglement scores cannot tell "the
units are entangled" from "the U-Net does not use the units yet"; this probe can:

    conditioning_gain = 1 - loss(own units) / loss(the units of another image)

on a fixed batch, with fixed timesteps spread evenly over [0, T) and fixed noise, the U-Net in
eval mode (no Skip Dropout), the units raw (no DyGA alignment; FSQ-quantised when the model has
FSQ). 0: which image the units come from does not matter to the U-Net; the larger, the more of
the loss the units explain. The rows are a seeded random sample: the first rows of a grid in
canonical order share their slow factors, and an image paired with one that shares most of its
factors hides how much the U-Net reads them (one model's gain read 0.09 on such rows, 0.35-0.38 on random ones). With
such a sample, BatchNorm on the batch's statistics (as in training) and on its running ones (as
eval-metrics) give the same gain to within 0.003, so the probe uses the scored units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dydis.models.ldm import LatentDiffusion
from dydis.training.batches import to_model_input

PROBE_ROWS = 256
GAIN = "conditioning_gain"  # the one on a 0-1 scale, plotted with the scores
COLUMNS = ("cond_loss", "shuffled_loss", GAIN)


def partner_rows(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of 0..n-1 without fixed points (one cycle through a random order), so
    every image is paired with another one, and not with its neighbour in the dataset's order,
    which on a full grid differs only in the fastest factor."""
    if n < 2:
        raise ValueError(f"the probe needs at least 2 images, got {n}")
    order = np.random.RandomState(seed).permutation(n)
    partner = np.empty(n, np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def single_factor_partners(factors: np.ndarray, factor_sizes: tuple[int, ...], rows: np.ndarray,
                           seed: int) -> np.ndarray:
    """(n_factors, len(rows)): for each factor and each of ``rows``, the dataset row whose factors
    are the same except that one, set to a seeded random other value; -1 where the dataset has
    no such row (a subset of the grid)."""
    factors, sizes = np.asarray(factors), tuple(int(s) for s in factor_sizes)
    lookup = np.full(int(np.prod(sizes)), -1, np.int64)
    lookup[np.ravel_multi_index(factors.T, sizes)] = np.arange(len(factors))
    draw = np.random.RandomState(seed)
    partners = np.empty((len(sizes), len(rows)), np.int64)
    for j, size in enumerate(sizes):
        other = factors[rows].copy()
        other[:, j] = (other[:, j] + draw.randint(1, size, len(rows))) % size
        partners[j] = lookup[np.ravel_multi_index(other.T, sizes)]
    return partners


@dataclass(frozen=True)
class FactorGrid:
    """The whole dataset, where the probe finds for each of its images the one that differs from
    it in a single factor; ``rows`` is the dataset row of each image the probe is given. Images
    are read by row, so a dataset too large for memory stays on disk."""

    read_images: Callable[[np.ndarray], np.ndarray]  # dataset rows (any order) -> (b, 64, 64, 3) uint8
    factors: np.ndarray  # (n_rows, n_factors) int
    sizes: tuple[int, ...]
    names: tuple[str, ...]
    rows: np.ndarray


class ConditioningProbe:
    """The fixed batch (``PROBE_ROWS`` of the given rows, a seeded sample), its timesteps, noise
    and pairing.

    With a ``grid``, each measurement also gives the gain per factor, ``conditioning_gain_<factor>``:
    the units of each image swapped for those of the image that differs from it in that factor
    only. It says which factors the U-Net takes from the units; near 0, that factor of the image
    comes from the noisy latent alone, whatever the units hold.
    """

    def __init__(self, images: np.ndarray, latents: np.ndarray, seed: int = 0, grid: FactorGrid | None = None):
        n = min(len(images), PROBE_ROWS)
        rows = np.sort(np.random.RandomState(seed).choice(len(images), n, replace=False))
        self.images = torch.from_numpy(np.ascontiguousarray(images[rows]))  # (n, 64, 64, 3) uint8
        self.latents = torch.as_tensor(np.asarray(latents[rows]), dtype=torch.float32)  # already scaled
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(self.latents.shape, generator=generator)
        self.partner = torch.from_numpy(partner_rows(n, seed))
        # factor -> (the probe rows that have a single-factor partner, the partners' images)
        self.swaps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if grid is not None:
            found = single_factor_partners(grid.factors, grid.sizes, np.asarray(grid.rows)[rows], seed)
            for name, partners in zip(grid.names, found):
                present = partners >= 0
                if present.any():
                    self.swaps[name] = (torch.from_numpy(np.flatnonzero(present)),
                                        torch.from_numpy(np.ascontiguousarray(grid.read_images(partners[present]))))

    @property
    def columns(self) -> tuple[str, ...]:
        """What ``measure`` returns: ``COLUMNS``, then the gain per factor that has partners."""
        return COLUMNS + self.factor_columns

    @property
    def factor_columns(self) -> tuple[str, ...]:
        return tuple(f"{GAIN}_{name}" for name in self.swaps)

    @torch.no_grad()
    def measure(self, model: LatentDiffusion, device: torch.device) -> dict[str, float]:
        """The ``columns`` of the model now; its train/eval mode is restored and no random
        number is drawn, so training goes on exactly as without the probe."""
        was_training = model.training
        model.eval()
        try:
            context = model.condition(to_model_input(self.images).to(device))
            t = self.timesteps(model.diffusion.num_timesteps).to(device)
            latents, noise = self.latents.to(device), self.noise.to(device)

            def loss(units: torch.Tensor, keep: torch.Tensor | slice = slice(None)) -> float:
                return model.diffusion.training_loss(model.unet, latents[keep], units, t=t[keep],
                                                     noise=noise[keep]).loss.item()

            own, shuffled = loss(context), loss(context[self.partner.to(device)])
            scores = {"cond_loss": own, "shuffled_loss": shuffled, GAIN: 1.0 - own / shuffled}
            for column, (keep, images) in zip(self.factor_columns, self.swaps.values()):
                every_row = len(keep) == len(self.images)
                keep = slice(None) if every_row else keep.to(device)
                swapped = loss(model.condition(to_model_input(images).to(device)), keep)
                scores[column] = 1.0 - (own if every_row else loss(context[keep], keep)) / swapped
        finally:
            model.train(was_training)
        return scores

    def timesteps(self, num_timesteps: int) -> torch.Tensor:
        """One timestep per row: the midpoints of ``len(self.images)`` equal bins of [0, T)."""
        n = len(self.images)
        return (torch.arange(n) * 2 + 1) * num_timesteps // (2 * n)
