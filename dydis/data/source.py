"""The contract between a dataset's original download and `prepare-data`.

Each reader opens the original files, validates them up front (so that a bad download fails
before any artifact is started), and then hands out blocks of rows on request. The stage
decides which rows (all, or a seeded subset) and writes the standard format; readers never
write anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import NamedTuple

import numpy as np

IMAGE_SHAPE = (64, 64, 3)


class Block(NamedTuple):
    """Consecutive selected rows of a dataset, in the standard in-memory format."""

    images: np.ndarray  # uint8 (b, 64, 64, 3)
    factors: np.ndarray  # int64 (b, n_factors); (b, 0) for datasets without factors
    attributes: np.ndarray | None = None  # int8 (b, n_attributes) in {-1, +1} (CelebA)
    split: np.ndarray | None = None  # int8 (b,): 0 train, 1 valid, 2 test (CelebA)


class Source(ABC):
    """An opened, validated original download.

    Attributes every reader sets in ``__init__``: ``path`` (the file or folder read, ``None``
    for generated data), ``n_rows``, ``factor_names``, ``factor_sizes`` and
    ``attribute_names`` (empty unless the dataset has binary attributes).
    """

    path: Path | None
    n_rows: int
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    attribute_names: tuple[str, ...] = ()

    @abstractmethod
    def read(self, rows: np.ndarray) -> Block:
        """Return the rows ``rows`` (int64, strictly increasing).

        Successive calls ask for increasing, non-overlapping rows, so a reader may stream
        through its file once. A file found to be corrupt while reading raises ``DataError``
        naming the file.
        """

    def close(self) -> None:
        """Release open files and worker processes."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
