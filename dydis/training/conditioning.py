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
the loss the units explain. It is measured twice, because BatchNorm makes two sets of units:

- ``conditioning_gain`` (with ``cond_loss`` and ``shuffled_loss``): the units as the U-Net gets
  them in training, the extractor's BatchNorm on the batch's statistics (here the probe's rows;
  the running statistics are left as they were);
- ``conditioning_gain_eval``: the units eval-metrics scores, BatchNorm on its running statistics.
  While the extractor changes fast, the running statistics lag and these units can vary several
  times less across images than the trained ones, so this gain can stay near 0 while the first
  one rises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from dydis.models.ldm import LatentDiffusion
from dydis.training.batches import to_model_input

PROBE_ROWS = 256
COLUMNS = ("cond_loss", "shuffled_loss", "conditioning_gain", "conditioning_gain_eval")


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
    """The fixed batch (at most ``PROBE_ROWS`` of the given rows), its timesteps, noise and pairing."""

    def __init__(self, images: np.ndarray, latents: np.ndarray, num_timesteps: int, seed: int = 0):
        n = min(len(images), PROBE_ROWS)
        self.images = torch.from_numpy(np.ascontiguousarray(images[:n]))  # (n, 64, 64, 3) uint8
        self.latents = torch.as_tensor(np.asarray(latents[:n]), dtype=torch.float32)  # already scaled
        self.timesteps = (torch.arange(n) * 2 + 1) * num_timesteps // (2 * n)  # midpoints of n equal bins
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(self.latents.shape, generator=generator)
        self.partner = torch.from_numpy(partner_rows(n, seed))

    @torch.no_grad()
    def measure(self, model: LatentDiffusion, device: torch.device) -> dict[str, float]:
        """The ``COLUMNS`` of the model now. Its train/eval mode and BatchNorm statistics are
        restored and no random number is drawn, so training goes on exactly as without the probe."""
        was_training = model.training
        model.eval()
        try:
            images = to_model_input(self.images).to(device)
            with batch_statistics(model.feature_extractor):
                trained = model.condition(images)
            own, shuffled = self._losses(model, trained, device)
            own_eval, shuffled_eval = self._losses(model, model.condition(images), device)
        finally:
            model.train(was_training)
        return {"cond_loss": own, "shuffled_loss": shuffled, "conditioning_gain": 1.0 - own / shuffled,
                "conditioning_gain_eval": 1.0 - own_eval / shuffled_eval}

    def _losses(self, model: LatentDiffusion, units: torch.Tensor, device: torch.device) -> tuple[float, float]:
        """The diffusion loss of the batch with its own units and with its partners'."""
        latents, t, noise = self.latents.to(device), self.timesteps.to(device), self.noise.to(device)
        own, shuffled = (model.diffusion.training_loss(model.unet, latents, context, t=t, noise=noise).loss.item()
                         for context in (units, units[self.partner.to(device)]))
        return own, shuffled


@contextmanager
def batch_statistics(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in training mode (BatchNorm normalises with the batch's statistics) with its
    buffers, the running statistics, put back afterwards, and its mode too."""
    was_training = module.training
    saved = {name: buffer.clone() for name, buffer in module.named_buffers()}
    module.train()
    try:
        yield
    finally:
        for name, buffer in module.named_buffers():
            buffer.copy_(saved[name])
        module.train(was_training)
