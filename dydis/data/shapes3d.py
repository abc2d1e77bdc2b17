"""Shapes3D from DeepMind's ``3dshapes.h5`` (Burgess & Kim 2018).

The file holds ``images`` uint8 (480000, 64, 64, 3) and ``labels`` float64 (480000, 6) of
factor *values*. Factor indices come from the nearest value of each factor's known grid, not
from ranking the values present, so a user's own subset of the file still gets the true
indices.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from dydis.data.source import IMAGE_SHAPE, Block, Source
from dydis.errors import DataError

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
FACTOR_VALUES = (
    np.arange(10) / 10,
    np.arange(10) / 10,
    np.arange(10) / 10,
    np.linspace(0.75, 1.25, 8),
    np.arange(4, dtype=np.float64),
    np.linspace(-30, 30, 15),
)


def labels_to_factors(labels: np.ndarray) -> np.ndarray:
    """Factor indices (n, 6) of label values (n, 6), or ValueError naming an off-grid value.

    A value counts as on the grid when it lies within 1% of a grid step of a grid value,
    which absorbs the float32 rounding of the published labels. NaN is refused first: it is
    near no grid value, yet every comparison with it is false, so it would pass that test
    and become index 0.
    """
    not_finite = np.argwhere(~np.isfinite(labels))
    if len(not_finite):
        row, j = not_finite[0]
        raise ValueError(f"labels column {j} ({FACTOR_NAMES[j]}) holds {float(labels[row, j])!r} in row {row}; "
                         "expected finite values on the Shapes3D grid")
    factors = np.empty(labels.shape, np.int64)
    for j, grid in enumerate(FACTOR_VALUES):
        distance = np.abs(labels[:, j, None] - grid[None, :])
        factors[:, j] = distance.argmin(axis=1)
        step = np.diff(grid).min()
        worst = distance.min(axis=1).argmax() if len(labels) else None
        if worst is not None and distance[worst].min() > 0.01 * step:
            raise ValueError(f"labels column {j} ({FACTOR_NAMES[j]}) holds {float(labels[worst, j])!r} in row {worst}, "
                             f"which is not on the Shapes3D grid {np.round(grid, 4).tolist()}")
    return factors


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of an HDF5 dataset: one slice when they are contiguous, else a point selection."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return dataset[int(rows[0]): int(rows[-1]) + 1]
    return dataset[rows]


class Shapes3DSource(Source):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.factor_names, self.factor_sizes = FACTOR_NAMES, FACTOR_SIZES
        if not self.path.exists():
            raise DataError("source file not found (expected 3dshapes.h5 from DeepMind's 3dshapes-dataset)", self.path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError:
            raise DataError("not a readable HDF5 file (truncated or corrupt?)", self.path) from None
        try:
            self._validate()
        except DataError:
            self._h5.close()
            raise

    def _validate(self) -> None:
        keys = sorted(self._h5.keys())
        for key in ("images", "labels"):
            if key not in self._h5 or not isinstance(self._h5[key], h5py.Dataset):
                raise DataError(f"expected HDF5 datasets 'images' and 'labels', found keys {keys}", self.path)
        self._images, self._labels = self._h5["images"], self._h5["labels"]
        if self._images.dtype != np.uint8 or self._images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"images: expected uint8 (n, 64, 64, 3), found {self._images.dtype} {self._images.shape}",
                            self.path)
        n = self._images.shape[0]
        if self._labels.dtype.kind != "f" or self._labels.shape != (n, 6):
            raise DataError(f"labels: expected float (n={n}, 6), found {self._labels.dtype} {self._labels.shape}",
                            self.path)
        self.n_rows = n
        # The labels are small (23 MB for the full file): convert them all up front, so that
        # an off-grid value is reported before any artifact is started.
        try:
            labels = self._labels[()]
        except OSError as err:
            raise DataError(f"labels are unreadable ({err}); the file is truncated or corrupt", self.path) from None
        try:
            self._factors = labels_to_factors(np.asarray(labels, np.float64))
        except ValueError as err:
            raise DataError(str(err), self.path) from None

    def read(self, rows: np.ndarray) -> Block:
        try:
            images = read_rows(self._images, rows)
        except OSError as err:
            raise DataError(f"could not read rows {rows[0]}..{rows[-1]} ({err}); the file is truncated or corrupt",
                            self.path) from None
        return Block(images=np.asarray(images), factors=self._factors[rows])

    def close(self) -> None:
        self._h5.close()
