"""The VQ-GAN objective: L1 + LPIPS reconstruction, codebook loss, and a hinge PatchGAN.

The generator's adversarial term is scaled by the adaptive weight of Esser et al. (2021, eq. 7):
the ratio of the reconstruction loss's and the adversarial loss's gradient norms at the
decoder's last layer, so that neither term swamps the other whatever their raw scales.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dydis.models.config import VQLossConfig
from dydis.models.discriminator import PatchDiscriminator
from dydis.models.lpips import LPIPS


class LossTerms(NamedTuple):
    loss: Tensor  # () the value to back-propagate
    logs: dict[str, Tensor]  # detached scalars for logging


def adaptive_weight(nll: Tensor, adversarial: Tensor, last_layer: Tensor, scale: float) -> Tensor:
    """``scale * ||grad nll|| / (||grad adversarial|| + 1e-4)`` at ``last_layer``, clamped to [0, 1e4]."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (adv_grad.norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * scale


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class VQGANLoss(nn.Module):
    """Holds the discriminator and the (optional, frozen) LPIPS network."""

    def __init__(self, cfg: VQLossConfig, lpips: LPIPS | None = None):
        super().__init__()
        self.cfg = cfg
        self.lpips = lpips
        self.discriminator = PatchDiscriminator(width=cfg.disc_width, n_layers=cfg.disc_layers)

    def _disc_factor(self, step: int) -> float:
        return self.cfg.disc_factor if step >= self.cfg.disc_start else 0.0

    def generator(self, x: Tensor, reconstruction: Tensor, codebook_loss: Tensor, last_layer: Tensor,
                  step: int) -> LossTerms:
        """Loss of the autoencoder for images x and their reconstructions, (b, 3, h, w) in [-1, 1]."""
        l1 = (x - reconstruction).abs().mean()
        nll = l1
        logs = {"l1": l1.detach()}
        if self.lpips is not None and self.cfg.perceptual_weight > 0:
            perceptual = self.lpips(x, reconstruction).mean()
            nll = nll + self.cfg.perceptual_weight * perceptual
            logs["lpips"] = perceptual.detach()
        loss = nll + self.cfg.codebook_weight * codebook_loss
        factor = self._disc_factor(step)
        if factor > 0:
            adversarial = -self.discriminator(reconstruction).mean()
            weight = adaptive_weight(nll, adversarial, last_layer, self.cfg.disc_weight)
            loss = loss + weight * factor * adversarial
            logs.update(g_loss=adversarial.detach(), d_weight=weight)
        logs.update(codebook=codebook_loss.detach(), ae_loss=loss.detach())
        return LossTerms(loss, logs)

    def discriminator_step(self, x: Tensor, reconstruction: Tensor, step: int) -> LossTerms:
        """Hinge loss of the discriminator; reconstructions are detached."""
        factor = self._disc_factor(step)
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        loss = factor * hinge_d_loss(logits_real, logits_fake)
        return LossTerms(loss, {"d_loss": loss.detach(), "logits_real": logits_real.mean().detach(),
                                "logits_fake": logits_fake.mean().detach()})
