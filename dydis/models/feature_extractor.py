"""The feature extractor: image -> N latent units of D dimensions (paper section 3.1, Table 9).

A CNN reduces the 64x64 image to one scalar per latent unit; an independent MLP per unit then
lifts that scalar to a D = 32 dimensional token, and the N tokens condition the U-Net through
cross-attention. The layers follow the authors' released ``FeatureExtractor`` rather than
Table 9 where they differ (DESIGN section 9): every 4x4 convolution has stride 2 and padding 1
(Table 9 prints stride 1, padding 3 for the first; only the code's choice flattens to 4096),
and each unit MLP ends in a ReLU (optional here, ``final_relu``). The N unit MLPs run as one
batched einsum over grouped weights instead of N separate modules. ``init`` "he" replaces
PyTorch's default init of the linear layers (``FeatureExtractorConfig.init`` says why).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dydis.models.config import FeatureExtractorConfig


class GroupedLinear(nn.Module):
    """``groups`` independent linear maps applied at once: (b, g, i) -> (b, g, o).

    Group g holds its own ``weight[g]`` (i, o) and ``bias[g]`` (o); initialised like
    ``nn.Linear`` (uniform in +-1/sqrt(i)), so a group is a drop-in for one ``nn.Linear(i, o)``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:  # (b, g, i) -> (b, g, o)
        # bmm over groups rather than einsum: with i = 1 (the first layer) einsum's weight
        # gradient comes back with other strides than the weight, which DDP reports as a
        # broken gradient layout contract on every step
        return torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1) + self.bias


class UnitMLPs(nn.Module):
    """The per-unit MLPs 1 -> 256 -> ReLU -> 512 -> ReLU -> D (-> ReLU) of Table 9, batched."""

    def __init__(self, units: int, hidden: tuple[int, ...], out_dim: int, *, final_relu: bool):
        super().__init__()
        widths = (1, *hidden, out_dim)
        self.layers = nn.ModuleList(GroupedLinear(units, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.final_relu = final_relu

    def forward(self, scalars: Tensor) -> Tensor:  # (b, n) -> (b, n, d)
        h = rearrange(scalars, "b n -> b n 1")
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1 or self.final_relu:
                h = F.relu(h)
        return h


class FeatureExtractorOutput(NamedTuple):
    units: Tensor  # (b, n, d) the latent units c = [c_1, ..., c_N], the U-Net's context
    scalars: Tensor  # (b, n) the CNN's one scalar per unit, before the unit MLPs (EncDiff's representation)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding), nn.BatchNorm2d(c_out), nn.ReLU()]


class FeatureExtractor(nn.Module):
    """Image (b, 3, 64, 64) in [-1, 1] -> latent units (b, N, D) and their scalars (b, N)."""

    def __init__(self, cfg: FeatureExtractorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.base_channels
        widths = (d, 2 * d, 4 * d, 4 * d, 4 * d)
        layers = _conv_bn_relu(cfg.in_channels, d, 7, 1, 3)  # 64x64 kept
        for c_in, c_out in zip(widths[:-1], widths[1:]):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += _conv_bn_relu(c_in, c_out, 4, 2, 1)
        self.cnn = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(cfg.flat_features, cfg.fc_hidden), nn.ReLU(),
            nn.Linear(cfg.fc_hidden, cfg.fc_bottleneck), nn.ReLU(),
            nn.Linear(cfg.fc_bottleneck, cfg.latent_units),
        )
        self.unit_mlps = UnitMLPs(cfg.latent_units, cfg.mlp_hidden, cfg.unit_dim, final_relu=cfg.final_relu)
        if cfg.init == "he":
            self._he_init()

    def _he_init(self) -> None:
        """He-normal weights (std sqrt(2 / fan_in)) and zero biases for the FC head and the unit MLPs.

        Not ``nn.init.kaiming_normal_``: it would read a GroupedLinear weight (groups, in, out) as a
        conv kernel and take in * out as its fan-in."""
        linears = [(m.weight, m.bias, m.in_features) for m in self.head if isinstance(m, nn.Linear)]
        linears += [(m.weight, m.bias, m.weight.shape[1]) for m in self.unit_mlps.layers]
        for weight, bias, fan_in in linears:
            nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_in))
            nn.init.zeros_(bias)

    def forward(self, x: Tensor) -> FeatureExtractorOutput:  # x: (b, c, 64, 64)
        h = rearrange(self.cnn(x), "b c h w -> b (c h w)")  # (b, 4d * 4 * 4), channel-major as nn.Flatten
        scalars = self.head(h)  # (b, n)
        return FeatureExtractorOutput(self.unit_mlps(scalars), scalars)  # (b, n, d), (b, n)
