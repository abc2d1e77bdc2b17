"""`dydis prepare-data`: a dataset's original download -> the standard dataset artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dydis.cli.common import (ConfigOpt, DebugOpt, NameOpt, RootOpt, SetOpt, choices, console, console_progress,
                              emit_result, handle_errors, seed_option, store_for)
from dydis.config import PrepareDataConfig, build_config
from dydis.data import DATASETS
from dydis.stages import prepare_data as stage

HELP = f"""Read a dataset's original download and write the standard dataset artifact (data.h5 + preview.png).

Datasets: {', '.join(DATASETS)}. Prints the artifact path on stdout.

Examples:

  dydis prepare-data --dataset synthetic --grid 4,4,4,3,4,5

  dydis prepare-data --dataset shapes3d --source 3dshapes.h5 --subset 1000 --seed 0

  dydis download dsprites && dydis prepare-data --dataset dsprites

  DATA=$(dydis prepare-data --dataset mpi3d-toy --source mpi3d_toy.npz)
"""

Dataset = choices(PrepareDataConfig, "dataset")
Crop = choices(PrepareDataConfig, "crop")
Compression = choices(PrepareDataConfig, "compression")


@handle_errors
def prepare_data(
    dataset: Annotated[Optional[Dataset], typer.Option(help="The dataset [default: synthetic].",
                                                   show_default=False)] = None,
    source: Annotated[Optional[Path], typer.Option(
        help="The original download (file or folder) [default: where `dydis download` puts it, in $DYDIS_DATA or "
             "./downloads].", show_default=False)] = None,
    subset: Annotated[Optional[int], typer.Option(help="Keep N seeded random rows.", show_default=False)] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Keep this fraction of the rows.", show_default=False)] = None,
    factor_sizes: Annotated[Optional[str], typer.Option(metavar="N,N,...",
        help="Reduced factor grid for mpi3d-*/cars3d files in the real format, e.g. 2,2,2,3,3,4,4.",
        show_default=False)] = None,
    grid: Annotated[Optional[str], typer.Option(metavar="N,N,...", help="Synthetic: factor sizes to render, e.g. 4,4,4,3,4,5.",
                                                show_default=False)] = None,
    crop: Annotated[Optional[Crop], typer.Option(
        help="CelebA crop: Diff-AE's box or a central 148 crop [default: diffae].", show_default=False)] = None,
    compression: Annotated[Optional[Compression], typer.Option(
        help="data.h5 image compression [default: none].",
                                                       show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="CelebA decoding processes [default: all cores].",
                                                   show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: NameOpt = None,
    seed: seed_option(PrepareDataConfig) = None,
    debug: DebugOpt = False,
) -> None:
    flags = dict(dataset=dataset, source=str(source) if source else None, subset=subset, fraction=fraction,
                 factor_sizes=factor_sizes, grid=grid, crop=crop, compression=compression, workers=workers, seed=seed)
    cfg = build_config(PrepareDataConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, progress=console_progress())
    results = artifact.results
    console.print(f"[green]wrote[/] {artifact.ref}: {results['n_images']:,} images, factors "
                  f"{dict(zip(results['factor_names'], results['factor_sizes']))} "
                  f"({results['images_per_second']:,.0f} img/s)", highlight=False)
    emit_result(artifact.path)


prepare_data.__doc__ = HELP
