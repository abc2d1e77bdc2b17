"""Latent interchange (paper section 4.3, Figs. 3 and 8): one unit of a source image's condition
replaced by the target image's, everything else (the other units, the starting noise) kept.

The authors draw fresh noise per panel; here every cell of a pair starts from the same noise
(DESIGN 9 row 15), so a change in a cell is the swapped unit's doing and nothing else's.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import repeat
from torch import Tensor

from dydis.viz.sampler import Sampler


def interchange_contexts(source: Tensor, target: Tensor) -> Tensor:
    """The conditions of an interchange grid.

    Parameters
    ----------
    source, target : (p, N, D) the units of p source and p target images.

    Returns
    -------
    (p, N + 1, N, D): cell 0 is the source's units unchanged (the reference sample); cell 1 + k
    is the source with unit k taken from the target.
    """
    n_units = source.shape[1]
    cells = repeat(source, "p n d -> p k n d", k=n_units + 1).clone()
    k = torch.arange(n_units, device=source.device)
    cells[:, k + 1, k] = target[:, k]  # cell 1 + k, unit k
    return cells


def latent_interchange(sampler: Sampler, sources: np.ndarray, targets: np.ndarray, seed: int) -> np.ndarray:
    """Images (p, N + 1, 64, 64, 3) uint8 of ``interchange_contexts`` for source and target
    images (p, 64, 64, 3) uint8, one seeded noise per pair."""
    return sampler.generate_rows(interchange_contexts(sampler.units(sources), sampler.units(targets)), seed)
