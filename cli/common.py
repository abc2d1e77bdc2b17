"""What every command shares: the stderr console, common options, errors, progress bars."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from datetime import timedelta
from typing import Annotated, Any, Callable, Iterator, Literal, Optional, get_args, get_type_hints

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from dydis.artifacts import ArtifactStore
from dydis.errors import ConfigError, DydisError, TrainingInterrupted
from dydis.progress import Progress as ProgressReporter

# Human output (progress, tables, warnings, errors) goes to stderr; stdout carries only the
# result, so that `DATA=$(dydis prepare-data ...)` captures exactly the artifact path.
console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of config values.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a config value: key.sub=value (repeatable).",
                                                     show_default=False)]
RootOpt = Annotated[Optional[Path], typer.Option("--root", help="Artifact store root [default: $DYDIS_ARTIFACTS or ./artifacts].",
                                                 show_default=False)]
NameOpt = Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Artifact name [default: the dataset name].",
                                                show_default=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also DYDIS_DEBUG=1).")]

# The commands that score representations of a dataset's rows (eval-metrics, downstream-gbt).
RepsDataOpt = Annotated[Optional[str], typer.Option("--data", metavar="ARTIFACT", help="Dataset artifact the representations belong to.",
                                                    show_default=False)]
RepsOpt = Annotated[Optional[list[Path]], typer.Option(
    "--reps", help="An .npz with `codes` (n_rows, n_codes) or (n_rows, N, D) in dataset row order; repeat for "
                   "several models/seeds (mean +- std).", show_default=False)]
ModelsOpt = Annotated[Optional[list[str]], typer.Option(
    "--model", metavar="ARTIFACT", help="An ldm artifact: its representation of every dataset row is computed (and stored); repeat "
                    "for several seeds (mean +- std).", show_default=False)]
GpusOpt = Annotated[Optional[int], typer.Option("--gpus", help="0 = CPU; >= 1 runs the models on the GPU [default: 0].",
                                                show_default=False)]
ReduceOpt = Annotated[Optional[Literal["pca", "scalar", "none"]], typer.Option(
    "--reduce", help="Vector units to scalars; pca is the paper's [default: pca].", show_default=False)]
NJobsOpt = Annotated[Optional[int], typer.Option("--n-jobs", help="Parallel fits; -1 = all cores [default: -1].", show_default=False)]

# The training commands' run folder, RUNS/<stage>/<name> (dydis.training.runs).
RunsOpt = Annotated[Path, typer.Option(help="Work directory for checkpoints and logs.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the checkpoint in the run folder (same config).")]
RestartOpt = Annotated[bool, typer.Option(help="Delete the run folder's checkpoint and logs and start over, once "
                                               "every check has passed.")]
TensorBoardOpt = Annotated[Optional[bool], typer.Option(
    "--tensorboard/--no-tensorboard", help="Also write the logged values and the final image sheet as TensorBoard "
                                           "events into RUNS/<stage>/NAME/tensorboard [default: on when the "
                                           "tensorboard package is installed].", show_default=False)]


def config_default(config_class: type, key: str) -> Any:
    """A config field's default, so that --help shows the value the command really uses."""
    return next(f.default for f in fields(config_class) if f.name == key)


def choices(config_class: type, key: str) -> Any:
    """The Literal type of a config field: --help lists its values and a bad one is refused as a
    usage error, while the config stays the one place that names them."""
    annotation = next(f.type for f in fields(config_class) if f.name == key)
    if isinstance(annotation, str):  # `from __future__ import annotations`
        annotation = get_type_hints(config_class)[key]
    values = [a for a in get_args(annotation) if a is not None and a is not type(None)]
    if len(values) == 1 and get_args(values[0]):  # Literal[...] | None
        values = list(get_args(values[0]))
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"{config_class.__name__}.{key} is not a Literal of strings: {annotation}")
    return Literal[tuple(values)]


def seed_option(config_class: type) -> Any:
    """--seed with the command's own default (42 for training, 0 elsewhere) in its help."""
    return Annotated[Optional[int], typer.Option(
        "--seed", metavar="N", help=f"Random seed [default: {config_default(config_class, 'seed')}].",
        show_default=False)]


_METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}


class ReadableCommand(typer.core.TyperCommand):
    """A command whose --help names values in words (``N``, ``PATH``, ``[paper|small|tiny]``)
    instead of typer's Python types (``<int>``, ``<list[Path]>``), for every option that names
    no metavar of its own."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if not hasattr(param, "type_descriptor"):  # click's own --help
                continue
            desc = param.type_descriptor
            label = "[" + "|".join(str(c) for c in desc.choices) + "]" if desc.is_choice else None
            if param.param_type_name == "argument":  # its NAME says what it is; show only a fixed set
                param.display_type_rich = lambda ctx, label=label: label
            elif param.metavar is None and not param.is_flag:
                element = get_args(desc.annotation)[0] if desc.is_list else desc.annotation
                param.metavar = label or _METAVARS.get(element, "VALUE")
        return params


def seed_list(text: str | None) -> tuple[int, ...] | None:
    """``--seeds 42,43,44`` -> (42, 43, 44), each seed once (each names its own artifacts or
    runs); one meaning for every command that takes several seeds. None when not given."""
    if not text:
        return None
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--seeds: expected integers like 42,43,44, found {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct seeds like 42,43,44, found {text!r}")
    return seeds


def show_logs() -> None:
    """The library's log records (resume, DyGA rounds, skipped steps) and Python warnings go to
    the stderr console, above the progress bars; once per process."""
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.captureWarnings(True)
    for name in ("dydis", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, RichHandler) for h in logger.handlers):
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("DYDIS_DEBUG", "") not in ("", "0")


def print_error(message: str) -> None:
    """The one ``error: ...`` line on stderr; the message is text, not markup (``'.[tensorboard]'``)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    print_error(message)
    raise typer.Exit(code)


def run_folder_help(stage: str) -> str:
    """The training commands' promises about their run folder, for their --help."""
    return (f"Run folder: RUNS/{stage}/NAME holds the checkpoint and logs, locked while a run uses it (a second "
            "run of the same folder stops at once). A folder that holds a checkpoint is never deleted implicitly: "
            "--resume continues it (same config; a longer --max-steps / --epochs trains a finished run on to "
            "that length), --restart deletes it and starts over, and with neither the command stops "
            "(exit 2). Ctrl-C saves a checkpoint and stops (exit 130); a NaN or infinite loss or weight stops and "
            "keeps the last finite checkpoint (exit 2). Exit codes: 0 done, 2 bad input or configuration, 1 "
            "internal failure, 130 interrupted.")


def handle_errors(command: Callable) -> Callable:
    """Turn user-fixable errors into one line and exit code 2, internal ones into exit code 1,
    an interrupted run (Ctrl-C) into exit code 130.

    The wrapped command must take a ``debug`` keyword; with it (or DYDIS_DEBUG=1) the
    traceback is shown instead.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = debug_enabled(kwargs.get("debug", False))
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (TrainingInterrupted, KeyboardInterrupt) as err:  # Ctrl-C: 130, as a shell reports it
            fail(str(err) or "interrupted", code=130)
        except DydisError as err:
            if debug:
                traceback.print_exc(file=sys.stderr)
            fail(str(err), code=2)
        except Exception as err:  # an internal failure: say so, and how to see the traceback
            if debug:
                traceback.print_exc(file=sys.stderr)
            else:
                console.print(f"[bold red]error:[/] internal failure: {err.__class__.__name__}: {escape(str(err))} "
                              "(run with --debug for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


def store_for(root: Path | None) -> ArtifactStore:
    return ArtifactStore(root)


def emit_result(path: Path) -> None:
    """The one line on stdout: the written artifact's path."""
    typer.echo(str(path))


class _RichTask:
    def __init__(self, progress: Progress, task_id, description: str, unit: str):
        self._progress, self._id, self._description, self._unit = progress, task_id, description, unit

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._id, amount)
        speed = next(t.speed for t in self._progress.tasks if t.id == self._id)
        if speed:  # rich's own speed column has no unit
            self._progress.update(self._id, rate=f"{speed:,.0f} {self._unit}/s")

    def update(self, **fields) -> None:
        self._progress.update(self._id, **fields)

    def log(self, values: dict[str, float]) -> None:
        self._progress.update(self._id, description=f"{self._description} {_values(values)}")


class RichProgress:
    """Progress bars with throughput and ETA on stderr (a `dydis.progress.Progress`)."""

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "it") -> Iterator[_RichTask]:
        columns = [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, transient=True) as progress:
            yield _RichTask(progress, progress.add_task(description, total=total, rate=""), description, unit)


# A training loop's log values as `key value` pairs: the epoch with 2 decimals, images/s with 1,
# every other value (the losses) with 4 significant digits, in both loops and both displays.
_FORMATS = {"epoch": ".2f", "images/s": ".1f"}


def _values(values: dict[str, float]) -> str:
    return " ".join(f"{key} {value:{_FORMATS.get(key, '.4g')}}" for key, value in values.items())


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _PlainTask:
    """Progress as lines a log file keeps: one at the first advance, one at the end, and in
    between one every 30 s or every 10 % of the total, whichever is rarer, unless a training
    loop's log step (`log`) printed one meanwhile. A task refused before its first advance
    prints nothing, so that bad input stays a one-line error. Rates count from the first
    advance, so that a resumed loop's catch-up (``advance(step)`` at once) is not taken for speed."""

    EVERY_SECONDS, EVERY_FRACTION = 30.0, 0.1

    def __init__(self, description: str, total: float | None, unit: str, clock: Callable[[], float]):
        self.description, self.total, self.unit, self._clock = description, total, unit, clock
        self.done, self._since = 0.0, None  # _since: (time, done) at the first advance
        self._started = self._last_time = clock()
        self._last_done = 0.0

    def _say(self, text: str) -> None:
        console.print(f"{self.description} {text}", highlight=False, soft_wrap=True, markup=False)

    def _count(self) -> str:
        return f"{self.done:g}/{self.total:g}" if self.total else f"{self.done:g}"

    def _rate(self) -> float | None:
        if self._since is None or self._clock() <= self._since[0]:
            return None
        return (self.done - self._since[1]) / (self._clock() - self._since[0])

    def _eta(self) -> str:
        rate = self._rate()
        return _clock((self.total - self.done) / rate) if rate and self.total else "?"

    def _speed(self) -> str:
        rate = self._rate()
        return f"{'?' if rate is None else f'{rate:.3g}'} {self.unit}/s eta {self._eta()}"

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        now = self._clock()
        if self._since is None:
            self._since = (now, self.done)
            self._say(f"start {self._count()} {self.unit}")
        if now - self._last_time < self.EVERY_SECONDS:
            return
        if self.total and self.done - self._last_done < self.EVERY_FRACTION * self.total:
            return
        self._last_time, self._last_done = now, self.done
        self._say(f"{self._count()} {self.unit} {self._speed()}")

    def update(self, **fields) -> None:
        self.description = fields.get("description", self.description)

    def log(self, values: dict[str, float]) -> None:
        self._last_time, self._last_done = self._clock(), self.done
        self._say(f"{self.unit} {self._count()} {_values(values)} eta {self._eta()}")

    def end(self, failed: bool) -> None:
        if self._since is None:
            return
        elapsed = _clock(self._clock() - self._started)
        self._say(f"{'stopped at' if failed else 'done'} {self._count()} {self.unit} in {elapsed}")


class PlainProgress:
    """Progress as plain lines on stderr, for a stderr that is a file (nohup, a cluster job,
    ``2> log``), where a transient bar would leave nothing (a `dydis.progress.Progress`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "it") -> Iterator[_PlainTask]:
        task = _PlainTask(description, total, unit, self._clock)
        try:
            yield task
        except BaseException:
            task.end(failed=True)
            raise
        task.end(failed=False)


def console_progress() -> ProgressReporter:
    """Bars on a terminal, plain lines when stderr goes to a file."""
    return RichProgress() if console.is_terminal else PlainProgress()
