"""dSprites (Matthey et al. 2017): ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

The npz holds ``imgs`` uint8 (737280, 64, 64) in {0, 1}, ``latents_classes`` int64
(737280, 6), ``latents_values`` and a Python-2 pickled ``metadata``. We read only the two
arrays (never unpickling anything), drop the constant colour factor, scale pixels to
0/255 and replicate them to three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dydis.data.npz import NpyMember, open_npz
from dydis.data.source import Block, Source
from dydis.errors import DataError

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)


class DSpritesSource(Source):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.factor_names, self.factor_sizes = FACTOR_NAMES, FACTOR_SIZES
        self._zip = open_npz(self.path)
        try:
            self._images = NpyMember(self._zip, self.path, "imgs")
            classes = NpyMember(self._zip, self.path, "latents_classes")
            self._validate(classes)
            self._factors = classes.read(np.arange(classes.shape[0]))[:, 1:].astype(np.int64)
            classes.close()
        except DataError:
            self.close()
            raise
        bad = (self._factors < 0) | (self._factors >= np.asarray(FACTOR_SIZES))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            self.close()
            raise DataError(f"latents_classes row {row}: {FACTOR_NAMES[col]} class {self._factors[row, col]} "
                            f"is outside 0..{FACTOR_SIZES[col] - 1}", self.path)

    def _validate(self, classes: NpyMember) -> None:
        images = self._images
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != (64, 64):
            raise DataError(f"imgs: expected uint8 (n, 64, 64), found {images.dtype} {images.shape}", self.path)
        self.n_rows = int(images.shape[0])
        if classes.dtype.kind not in "iu" or tuple(classes.shape) != (self.n_rows, 6):
            raise DataError(f"latents_classes: expected integer ({self.n_rows}, 6), found "
                            f"{classes.dtype} {classes.shape}", self.path)

    def read(self, rows: np.ndarray) -> Block:
        masks = self._images.read(rows)  # (b, 64, 64) in {0, 1}
        images = np.repeat(np.where(masks > 0, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)
        return Block(images=images, factors=self._factors[rows])

    def close(self) -> None:
        if hasattr(self, "_images"):
            self._images.close()
        self._zip.close()
