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


class ConditioningProbe:
    """The fixed batch (``PROBE_ROWS`` of the given rows, a seeded sample), its timesteps, noise
    and pairing."""

    def __init__(self, images: np.ndarray, latents: np.ndarray, seed: int = 0):
        n = min(len(images), PROBE_ROWS)
        rows = np.sort(np.random.RandomState(seed).choice(len(images), n, replace=False))
        self.images = torch.from_numpy(np.ascontiguousarray(images[rows]))  # (n, 64, 64, 3) uint8
        self.latents = torch.as_tensor(np.asarray(latents[rows]), dtype=torch.float32)  # already scaled
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(self.latents.shape, generator=generator)
        self.partner = torch.from_numpy(partner_rows(n, seed))

    @torch.no_grad()
    def measure(self, model: LatentDiffusion, device: torch.device) -> dict[str, float]:
        """The ``COLUMNS`` of the model now; its train/eval mode is restored and no random
        number is drawn, so training goes on exactly as without the probe."""
        was_training = model.training
        model.eval()
        try:
            context = model.condition(to_model_input(self.images).to(device))
            t = self.timesteps(model.diffusion.num_timesteps).to(device)
            latents, noise = self.latents.to(device), self.noise.to(device)
            own, shuffled = (model.diffusion.training_loss(model.unet, latents, units, t=t, noise=noise).loss.item()
                             for units in (context, context[self.partner.to(device)]))
        finally:
            model.train(was_training)
        return {"cond_loss": own, "shuffled_loss": shuffled, GAIN: 1.0 - own / shuffled}

    def timesteps(self, num_timesteps: int) -> torch.Tensor:
        """One timestep per row: the midpoints of ``len(self.images)`` equal bins of [0, T)."""
        n = len(self.images)
        return (torch.arange(n) * 2 + 1) * num_timesteps // (2 * n)
