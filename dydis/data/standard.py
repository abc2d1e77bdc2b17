"""The standard dataset format that `prepare-data` writes and every later stage reads.

``data.h5`` holds ``images`` uint8 (n, 64, 64, 3), chunked one image per chunk so that
training reads random rows cheaply; ``factors`` int64 (n, n_factors) of class indices;
``factor_names`` and ``factor_sizes``; and for CelebA ``attributes`` int8 (n, 40) in {-1,+1},
``attribute_names`` and ``split`` int8 (n,). File attributes record the dataset name and the
format version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import h5py
import numpy as np

from dydis.data.factors import FactorSpace
from dydis.data.source import IMAGE_SHAPE, Block
from dydis.errors import DataError

FORMAT_VERSION = 1
_STRINGS = h5py.string_dtype("utf-8")


def write_dataset(
    path: Path,
    blocks: Iterable[Block],
    *,
    n_rows: int,
    dataset: str,
    factor_names: tuple[str, ...],
    factor_sizes: tuple[int, ...],
    attribute_names: tuple[str, ...] = (),
    compression: str | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> None:
    """Stream ``blocks`` (n_rows in total) into a new ``data.h5`` at ``path``.

    ``compression`` is an h5py filter name ("lzf", "gzip") or None; one image per chunk keeps
    random reads cheap either way.
    """
    with h5py.File(path, "w") as h5:
        h5.attrs["dataset"] = dataset
        h5.attrs["format_version"] = FORMAT_VERSION
        images = h5.create_dataset("images", (n_rows, *IMAGE_SHAPE), np.uint8,
                                   chunks=(1, *IMAGE_SHAPE), compression=compression)
        factors = h5.create_dataset("factors", (n_rows, len(factor_sizes)), np.int64)
        h5.create_dataset("factor_names", data=list(factor_names), dtype=_STRINGS)
        h5.create_dataset("factor_sizes", data=np.asarray(factor_sizes, np.int64).reshape(-1))
        if attribute_names:
            attributes = h5.create_dataset("attributes", (n_rows, len(attribute_names)), np.int8)
            split = h5.create_dataset("split", (n_rows,), np.int8)
            h5.create_dataset("attribute_names", data=list(attribute_names), dtype=_STRINGS)
        start = 0
        for block in blocks:
            stop = start + len(block.images)
            if stop > n_rows:
                raise AssertionError(f"source yielded more than the {n_rows} rows announced")
            images[start:stop] = block.images
            factors[start:stop] = block.factors
            if attribute_names:
                attributes[start:stop] = block.attributes
                split[start:stop] = block.split
            start = stop
            if on_rows is not None:
                on_rows(len(block.images))
        if start != n_rows:
            raise AssertionError(f"source yielded {start} rows, {n_rows} announced")


class DatasetFile:
    """A validated, open ``data.h5``; ``images`` stays on disk, the rest is loaded."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise DataError("dataset file not found", self.path) from None
        except OSError:
            raise DataError("not a readable HDF5 file (truncated or corrupt?)", self.path) from None
        h5 = self._h5
        for key in ("images", "factors", "factor_names", "factor_sizes"):
            if key not in h5:
                self.close()
                raise DataError(f"expected a dydis dataset with key {key!r}; keys found: {sorted(h5)}", self.path)
        self.images = h5["images"]
        n = self.images.shape[0]
        if self.images.dtype != np.uint8 or self.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"images: expected uint8 (n, 64, 64, 3), found {self.images.dtype} {self.images.shape}", self.path)
        self.name = str(h5.attrs.get("dataset", ""))
        self.factors = h5["factors"][()]
        self.factor_names = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in h5["factor_names"][()])
        self.factor_sizes = tuple(int(s) for s in h5["factor_sizes"][()])
        if self.factors.shape != (n, len(self.factor_sizes)):
            raise DataError(f"factors: expected shape ({n}, {len(self.factor_sizes)}), found {self.factors.shape}", self.path)
        self.attributes = h5["attributes"][()] if "attributes" in h5 else None
        self.split = h5["split"][()] if "split" in h5 else None
        self.attribute_names = (
            tuple(s.decode() if isinstance(s, bytes) else str(s) for s in h5["attribute_names"][()])
            if "attribute_names" in h5 else ()
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def space(self) -> FactorSpace:
        return FactorSpace(self.factor_names, self.factor_sizes)

    @property
    def is_full_grid(self) -> bool:
        """True when the rows are the whole factor grid in canonical order."""
        return bool(self.factor_sizes) and len(self) == self.space.n_rows and bool(
            np.array_equal(self.space.to_rows(self.factors), np.arange(len(self)))
        )

    def read_images(self, rows: np.ndarray) -> np.ndarray:
        """Images (b, 64, 64, 3) of arbitrary rows, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        unique, inverse = np.unique(rows[order], return_inverse=True)
        data = self.images[unique]  # h5py needs increasing indices
        out = np.empty((len(rows), *IMAGE_SHAPE), np.uint8)
        out[order] = data[inverse]
        return out

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "DatasetFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
