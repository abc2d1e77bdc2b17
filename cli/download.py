"""`dydis download`: a dataset's original file -> the download folder, where prepare-data finds it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from dydis.cli.common import DebugOpt, console, console_progress, emit_result, handle_errors
from dydis.data.download import DATA_ENV, DOWNLOADS, download as fetch

HELP = f"""Download a dataset's original file and verify it against the digest dydis records.

The file goes into DEST [default: ${DATA_ENV}, else ./downloads], where `dydis prepare-data --dataset NAME` finds it
when given no --source. An interrupted download is continued by the next run (NAME.part); the file takes its name only
once its digest matches, and one already there is verified and kept. celeba is not downloaded: its agreement is
accepted by hand, and the command says where to get its files and where to put them (exit 2). Prints the file's path
on stdout.

Examples:

  dydis download shapes3d && dydis prepare-data --dataset shapes3d

  export {DATA_ENV}=/data; dydis download cars3d && dydis prepare-data --dataset cars3d
"""

Name = Literal[(*DOWNLOADS, "celeba")]


@handle_errors
def download(
    name: Annotated[Name, typer.Argument(metavar="NAME", help="The dataset.", show_default=False)],
    dest: Annotated[Optional[Path], typer.Option(help=f"Download folder [default: ${DATA_ENV} or ./downloads].",
                                                 show_default=False)] = None,
    debug: DebugOpt = False,
) -> None:
    fetched = fetch(name, dest, progress=console_progress())
    state = "downloaded and verified" if fetched.downloaded else "already there and verified, nothing downloaded"
    console.print(f"[green]{name}[/]: {fetched.path} {state}", highlight=False, soft_wrap=True)
    emit_result(fetched.path)


download.__doc__ = HELP
