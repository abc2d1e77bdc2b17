"""`dydis run`: every stage of a workflow.yaml in order, skipping those that are up to date."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from dydis.cli.common import (DebugOpt, RootOpt, RunsOpt, SetOpt, console, console_progress, emit_result, handle_errors,
                              seed_list)
from dydis.cli.report import summary_table
from dydis.data.download import DATA_ENV
from dydis.workflow import Outcome, Workflow, execute, find_workflow, load_workflow, sweep_points


@handle_errors
def run(
    workflow: Annotated[Optional[Path], typer.Argument(help="The workflow file [default: workflow.yaml here, else the "
                                                            "one installed with dydis].", show_default=False)] = None,
    profile: Annotated[Optional[str], typer.Option(metavar="PROFILE", help="Profile to merge over the file, e.g. smoke, cpu-study, "
                                                        "paper [default: the file's `profile`].",
                                                   show_default=False)] = None,
    set_: SetOpt = None,
    from_: Annotated[Optional[str], typer.Option("--from", metavar="STAGE", help="Start at this stage, re-running it and the rest; "
                                                                "earlier stages must be up to date.",
                                                 show_default=False)] = None,
    until: Annotated[Optional[str], typer.Option(metavar="STAGE", help="Stop after this stage.", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(metavar="SEED,SEED,...", help="Run the seeded stages once per seed, e.g. 42,43,44; later "
                                                      "stages evaluate them together (mean ± std).",
                                                 show_default=False)] = None,
    sweep: Annotated[Optional[list[str]], typer.Option(
        "--sweep", metavar="STAGE.KEY=V1,V2",
        help="Run once per value of a stage's config key, e.g. train-ldm.unet.skip_dropout=0,0.2; repeat for the "
             "grid of all --sweep options. The stages above the swept ones run once and are shared, the later ones "
             "run per point, named <name>-<key>-<value>, and the report compares the points.",
        show_default=False)] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", metavar="LABEL:STAGE.KEY=V,...",
        help="A named point of the sweep setting several keys, e.g. "
             "baseline:train-ldm.quantizer=none,train-ldm.unet.skip_dropout=0; repeat for each variant (the first is "
             "the report's baseline); with --sweep, each variant is run at every grid point. Named <name>-<label>.",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(help="Print each stage's plan (up to date, or would run with its resolved "
                                               "config) and run or write nothing.")] = False,
    root: RootOpt = None,
    runs: RunsOpt = Path("runs"),
    debug: DebugOpt = False,
) -> None:
    """Run the stages of a workflow in order, each fed the artifacts of earlier ones.

    A stage whose resolved config and inputs match an existing artifact is skipped ("up to
    date"); after a failure, running again resumes at the failed stage, and a training stage
    whose only change is a longer length trains its finished run on. --set takes
    `stage_id.key=value` for a stage's config and `key=value` for the file's vars. --sweep and
    --variant run the stages they change, and the stages after them, once per point. Prints
    the last stage's artifact path on stdout, the metrics and each stage's wall time on stderr.
    Examples:

      dydis run --profile smoke

      dydis run workflow.yaml --profile smoke

      dydis run workflow.yaml --profile paper --set dataset=cars3d --set data_dir=/data --seeds 42,43,44

      dydis run workflow.yaml --sweep train-ldm.quantizer=none,dyga --sweep train-ldm.unet.skip_dropout=0,0.2
    """
    from dydis.stages.workflow import STAGES  # deferred: imports torch

    # the download folder `dydis download` and prepare-data use, when the environment names one
    data_dir = {"data_dir": os.environ[DATA_ENV]} if os.environ.get(DATA_ENV) else {}
    plan = load_workflow(find_workflow(workflow), STAGES, profile=profile, overrides=set_, var_defaults=data_dir)
    points = sweep_points(plan, STAGES, sweeps=sweep, variants=variant)
    if dry_run:
        for outcome in execute(plan, STAGES, root=root, runs_dir=runs, seeds=seed_list(seeds) or (), points=points,
                               start=from_, until=until, dry_run=True):
            _print_plan(outcome)
        return
    outcomes = []
    for outcome in execute(plan, STAGES, root=root, runs_dir=runs, seeds=seed_list(seeds) or (), points=points,
                           start=from_, until=until, progress=console_progress()):
        if outcome.status == "up to date":
            console.print(f"{_label(outcome)}: up to date ({outcome.artifact.ref})", highlight=False)
        else:
            console.print(f"[green]{_label(outcome)}:[/] wrote {outcome.artifact.ref} in {outcome.seconds:.1f} s",
                          highlight=False)
        outcomes.append(outcome)
    reports = [outcome.artifact for outcome in outcomes if outcome.artifact.kind == "report"]
    metrics = _metrics_table(outcomes)
    if reports:  # the same scores, per variant and against the baseline
        console.print(summary_table(reports[-1].results, title=reports[-1].ref))
    elif metrics.row_count:
        console.print(metrics)
    console.print(_times_table(outcomes, plan))
    emit_result(outcomes[-1].artifact.path)


def _print_plan(outcome: Outcome) -> None:
    """One job of a dry run: up to date (its artifact), or would run (its resolved config as
    YAML, or the earlier stage it waits for)."""
    if outcome.status == "up to date":
        console.print(f"{_label(outcome)}: up to date ({outcome.artifact.ref})", highlight=False)
    elif outcome.after is not None:
        console.print(f"[yellow]{_label(outcome)}:[/] would run (after {outcome.after})", highlight=False)
    else:
        console.print(f"[yellow]{_label(outcome)}:[/] would run with", highlight=False)
        console.print(textwrap.indent(yaml.safe_dump(outcome.config, sort_keys=False), "  "), end="", markup=False,
                      highlight=False, soft_wrap=True)


def _metrics_table(outcomes: list[Outcome]) -> Table:
    """The headline numbers of the evaluation stages, mean ± std over the models they scored."""
    table = Table(title="metrics")
    for column in ("artifact", "metric", "mean ± std"):
        table.add_column(column, justify="right" if column == "mean ± std" else "left", overflow="fold")
    for outcome in outcomes:
        artifact = outcome.artifact
        if artifact.kind == "metrics":
            scores = artifact.results["metrics"]
        elif artifact.kind == "downstream":
            summary = json.loads(artifact.file("downstream.json").read_text())["summary"]
            scores = {key: summary[key] for key in artifact.results if key.startswith(("acc_", "ratio_"))}
        else:
            continue
        for metric, stats in scores.items():
            table.add_row(artifact.ref, metric, f"{stats['mean']:.3f} ± {stats['std']:.3f}")
    return table


def _times_table(outcomes: list[Outcome], plan: Workflow) -> Table:
    """Each job's artifact, whether it ran, and its wall time: where a run's time went."""
    table = Table(title=f"{plan.path}" + (f" (profile {plan.profile})" if plan.profile else ""))
    for column in ("stage", "artifact", "status", "wall time"):
        table.add_column(column, justify="right" if column == "wall time" else "left", overflow="fold")
    for outcome in outcomes:
        table.add_row(_label(outcome), outcome.artifact.ref, outcome.status, f"{outcome.seconds:.1f} s")
    table.add_row("total", "", "", f"{sum(o.seconds for o in outcomes):.1f} s")
    return table


def _label(outcome: Outcome) -> str:
    """The stage id, the sweep point of a job run per point and the seed of a seeded stage's job,
    as rich markup (the point's brackets escaped: they are text)."""
    point = "" if outcome.point is None else escape(f" [{outcome.point}]")
    seed = "" if outcome.seed is None else f" (seed {outcome.seed})"
    return f"{outcome.step}{point}{seed}"
