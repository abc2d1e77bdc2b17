"""A training log as CSV that survives resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dydis.training.tensorboard import TensorBoard


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a log CSV as dicts of strings; no file means no rows (a run that never logged)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class CsvLog:
    """Training log rows in a CSV; on resume, drops rows logged after the checkpoint.

    A row is appended as one line; the file is rewritten only when a row brings a new column
    (the GAN terms appear at ``disc_start``, ``restarted_codes`` at the first restart). With a
    ``board``, each row's numbers go to TensorBoard too, under ``section``.
    """

    def __init__(self, path: Path, keep_until: int, board: TensorBoard | None = None, section: str = "train"):
        rows = [r for r in read_rows(path) if int(r["step"]) <= keep_until] if keep_until > 0 else []
        self.path, self.rows = path, rows
        self.board, self.section = board, section
        self.fields = list(dict.fromkeys(k for r in rows for k in r))
        self._rewrite()

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if set(row) <= set(self.fields):
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.fields).writerow(row)
        else:
            self.fields += [k for k in row if k not in self.fields]
            self._rewrite()
        if self.board is not None:
            self.board.scalars(self.section, row)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as handle:
            if self.fields:
                writer = csv.DictWriter(handle, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(self.rows)
