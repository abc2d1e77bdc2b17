"""`dydis report`: eval-metrics / downstream-gbt artifacts of several variants -> a report artifact."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from dydis.cli.common import (ConfigOpt, DebugOpt, RootOpt, SetOpt, console, emit_result, handle_errors, seed_option,
                              store_for)
from dydis.config import ReportConfig, build_config


@handle_errors
def report(
    metrics: Annotated[Optional[list[str]], typer.Option(
        "--metrics", metavar="REF", help="An eval-metrics artifact (path, stage/name or stage/name@vN); a glob in the name takes "
                          "every match, e.g. 'eval-metrics/study-*'. Repeatable.", show_default=False)] = None,
    downstream: Annotated[Optional[list[str]], typer.Option(
        "--downstream", metavar="REF", help="A downstream-gbt artifact, or a glob of them, as --metrics. Repeatable.",
        show_default=False)] = None,
    baseline: Annotated[Optional[str], typer.Option(metavar="VARIANT", help="The variant the others are compared with [default: the "
                                                         "first one read].", show_default=False)] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="Bootstrap resamples per interval [default: 10000].",
                                                     show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", help="Artifact name [default: what the inputs' names share].",
                                                show_default=False)] = None,
    seed: seed_option(ReportConfig) = None,
    debug: DebugOpt = False,
) -> None:
    """Compare the variants of a sweep: mean ± std per variant, differences to the baseline.

    A variant is the models that differ only in their seed, labelled by the sweep point `dydis
    run --sweep/--variant` recorded (else the model's name without -s<seed>). Each variant is
    compared with the baseline: the mean difference with a 95% bootstrap interval, and a paired
    t-test over models of equal seed. The report artifact holds report.md, a self-contained
    report.html, report.csv (variant, seed, metric, value), the per-step disentanglement curves
    of the training logs and each variant's interchange and units figures found in the store.
    Prints the table on stderr and the artifact path on stdout. Examples:

      dydis report --metrics 'eval-metrics/study-*' --downstream 'downstream-gbt/study-*' --baseline baseline

      dydis report --metrics eval-metrics/shapes3d-baseline --metrics eval-metrics/shapes3d-dyga
    """
    from dydis.stages import report as stage  # deferred: imports torch, scipy and matplotlib

    flags = dict(metrics=metrics, downstream=downstream, baseline=baseline, bootstrap=bootstrap, seed=seed)
    cfg = build_config(ReportConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name)
    console.print(summary_table(artifact.results, title=artifact.ref))
    emit_result(artifact.path)


def summary_table(results: dict, title: str) -> Table:
    """Metrics down, variants across: mean ± std, and the difference to the baseline with its p-value."""
    variants, baseline = results["variants"], results["baseline"]
    differences = {(c["variant"], c["metric"]): c for c in results["comparisons"]}
    compared = f"; Δ = variant - {baseline}, p = paired t-test" if len(variants) > 1 else ""
    table = Table(title=f"{title}: mean ± std{compared}")
    table.add_column("metric")
    for variant in variants:
        table.add_column(variant, justify="right")
    metrics = list(dict.fromkeys(m for v in variants for m in results["summary"][v]))
    for metric in metrics:
        cells = []
        for variant in variants:
            stats = results["summary"][variant].get(metric)
            cell = "" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"
            found = differences.get((variant, metric))
            if found is not None:
                cell += f"\nΔ {found['difference']:+.3f}" + ("" if found["p_value"] is None else
                                                             f", p={found['p_value']:.2g}")
            cells.append(cell)
        table.add_row(metric, *cells)
    return table
