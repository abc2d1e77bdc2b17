"""MPI3D (Gondal et al. 2019): ``mpi3d_toy.npz``, ``mpi3d_realistic.npz``, ``mpi3d_real.npz``.

Each holds one array ``images`` uint8 (1036800, 64, 64, 3) and no labels: the factors are
the row index unravelled over the grid below (last factor fastest). The sizes of the first
two factors are 6 and 6 (disentanglement_lib's 4 and 4 describe an older release).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dydis.data.factors import FactorSpace
from dydis.data.npz import NpyMember, open_npz
from dydis.data.source import IMAGE_SHAPE, Block, Source
from dydis.errors import DataError

FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                "horizontal_axis", "vertical_axis")
FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
VARIANT_FILES = {"mpi3d-toy": "mpi3d_toy.npz", "mpi3d-realistic": "mpi3d_realistic.npz", "mpi3d-real": "mpi3d_real.npz"}


class MPI3DSource(Source):
    def __init__(self, path: str | Path, factor_sizes: tuple[int, ...] | None = None):
        self.path = Path(path)
        self.factor_names = FACTOR_NAMES
        self.factor_sizes = tuple(factor_sizes) if factor_sizes else FACTOR_SIZES
        if len(self.factor_sizes) != len(FACTOR_NAMES):
            raise DataError(f"factor sizes must give the {len(FACTOR_NAMES)} MPI3D factors "
                            f"({', '.join(FACTOR_NAMES)}), got {self.factor_sizes}", self.path)
        self._zip = open_npz(self.path)
        try:
            self._images = NpyMember(self._zip, self.path, "images")
            self._validate()
        except DataError:
            self.close()
            raise
        self._space = FactorSpace(self.factor_names, self.factor_sizes)

    def _validate(self) -> None:
        images = self._images
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise DataError(f"images: expected uint8 (n, 64, 64, 3), found {images.dtype} {images.shape}", self.path)
        self.n_rows = int(images.shape[0])
        grid = int(np.prod(self.factor_sizes))
        if self.n_rows != grid:
            hint = " (pass --factor-sizes for a reduced grid)" if self.factor_sizes == FACTOR_SIZES else ""
            raise DataError(f"images holds {self.n_rows} rows but the factor grid "
                            f"{'x'.join(map(str, self.factor_sizes))} needs {grid}{hint}", self.path)

    def read(self, rows: np.ndarray) -> Block:
        return Block(images=self._images.read(rows), factors=self._space.to_factors(rows))

    def close(self) -> None:
        if hasattr(self, "_images"):
            self._images.close()
        self._zip.close()
