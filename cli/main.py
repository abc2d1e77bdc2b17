"""The `dydis` command: one subcommand per pipeline stage, plus `run` and `artifacts`."""

from __future__ import annotations

import importlib
import sys

import typer

from dydis import __version__
from dydis.cli import artifacts
from dydis.cli.common import ReadableCommand, print_error, run_folder_help, show_logs
from dydis.cli.download import download
from dydis.cli.downstream_gbt import downstream_gbt
from dydis.cli.eval_metrics import eval_metrics
from dydis.cli.prepare_data import prepare_data
from dydis.cli.report import report
from dydis.cli.run import run
from dydis.cli.train_ldm import train_ldm
from dydis.cli.train_vqgan import train_vqgan
from dydis.cli.visualize import visualize

app = typer.Typer(
    name="dydis",
    help="Disentangled representation learning with latent diffusion, Dynamic Gaussian Anchoring and "
         "Skip Dropout. `dydis download NAME` fetches a dataset's original file; each stage then writes a versioned "
         "artifact and prints its path on stdout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the dydis version.")) -> None:
    """Disentangled representation learning with latent diffusion (DyGA + Skip Dropout)."""
    show_logs()


app.command("download", cls=ReadableCommand)(download)
app.command("prepare-data", cls=ReadableCommand)(prepare_data)
app.command("train-vqgan", epilog=run_folder_help("train-vqgan"), cls=ReadableCommand)(train_vqgan)
app.command("train-ldm", epilog=run_folder_help("train-ldm"), cls=ReadableCommand)(train_ldm)
app.command("eval-metrics", cls=ReadableCommand)(eval_metrics)
app.command("downstream-gbt", cls=ReadableCommand)(downstream_gbt)
app.command("visualize", cls=ReadableCommand)(visualize)
app.command("report", cls=ReadableCommand)(report)
app.command("run", cls=ReadableCommand)(run)

app.add_typer(artifacts.app, name="artifacts")


# typer raises click's exceptions, and recent typer releases vendor click: reach its exception
# module through a public typer class instead of a module name that depends on the release.
_click = importlib.import_module(typer.BadParameter.__module__)


def main() -> None:
    """Run the app. A usage error (unknown option, missing value, bad choice) is one ``error:``
    line and exit code 2, like every other bad input, instead of click's usage block."""
    try:
        code = app(prog_name="dydis", standalone_mode=False)
    except _click.UsageError as err:
        if isinstance(err, getattr(_click, "NoArgsIsHelpError", ())):
            err.show()  # a bare `dydis`: the help text
        else:
            message = " ".join(err.format_message().split()).rstrip(".")
            command = err.ctx.command_path if err.ctx is not None else "dydis"
            print_error(f"{message[:1].lower()}{message[1:]} (see '{command} --help')")
        sys.exit(err.exit_code)
    except _click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # an int is a typer.Exit code; commands return None
