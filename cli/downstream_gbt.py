"""`dydis downstream-gbt`: representations + a dataset artifact -> a downstream artifact."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from dydis.cli.common import (ConfigOpt, DebugOpt, GpusOpt, ModelsOpt, NJobsOpt, NameOpt, ReduceOpt, RepsDataOpt,
                              RepsOpt, RootOpt, SetOpt, console, console_progress, emit_result, handle_errors, seed_list,
                              store_for)
from dydis.config import DownstreamGBTConfig, build_config


@handle_errors
def downstream_gbt(
    model: ModelsOpt = None,
    data: RepsDataOpt = None,
    reps: RepsOpt = None,
    reduce: ReduceOpt = None,
    seeds: Annotated[Optional[str], typer.Option(
        metavar="SEED,SEED,...", help="Evaluation seeds, each drawing every training and test set from its own "
                                      "RandomState, e.g. 0,1,2 [default: 0,1,2,3,4].", show_default=False)] = None,
    sizes: Annotated[Optional[str], typer.Option(
        metavar="N,N,...", help="Comma-separated training sizes; ratios are to the largest [default: 10000,1000,100].",
        show_default=False)] = None,
    test_size: Annotated[Optional[int], typer.Option(help="Test points drawn after each training set "
                                                          "[default: 5000].", show_default=False)] = None,
    n_jobs: NJobsOpt = None,
    gpus: GpusOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: NameOpt = None,
    debug: DebugOpt = False,
) -> None:
    """GBT sample efficiency (the paper's Table 5): Acc1000/Acc10000 and Acc100/Acc10000.

    One scikit-learn-default GradientBoostingClassifier per factor, on disentanglement_lib's
    sampling, with test rows never in the training set. Prints the downstream artifact path on
    stdout and a table on stderr. Example:

      dydis downstream-gbt --model train-ldm/shapes3d --model train-ldm/shapes3d-s43

      dydis downstream-gbt --data prepare-data/shapes3d --reps seed0.npz --reps seed1.npz
    """
    from dydis.stages import downstream_gbt as stage  # deferred: imports scikit-learn

    flags = dict(models=model, data=data, reps=[str(p) for p in reps] if reps else None, reduce=reduce,
                 seeds=seed_list(seeds), sizes=sizes, test_size=test_size, n_jobs=n_jobs, gpus=gpus)
    cfg = build_config(DownstreamGBTConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, progress=console_progress())
    report = json.loads(artifact.file("downstream.json").read_text())
    console.print(_table(report, title=f"{artifact.ref} ({len(report['models'])} representation"
                                       f"{'s' if len(report['models']) > 1 else ''}, mean ± std over "
                                       f"{report['spread']})"))
    emit_result(artifact.path)


def _table(report: dict, title: str) -> Table:
    """Rows: the mean over factors, then each factor; columns: each size's accuracy, then the ratios."""
    reference, summary = report["reference"], report["summary"]
    others = [n for n in report["sizes"] if n != reference]
    columns = [(f"Acc{n}", f"acc_{n}") for n in report["sizes"]]
    columns += [(f"Acc{n}/Acc{reference}", f"ratio_{n}") for n in others]
    table = Table(title=title)
    table.add_column("factor")
    for header, _key in columns:
        table.add_column(header, justify="right")
    rows = [("mean", "")] + [(name, f"_factor_{j}") for j, name in enumerate(report["factor_names"])]
    for label, suffix in rows:
        cells = [summary[key + suffix] for _header, key in columns]
        table.add_row(label, *[f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells])
    return table
