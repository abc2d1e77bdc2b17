"""Factor grids: conversion between factor index vectors and flat row indices.

A dataset whose rows enumerate a full factor grid stores them in canonical order, so that
``row = ravel_multi_index(factors, sizes)`` with the last factor varying fastest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FactorSpace:
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes):
            raise ValueError(f"{len(self.names)} factor names for {len(self.sizes)} sizes")

    @property
    def n_rows(self) -> int:
        """Number of rows of the full grid."""
        return int(np.prod(self.sizes, dtype=np.int64)) if self.sizes else 0

    def to_rows(self, factors: np.ndarray) -> np.ndarray:
        """Flat row indices (..., ) of factor index vectors (..., n_factors)."""
        factors = np.asarray(factors)
        return np.ravel_multi_index(tuple(np.moveaxis(factors, -1, 0)), self.sizes)

    def to_factors(self, rows: np.ndarray) -> np.ndarray:
        """Factor index vectors (..., n_factors) of flat row indices (...)."""
        return np.stack(np.unravel_index(np.asarray(rows), self.sizes), axis=-1).astype(np.int64)
