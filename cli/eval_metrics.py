"""`dydis eval-metrics`: representations + a dataset artifact -> a metrics artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from dydis.cli.common import (ConfigOpt, DebugOpt, GpusOpt, ModelsOpt, NJobsOpt, NameOpt, ReduceOpt, RepsDataOpt,
                              RepsOpt, RootOpt, SetOpt, console, console_progress, emit_result, handle_errors, seed_option,
                              store_for)
from dydis.config import EvalMetricsConfig, build_config


@handle_errors
def eval_metrics(
    model: ModelsOpt = None,
    data: RepsDataOpt = None,
    reps: RepsOpt = None,
    metrics: Annotated[Optional[str], typer.Option(
        metavar="METRIC,METRIC,...", help="Comma-separated: factor_vae,dci,mig,sap,modularity,infomec,tad,fid,conditioning [default: all "
             "that apply; fid with --model when the Inception weights are here; conditioning with --model on "
             "its training data].",
        show_default=False)] = None,
    reduce: ReduceOpt = None,
    n_jobs: NJobsOpt = None,
    gpus: GpusOpt = None,
    fid_weights: Annotated[Optional[Path], typer.Option(help="FID Inception weights pt_inception-2015-12-05-6726825d.pth "
                                                             "[default: the torch hub cache].", show_default=False)] = None,
    fid_samples: Annotated[Optional[int], typer.Option(help="Generated images for FID [default: 50000].",
                                                       show_default=False)] = None,
    fid_cache: Annotated[Optional[bool], typer.Option(
        "--fid-cache/--no-fid-cache", help="Reuse the real images' FID statistics from an earlier evaluation "
                                           "(<root>/.cache/fid) [default: on].", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: NameOpt = None,
    seed: seed_option(EvalMetricsConfig) = None,
    debug: DebugOpt = False,
) -> None:
    """Compute FactorVAE, DCI, MIG, SAP, Modularity/Explicitness, InfoMEC (and TAD on CelebA).

    Definitions and defaults follow disentanglement_lib (DESIGN section 7). Prints the
    metrics artifact path on stdout and a table on stderr. Example:

      dydis eval-metrics --model train-ldm/shapes3d --model train-ldm/shapes3d-s43

      dydis eval-metrics --data prepare-data/shapes3d --reps seed0.npz --reps seed1.npz
    """
    from dydis.stages import eval_metrics as stage  # deferred: imports scikit-learn

    flags = dict(models=model, data=data, reps=[str(p) for p in reps] if reps else None, metrics=metrics,
                 reduce=reduce, n_jobs=n_jobs, gpus=gpus, fid_samples=fid_samples,
                 fid_cache=fid_cache, fid_weights=str(fid_weights) if fid_weights else None, seed=seed)
    cfg = build_config(EvalMetricsConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, progress=console_progress())
    summary = artifact.results["metrics"]
    runs = artifact.results["runs"]
    table = Table(title=f"{artifact.ref} ({runs} representation{'s' if runs > 1 else ''})")
    table.add_column("metric")
    table.add_column("mean ± std" if runs > 1 else "value", justify="right")
    for metric, stats in summary.items():
        value = f"{stats['mean']:.3f} ± {stats['std']:.3f}" if runs > 1 else f"{stats['mean']:.4g}"
        table.add_row(metric, value)
    console.print(table)
    emit_result(artifact.path)
