"""A trained latent diffusion model with its VQ-GAN, set up to turn unit tokens into images.

Every generated figure conditions the EMA U-Net on edited unit tokens and compares the images,
so what they share lives here: the raw units of images (no anchoring, as in evaluation, DESIGN
section 7), seeded starting noise, deterministic DDIM (eta 0, so a cell differs from another
only through its condition; DESIGN 9 row 15), DDIM inversion of real images, and decoding
through the VQ decoder, which quantises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from dydis.models.ldm import LatentDiffusion
from dydis.models.vqgan import VQGAN
from dydis.training.batches import to_images, to_model_input

StepCallback = Callable[[int, int], None]  # (DDIM steps done, steps)


@dataclass
class Sampler:
    """DDIM sampling of one trained model; ``batch_size`` bounds how many images run at once.

    ``scale_factor`` is the ldm artifact's: the diffusion model works on VQ latents multiplied
    by it, the decoder on latents divided by it. ``on_images`` is told how many images each
    finished batch produced, for progress bars.
    """

    model: LatentDiffusion
    vqgan: VQGAN
    scale_factor: float
    steps: int = 100
    eta: float = 0.0  # figures keep 0: a cell then differs from another only through its condition
    batch_size: int = 64
    on_images: Callable[[int], None] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.model.unet.cfg
        return cfg.in_channels, cfg.image_size, cfg.image_size

    @torch.no_grad()
    def units(self, images: np.ndarray) -> Tensor:
        """The U-Net's condition for images (b, 64, 64, 3) uint8: raw units (b, N, D), FSQ-quantised
        when the model uses FSQ; no anchoring, as the evaluation reads them."""
        return self.model.condition(to_model_input(torch.from_numpy(images)).to(self.device))

    def noise(self, n: int, seed: int) -> Tensor:
        """(n, c, h, w) standard normal starting latents, drawn on the CPU so that a seed gives
        the same figure on any device."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((n, *self.latent_shape), generator=generator).to(self.device)

    @torch.no_grad()
    def invert(self, images: np.ndarray, context: Tensor) -> Tensor:
        """x_T (b, c, h, w) from which DDIM under ``context`` regenerates images (b, 64, 64, 3):
        the scaled VQ latent run up the DDIM grid (``ddim_invert``)."""
        z0 = self.vqgan.encode(to_model_input(torch.from_numpy(images)).to(self.device)) * self.scale_factor
        return self.model.diffusion.ddim_invert(self.model.unet, z0, context, steps=self.steps)

    @torch.no_grad()
    def sample(self, context: Tensor, x_T: Tensor, callback: StepCallback | None = None) -> np.ndarray:
        """One batch: DDIM (``eta``) from x_T (b, c, h, w) under context (b, N, D), decoded to
        images (b, 64, 64, 3) uint8; ``callback`` runs after every DDIM step."""
        z = self.model.diffusion.ddim_sample(self.model.unet, context, x_T=x_T, steps=self.steps, eta=self.eta,
                                             callback=callback).x
        images = to_images(self.vqgan.decode(z / self.scale_factor))
        if self.on_images is not None:
            self.on_images(len(images))
        return images

    def generate(self, context: Tensor, x_T: Tensor) -> np.ndarray:
        """``sample`` over any number of images, ``batch_size`` at a time."""
        return np.concatenate([self.sample(context[i: i + self.batch_size], x_T[i: i + self.batch_size])
                               for i in range(0, len(context), self.batch_size)])

    def generate_rows(self, cells: Tensor, seed: int) -> np.ndarray:
        """Images (p, k, 64, 64, 3) uint8 of conditions (p, k, N, D): one seeded noise per row,
        shared by the row's k cells, so that along a row only the condition changes."""
        p, k = cells.shape[:2]
        x_T = repeat(self.noise(p, seed), "p c h w -> (p k) c h w", k=k)
        images = self.generate(rearrange(cells, "p k n d -> (p k) n d"), x_T)
        return rearrange(images, "(p k) h w c -> p k h w c", p=p)
