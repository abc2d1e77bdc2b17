"""FID's reference statistics, computed once per dataset, Inception weights and image selection.

Every FID on a dataset compares generated images with the same real ones, and their Inception
features are, after sampling, the costliest part of it (all 480,000 images of Shapes3D by
default). ``cached_reference`` keeps their ``reference_statistics`` in ``<directory>/<key>.npz``,
where the key hashes everything that determines them: the dataset artifact's manifest (which
holds the sha256 of its images), the Inception weights file, the rows used, and ``FORMAT``,
the version of how an image becomes features. Device and batch size are left out: they change
the features only by float rounding.

A file is written whole (a temporary file renamed into place) and holds its key and the
sha256 of its arrays beside them; one that cannot be read, or whose key or arrays do not match,
is recomputed and replaced, with a warning, so a damaged cache costs time, never a wrong FID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dydis.metrics.fid import reference_statistics

logger = logging.getLogger(__name__)

# Bump when compute_features or FIDInceptionV3 changes the features of an image, or when what
# reference_statistics keeps changes: the old files then no longer match any key.
FORMAT = 1
_KINDS = ({"features"}, {"mu", "sigma"})  # the two forms of reference_statistics


@dataclass(frozen=True)
class Reference:
    """The real images' statistics and what identifies them.

    Attributes
    ----------
    statistics : dict[str, np.ndarray]
        ``reference_statistics`` of the real features, for ``fid``.
    key : str
        ``reference_key`` of what they were computed from.
    sha256 : str
        ``statistics_sha256`` of the arrays: the same whether computed now or read from a cache.
    source : {"computed", "cache"}
    """

    statistics: dict[str, np.ndarray]
    key: str
    sha256: str
    source: str


def reference_key(*, dataset: str, weights: str, rows: np.ndarray) -> str:
    """The sha256 (hex) that names the statistics of one set of real images.

    Parameters
    ----------
    dataset : str
        sha256 of the dataset artifact's manifest (it records the sha256 of ``data.h5``).
    weights : str
        sha256 of the Inception weights file.
    rows : (n,) int
        The dataset rows whose images are the reference set, in the order they are read.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    what = {"format": FORMAT, "dataset": dataset, "weights": weights, "images": len(rows),
            "rows": hashlib.sha256(rows.tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def statistics_sha256(statistics: dict[str, np.ndarray]) -> str:
    """sha256 (hex) of the arrays' names, dtypes, shapes and bytes: their identity, independent
    of the file that holds them (an .npz's bytes include the time it was written)."""
    digest = hashlib.sha256()
    for name in sorted(statistics):
        array = np.ascontiguousarray(statistics[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cached_reference(directory: Path | None, key: str, features: Callable[[], np.ndarray]) -> Reference:
    """The reference statistics of ``key``: read from ``directory`` when a sound file is there,
    else computed from ``features()`` (n, d) and stored there. ``directory`` None computes them
    and stores nothing."""
    path = directory / f"{key}.npz" if directory is not None else None
    if path is not None and path.exists():
        try:
            statistics, digest = _read(path, key)
            return Reference(statistics, key, digest, "cache")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("FID reference statistics %s are damaged (%s); computing them again", path, err)
    statistics = reference_statistics(features())
    digest = statistics_sha256(statistics)
    if path is not None:
        _write(path, key, statistics, digest)
    return Reference(statistics, key, digest, "computed")


def _read(path: Path, key: str) -> tuple[dict[str, np.ndarray], str]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}  # zipfile checks each member's CRC-32
    stored_key, stored_digest = str(arrays.pop("key")), str(arrays.pop("sha256"))
    if stored_key != key:
        raise ValueError(f"the file holds the statistics of key {stored_key}")
    if set(arrays) not in _KINDS:
        raise ValueError(f"expected the arrays features, or mu and sigma, found {sorted(arrays)}")
    digest = statistics_sha256(arrays)
    if digest != stored_digest:
        raise ValueError("the arrays' sha256 differs from the one stored with them")
    return arrays, digest


def _write(path: Path, key: str, statistics: dict[str, np.ndarray], digest: str) -> None:
    """Publish the file whole, or not at all: a reader never sees part of it. A cache that
    cannot be written costs the next evaluation the computation, so it is a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{key[:16]}-", suffix=".tmp", delete=False)
        try:
            with handle:
                np.savez(handle, key=np.array(key), sha256=np.array(digest), **statistics)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
    except OSError as err:
        logger.warning("FID reference statistics not cached in %s (%s)", path.parent, err)
