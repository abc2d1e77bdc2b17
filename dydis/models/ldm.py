"""The trainable second stage: feature extractor (+ optional FSQ) conditioning a U-Net denoiser.

The VQ-GAN is not part of it: training reads cached latents, and only sampling needs the
decoder. ``forward`` returns the diffusion loss so that one ``DistributedDataParallel`` wrapper
covers both networks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from dydis.models.config import DiffusionConfig, FeatureExtractorConfig, FSQConfig, UNetConfig
from dydis.models.diffusion import GaussianDiffusion
from dydis.models.feature_extractor import FeatureExtractor, FeatureExtractorOutput
from dydis.models.fsq import FSQ
from dydis.models.unet import UNet

Align = Callable[[Tensor], Tensor]


class LatentDiffusion(nn.Module):
    def __init__(self, feature_extractor: FeatureExtractorConfig, unet: UNetConfig, diffusion: DiffusionConfig,
                 fsq: FSQConfig | None = None):
        super().__init__()
        self.feature_extractor = FeatureExtractor(feature_extractor)
        self.fsq = None if fsq is None else FSQ(fsq, feature_extractor.latent_units, feature_extractor.unit_dim)
        self.unet = UNet(unet)
        self.diffusion = GaussianDiffusion(diffusion)

    def extract(self, images: Tensor) -> FeatureExtractorOutput:
        """Raw latent units (b, N, D) and their pre-MLP scalars (b, N) of images in [-1, 1]."""
        return self.feature_extractor(images)

    def condition(self, images: Tensor) -> Tensor:
        """The U-Net's context before any anchoring: the units, FSQ-quantised when FSQ is on."""
        units = self.extract(images).units
        return units if self.fsq is None else self.fsq(units).units

    def forward(self, images: Tensor, latents: Tensor, *, align: Align | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """The diffusion loss of scaled latents (b, c, h, w) conditioned on their images (b, 3, 64, 64).

        ``align`` maps the units onto the DyGA anchors (eq. 6) once anchors exist; ``generator``
        draws the timesteps, the noise and the Skip Dropout masks.
        """
        context = self.condition(images)
        if align is not None:
            context = align(context)
        return self.diffusion.training_loss(self.unet, latents, context, generator=generator,
                                            model_kwargs={"generator": generator}).loss
