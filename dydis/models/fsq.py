"""Finite scalar quantisation of the latent units (Mentzer et al. 2023; paper appendix D.2, Table 11).

The paper's ablation replaces DyGA by FSQ "with the number of codebooks set to 1 and the levels
to [8, 5, 5]"; the authors did not release that code. What is quantised here: each latent unit
token c_i (D = 32) on its own, as FSQ applied to the token sequence [b, N, D] with one
codebook: a linear map D -> 3, per dimension the bound f(z) = floor(L/2) tanh(z) (shifted by
a half step for even L, so it reaches exactly L integer values), rounding with the
straight-through estimator, division by floor(L/2) into [-1, 1], and a linear map 3 -> D back
to the token width the U-Net expects. The 8 x 5 x 5 grid gives 200 codes per unit. By default
all units share the two projections (what FSQ on a token sequence does);
``per_unit_projection`` gives each unit its own. The quantised tokens replace the aligned
features as the U-Net's context.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dydis.models.config import FSQConfig
from dydis.models.feature_extractor import GroupedLinear


class FSQOutput(NamedTuple):
    units: Tensor  # (b, n, d) the quantised tokens projected back to d: the U-Net's context
    codes: Tensor  # (b, n, k) the grid values in [-1, 1], k = len(levels); gradients pass (straight-through)
    indices: Tensor  # (b, n) int64 in [0, prod(levels)): the code of each unit


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """Quantise latent units (b, n, d) onto the grid of ``cfg.levels`` per unit."""

    def __init__(self, cfg: FSQConfig, units: int, dim: int, *, eps: float = 1e-3):
        super().__init__()
        self.cfg = cfg
        k = len(cfg.levels)
        if cfg.per_unit_projection:
            self.project_in, self.project_out = GroupedLinear(units, dim, k), GroupedLinear(units, k, dim)
        else:
            self.project_in, self.project_out = nn.Linear(dim, k), nn.Linear(k, dim)
        levels = torch.tensor(cfg.levels, dtype=torch.float32)
        self.register_buffer("levels", levels, persistent=False)
        # why: (1 + eps) widens the tanh range a little so the extreme values round to the ends
        self.register_buffer("half_range", (levels - 1) * (1 + eps) / 2, persistent=False)
        self.register_buffer("offset", (levels % 2 == 0).float() * 0.5, persistent=False)
        self.register_buffer("half_width", torch.div(levels, 2, rounding_mode="floor"), persistent=False)
        basis = torch.cumprod(torch.cat([torch.ones(1), levels[:-1]]), 0)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """Squash each dimension into (-L/2, L/2) (or its even-L shift) before rounding; float32."""
        shift = torch.atanh(self.offset / self.half_range)
        return torch.tanh(z.float() + shift) * self.half_range - self.offset

    def quantize(self, z: Tensor) -> Tensor:
        """Grid values in [-1, 1] of projected units (..., k)."""
        return round_ste(self.bound(z)) / self.half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """(..., k) grid values -> (...) int64 code index (mixed radix over the levels)."""
        digits = torch.round(codes * self.half_width + self.half_width)
        return (digits * self.basis).sum(-1).long()

    def forward(self, units: Tensor) -> FSQOutput:  # units: (b, n, d)
        codes = self.quantize(self.project_in(units))  # (b, n, k) float32
        out = self.project_out(codes.to(units.dtype))  # (b, n, d)
        return FSQOutput(out, codes, self.codes_to_indices(codes.detach()))
