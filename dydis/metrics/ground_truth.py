"""The ground-truth sampler every grid metric draws from.

The metrics of disentanglement_lib (Locatello et al. 2019) never look at a dataset row by row:
they draw factor vectors from a ``numpy.random.RandomState`` and look up the observation with
those factors. We keep that protocol, draw for draw, so that a representation evaluated here
and with disentanglement_lib sees the same samples: for a full grid, ``sample_factors`` draws
each factor in turn with ``random_state.randint(size, size=n)`` (its
``SplitDiscreteStateSpace.sample_latent_factors``) and the row is found by exact index lookup,
which consumes no randomness (its ``Shapes3D.sample_observations_from_factors``).

A dataset that is only a subset of its factor grid (some combinations missing, or repeated)
has no reference protocol; there we draw rows uniformly and, where factors are prescribed,
draw among the rows that match them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dydis.errors import DataError


class GroundTruth:
    """Factor indices of a dataset's rows, on a grid of known sizes.

    Parameters
    ----------
    factors : array of int, shape (n_rows, n_factors)
        Factor index of every row of the dataset, aligned with the representation's rows.
    factor_sizes : sequence of int, length n_factors
        Number of values of each factor.

    Notes
    -----
    Three layouts are recognised once, at construction:

    - ``"canonical"``: the rows are the full grid in canonical order,
      ``row = ravel_multi_index(factors, sizes)`` with the last factor fastest (the dydis
      dataset format); lookup is that formula.
    - ``"grid"``: every combination exactly once, in another order; lookup through a table.
    - ``"subset"``: anything else; factors are drawn from uniformly drawn rows, and a row for
      prescribed factors is drawn among the matching rows.
    """

    def __init__(self, factors: np.ndarray, factor_sizes: Sequence[int]):
        factors = np.asarray(factors)
        sizes = tuple(int(s) for s in factor_sizes)
        if factors.ndim != 2:
            raise DataError(f"factors must be (n_rows, n_factors), got shape {factors.shape}")
        if factors.shape[1] != len(sizes):
            raise DataError(
                f"factors have {factors.shape[1]} columns but {len(sizes)} factor sizes were given"
            )
        if factors.shape[0] == 0:
            raise DataError("factors are empty: the dataset has no rows")
        if not np.issubdtype(factors.dtype, np.integer):
            if not np.array_equal(factors, np.round(factors)):
                raise DataError("factors must be integer class indices, found fractional values")
        if min(sizes) < 1:
            raise DataError(f"factor sizes must be positive, got {sizes}")
        factors = factors.astype(np.int64, copy=False)
        if (factors < 0).any() or (factors >= np.asarray(sizes)).any():
            raise DataError(f"factor indices must lie in [0, size) for sizes {sizes}")

        self.factors = factors
        self.factor_sizes = sizes
        self.n_rows, self.n_factors = factors.shape

        n_cells = int(np.prod(sizes, dtype=np.int64))
        cells = np.ravel_multi_index(tuple(factors.T), sizes)
        self._cell_to_row: np.ndarray | None = None
        self._by_value: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.n_rows == n_cells and np.array_equal(cells, np.arange(n_cells)):
            self.layout = "canonical"
        elif self.n_rows == n_cells and np.unique(cells).size == n_cells:
            self.layout = "grid"
            self._cell_to_row = np.empty(n_cells, dtype=np.int64)
            self._cell_to_row[cells] = np.arange(n_cells)
        else:
            self.layout = "subset"
            # why: rows sorted by grid cell let a searchsorted find all rows of a combination.
            self._order = np.argsort(cells, kind="stable")
            self._sorted_cells = cells[self._order]
            self._has_repeats = bool((np.diff(self._sorted_cells) == 0).any())

    @property
    def is_full_grid(self) -> bool:
        """Whether every factor combination appears exactly once (exact lookup, no draws)."""
        return self.layout != "subset"

    def __repr__(self) -> str:
        return (f"GroundTruth(n_rows={self.n_rows}, factor_sizes={self.factor_sizes}, "
                f"layout={self.layout!r})")

    # ---------------------------------------------------------------- sampling

    def sample_factors(self, n: int, random_state: np.random.RandomState) -> np.ndarray:
        """Draw ``n`` factor vectors, shape (n, n_factors).

        On a full grid each factor is uniform and independent, drawn factor by factor with
        ``randint(size, size=n)`` as disentanglement_lib does; on a subset, the factors of
        ``n`` uniformly drawn rows.
        """
        if self.is_full_grid:
            out = np.empty((n, self.n_factors), dtype=np.int64)
            for j, size in enumerate(self.factor_sizes):
                out[:, j] = random_state.randint(size, size=n)
            return out
        return self.factors[random_state.randint(self.n_rows, size=n)]

    def rows_of(
        self, factors: np.ndarray, random_state: np.random.RandomState | None = None
    ) -> np.ndarray:
        """Rows (n,) with the given factor vectors (n, n_factors).

        Exact lookup on a full grid (no randomness used). On a subset with repeated
        combinations, a uniform draw among the matching rows, which needs ``random_state``;
        a combination absent from the subset raises ``DataError``.
        """
        factors = np.asarray(factors, dtype=np.int64)
        cells = np.ravel_multi_index(tuple(factors.T), self.factor_sizes)
        if self.layout == "canonical":
            return cells
        if self.layout == "grid":
            return self._cell_to_row[cells]
        lo = np.searchsorted(self._sorted_cells, cells, side="left")
        hi = np.searchsorted(self._sorted_cells, cells, side="right")
        count = hi - lo
        if (count == 0).any():
            missing = factors[np.argmax(count == 0)]
            raise DataError(f"no row of the dataset has the factors {missing.tolist()}")
        if self._has_repeats:
            if random_state is None:
                raise ValueError("rows_of needs a random_state on a subset with repeated factors")
            lo = lo + random_state.randint(0, count)
        return self._order[lo]

    def sample(
        self,
        n: int,
        random_state: np.random.RandomState,
        *,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` (factors, row) pairs: factors (n, n_factors) and rows (n,).

        ``batch_size`` repeats disentanglement_lib's ``generate_batch_factor_code``, which draws
        ``min(batch_size, remaining)`` points at a time; the batching changes which random
        numbers land on which factor, so the metrics that batch (DCI, MIG, SAP, Modularity,
        InfoMEC: 16) pass it to see the reference's samples.
        """
        if n < 1:
            raise ValueError(f"cannot draw {n} samples")
        step = n if batch_size is None else int(batch_size)
        factor_parts, row_parts = [], []
        for start in range(0, n, step):
            m = min(step, n - start)
            if self.is_full_grid:
                f = self.sample_factors(m, random_state)
                r = self.rows_of(f)
            else:
                r = random_state.randint(self.n_rows, size=m)
                f = self.factors[r]
            factor_parts.append(f)
            row_parts.append(r)
        return np.concatenate(factor_parts), np.concatenate(row_parts)

    def sample_with_fixed_factor(
        self, n: int, factor_index: int, random_state: np.random.RandomState
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` points that share the value of one factor: factors (n, K), rows (n,).

        On a full grid this is the FactorVAE batch of disentanglement_lib: draw ``n`` factor
        vectors, then copy the first one's value of ``factor_index`` to all. On a subset the
        first row is uniform and the others are uniform among the rows with its value.
        """
        if self.is_full_grid:
            f = self.sample_factors(n, random_state)
            f[:, factor_index] = f[0, factor_index]
            return f, self.rows_of(f)
        first = random_state.randint(self.n_rows)
        value = self.factors[first, factor_index]
        order, starts = self._rows_by_value(factor_index)
        lo, count = starts[value], starts[value + 1] - starts[value]
        rows = np.empty(n, dtype=np.int64)
        rows[0] = first
        rows[1:] = order[lo + random_state.randint(0, count, size=n - 1)]
        return self.factors[rows], rows

    def _rows_by_value(self, factor_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows sorted by the value of one factor, and where each value starts."""
        if factor_index not in self._by_value:
            column = self.factors[:, factor_index]
            order = np.argsort(column, kind="stable")
            counts = np.bincount(column, minlength=self.factor_sizes[factor_index])
            starts = np.concatenate([[0], np.cumsum(counts)])
            self._by_value[factor_index] = (order, starts)
        return self._by_value[factor_index]


def grid_factors(factor_sizes: Sequence[int]) -> np.ndarray:
    """Factor indices of the full grid in canonical order, shape (prod(sizes), n_factors)."""
    sizes = tuple(int(s) for s in factor_sizes)
    rows = np.arange(int(np.prod(sizes, dtype=np.int64)))
    return np.stack(np.unravel_index(rows, sizes), axis=1).astype(np.int64)
