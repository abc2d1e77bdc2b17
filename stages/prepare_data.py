"""`prepare-data`: read a dataset's original download, write the standard dataset artifact."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import PrepareDataConfig, to_dict
from dydis.data import Block, Source, open_source, write_dataset
from dydis.data.download import default_source
from dydis.data.preview import save_grid
from dydis.data.standard import DatasetFile
from dydis.errors import ConfigError, DataError
from dydis.progress import Progress, SilentProgress

STAGE = "prepare-data"
BLOCK_ROWS = 2048
PREVIEW_IMAGES = 64


def resolve_source(config: PrepareDataConfig) -> str | None:
    """``source``, or where `dydis download` puts the dataset when none is given. The config keeps
    ``source`` as given (the manifest's results record the file read), so that `dydis run` finds
    an unchanged stage up to date wherever the download folder is."""
    if config.source or config.dataset == "synthetic":
        return config.source
    path = default_source(config.dataset)
    if not path.exists():
        raise ConfigError(f"config key source: {config.dataset} is prepared from its original download, and none "
                          f"is at {path}: run `dydis download {config.dataset}` or pass --source PATH")
    return str(path)


def select_rows(n_rows: int, config: PrepareDataConfig, source_path) -> np.ndarray:
    """The rows to keep, increasing: all of them, or a seeded random subset."""
    if n_rows == 0:
        raise DataError("the dataset holds no images", source_path or config.dataset)
    if config.subset is None and config.fraction is None:
        return np.arange(n_rows, dtype=np.int64)
    count = config.subset if config.subset is not None else max(1, round(config.fraction * n_rows))
    if count > n_rows:
        raise DataError(f"--subset {count} is larger than the {n_rows} rows of the dataset", source_path or config.dataset)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n_rows, size=count, replace=False)).astype(np.int64)


def read_ahead(source: Source, rows: np.ndarray) -> Iterator[Block]:
    """Blocks of ``rows`` in order, reading the next block in a thread while this one is written.

    Decoding (CelebA's process pool, gzip chunks) then overlaps with writing data.h5.
    """
    starts = range(0, len(rows), BLOCK_ROWS)
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = None
        for start in starts:
            upcoming = reader.submit(source.read, rows[start: start + BLOCK_ROWS])
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def run(config: PrepareDataConfig, store: ArtifactStore, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    """Prepare one dataset; returns the published artifact."""
    progress = progress or SilentProgress()
    name = name or config.dataset
    source_file = resolve_source(config)
    with open_source(config.dataset, source_file, factor_sizes=config.factor_sizes, grid=config.grid,
                     crop=config.crop, workers=config.workers) as source:
        rows = select_rows(source.n_rows, config, source_file)
        started = time.perf_counter()
        with store.create(stage=STAGE, name=name, kind="dataset", config=to_dict(config), seed=config.seed) as writer:
            data_path = writer.dir / "data.h5"
            with progress.task(f"{config.dataset}: writing data.h5", total=len(rows), unit="img") as task:
                write_dataset(
                    data_path, read_ahead(source, rows), n_rows=len(rows), dataset=config.dataset,
                    factor_names=source.factor_names, factor_sizes=source.factor_sizes,
                    attribute_names=source.attribute_names,
                    compression=None if config.compression == "none" else config.compression,
                    on_rows=task.advance,
                )
            seconds = time.perf_counter() - started
            with DatasetFile(data_path) as data:
                writer.results.update(_describe(data, config.seed, writer.dir / "preview.png"))
            writer.results["source"] = str(source.path.resolve()) if source.path else None
            writer.results["source_rows"] = source.n_rows
            writer.results["seconds"] = round(seconds, 2)
            writer.results["images_per_second"] = round(len(rows) / max(seconds, 1e-9), 1)
    return writer.artifact


def _describe(data: DatasetFile, seed: int, preview_path) -> dict:
    """Dataset summary for the manifest, and the preview sheet with its rows' factor values."""
    rng = np.random.default_rng(seed)
    count = min(PREVIEW_IMAGES, len(data))
    preview_rows = np.sort(rng.choice(len(data), size=count, replace=False))
    save_grid(data.read_images(preview_rows), preview_path)
    preview = []
    for row in preview_rows:
        entry = {"row": int(row), "factors": dict(zip(data.factor_names, data.factors[row].tolist()))}
        if data.attributes is not None:
            entry["attributes"] = [n for n, v in zip(data.attribute_names, data.attributes[row]) if v > 0]
        preview.append(entry)
    return {
        "n_images": len(data),
        "factor_names": list(data.factor_names),
        "factor_sizes": list(data.factor_sizes),
        "attribute_names": list(data.attribute_names),
        "full_grid": data.is_full_grid,
        "preview": preview,
    }
