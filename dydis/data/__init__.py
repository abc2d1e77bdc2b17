"""Dataset readers (one module per original download) and the standard dataset format."""

from __future__ import annotations

from pathlib import Path

from dydis.data.source import Block, Source
from dydis.data.standard import DatasetFile, write_dataset

DATASETS = ("synthetic", "shapes3d", "mpi3d-toy", "mpi3d-realistic", "mpi3d-real", "cars3d", "celeba", "dsprites")


def open_source(
    dataset: str,
    path: str | Path | None,
    *,
    factor_sizes: tuple[int, ...] | None = None,
    grid: tuple[int, ...] | None = None,
    crop: str = "diffae",
    workers: int | None = None,
) -> Source:
    """Open and validate the original download of ``dataset`` (``path`` unused for synthetic)."""
    if dataset == "synthetic":
        from dydis.data.synthetic import SyntheticSource

        return SyntheticSource(grid) if grid else SyntheticSource()
    if dataset == "shapes3d":
        from dydis.data.shapes3d import Shapes3DSource

        return Shapes3DSource(path)
    if dataset.startswith("mpi3d-"):
        from dydis.data.mpi3d import MPI3DSource

        return MPI3DSource(path, factor_sizes)
    if dataset == "cars3d":
        from dydis.data.cars3d import Cars3DSource

        return Cars3DSource(path, factor_sizes)
    if dataset == "celeba":
        from dydis.data.celeba import CelebASource

        return CelebASource(path, crop=crop, workers=workers)
    if dataset == "dsprites":
        from dydis.data.dsprites import DSpritesSource

        return DSpritesSource(path)
    raise ValueError(f"unknown dataset {dataset!r}")


__all__ = ["DATASETS", "Block", "DatasetFile", "Source", "open_source", "write_dataset"]
