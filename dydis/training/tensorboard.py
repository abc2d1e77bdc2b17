"""TensorBoard event files of a training run, beside its CSV logs (the optional `tensorboard` extra).

The loops log through ``CsvLog``; given a ``TensorBoard``, a log writes every number of each
row there too, as the scalar ``<section>/<column>`` at the row's step: the event files hold the
CSV's values (``train/``: losses, lr, images/s, gradient norm, delta, the ``--eval-every``
scores; ``dyga/``: each round's anchor counts and timings) and nothing that could drift from
them. They go to ``<run folder>/tensorboard/`` (``tensorboard --logdir runs``), written by the
main process only. Writing draws no random number and never touches the model, so a run's
trajectory is the same with and without it.
"""

from __future__ import annotations

import importlib
import numbers
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from dydis.errors import ConfigError

FOLDER = "tensorboard"


def tensorboard_enabled(wanted: bool | None) -> bool:
    """Whether a run writes event files: ``wanted`` None means whenever the package is installed;
    True without it is a ``ConfigError`` saying how to install it."""
    if wanted is False:
        return False
    try:
        importlib.import_module("torch.utils.tensorboard")  # imports the tensorboard package (~2 s)
    except ImportError:
        if wanted:
            raise ConfigError("--tensorboard: the tensorboard package is not installed; pip install -e "
                              "'.[tensorboard]', or train with --no-tensorboard") from None
        return False
    return True


class TensorBoard:
    """The event files of one run; ``resumed_at``: the checkpoint's step a resumed run continues
    from, after which an earlier attempt's events are hidden, as ``CsvLog`` drops their rows."""

    def __init__(self, run_dir: Path, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # deferred: the optional package

        self._writer = SummaryWriter(str(run_dir / FOLDER), purge_step=resumed_at + 1 if resumed_at else None)

    def scalars(self, section: str, row: dict[str, Any]) -> None:
        """Every number of a log row at its ``step``; text (the anchors per unit) and empty cells are left out."""
        step = int(row["step"])
        for column, value in row.items():
            if column != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(f"{section}/{column}", value, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A sheet the stage already drew (samples.png, reconstructions.png), at the run's last step."""
        self._writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self._writer.close()


@contextmanager
def open_board(run_dir: Path, enabled: bool, resumed_at: int = 0) -> Iterator[TensorBoard | None]:
    """A ``TensorBoard`` closed (its events flushed) however the block ends, or None when off."""
    if not enabled:
        yield None
        return
    board = TensorBoard(run_dir, resumed_at)
    try:
        yield board
    finally:
        board.close()
