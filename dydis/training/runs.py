"""Run folders: where a training stage keeps its checkpoint and logs, ``<runs>/<stage>/<name>/``.

What a run folder guarantees:

- Its name is one safe path component (the artifact name rule of ``dydis.artifacts``), and the
  folder resolves inside ``<runs>/<stage>``: no ``--name`` reaches outside the runs folder.
- An existing run is never deleted implicitly. A folder that holds a checkpoint is continued
  (``resume``) or deleted and started over (``restart``); with neither, the stage stops and
  touches nothing, and ``resume`` without a checkpoint is an error too. ``restart`` deletes
  only when the stage calls ``start``, after all of its validations passed.
- ``resume`` continues the run it checkpointed: the config must be the same, except for the
  length (``LENGTH_KEYS``), which may change so that a finished run can be trained on, and for
  keys added since the checkpoint was made that hold their neutral value (``dydis.config.
  without_neutral``: the checkpoint did what they do). That
  gives the longer run exactly: everything random in a step is seeded by the step and the
  learning rate does not depend on the length (the loops refuse a length shorter than the
  checkpoint's step).
- One process at a time: the run holds an exclusive lock (``flock`` on ``.lock`` in the
  folder) from ``claim`` to the end, and a second run of the folder stops at once.

Importing this module does not import torch (``dydis run`` reads run folders before any stage).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from dydis.artifacts import _NAME  # a run is named after the artifact it publishes
from dydis.config import changed_keys, without_neutral
from dydis.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
LENGTH_KEYS = ("epochs", "max_steps")  # the training stages' length; the one change a resume accepts


def length_of(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config.get(key) for key in LENGTH_KEYS}


def at_least_as_long(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether the length ``new`` (``length_of``) trains at least as far as ``old``, judged
    without the dataset: both in steps, or both in epochs (max_steps, which wins, unset)."""
    if new["max_steps"] is not None and old["max_steps"] is not None:
        return new["max_steps"] >= old["max_steps"]
    if new["max_steps"] is None and old["max_steps"] is None:
        return new["epochs"] is not None and old["epochs"] is not None and new["epochs"] >= old["epochs"]
    return False


class RunFolder:
    """``<runs_dir>/<stage>/<name>``; the name is checked here, before anything is read or written."""

    def __init__(self, runs_dir: str | Path, stage: str, name: str):
        if not _NAME.fullmatch(name):
            raise ConfigError(f"--name {name!r}: expected one name of letters, digits and . _ + -, starting with a "
                              "letter or digit (it names the artifact and the run folder)")
        self.parent = Path(runs_dir) / stage
        self.path = self.parent / name
        self.checkpoint = self.path / CHECKPOINT
        self._claimed = False  # whether this process holds the folder (inside claim)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    @contextmanager
    def claim(self, *, resume: bool, restart: bool, config: dict[str, Any], owner: bool = True,
              neutral: Mapping[str, Any] | None = None) -> Iterator["RunFolder"]:
        """Hold the folder for one run: check the rules above and lock it until the ``with`` ends.

        ``config`` is the run's config as a plain dict; ``resume`` needs the checkpoint's to be
        the same but for the length and for the keys of ``neutral`` (``dydis.config.neutral_values``
        of the config's class) that hold their neutral value. Raises ``ConfigError`` (nothing touched) when the rules refuse the run.
        ``owner=False`` is a process that only uses a folder another one holds (torchrun's ranks
        other than 0): nothing is checked or locked, and ``start`` leaves the folder alone.
        """
        if resume and restart:
            raise ConfigError("--resume and --restart: give one of them (continue the run, or delete it and "
                              "start over)")
        if not owner:
            yield self
            return
        self._check_inside()
        descriptor = None
        try:
            if (self.path / LOCK).is_file():  # an earlier run's lock file: a running run is the first thing to say
                descriptor = self._lock(os.O_RDONLY)
            self._check(resume, restart)  # before creating anything, so that a refused run leaves no trace
            if descriptor is None:
                self.path.mkdir(parents=True, exist_ok=True)
                descriptor = self._lock(os.O_RDONLY | os.O_CREAT)
                self._check(resume, restart)  # again: another process may have made a checkpoint meanwhile
            if resume:
                self._check_config(config, dict(neutral or {}))
            self._claimed = True
            yield self
        finally:
            self._claimed = False
            if descriptor is not None:
                os.close(descriptor)  # releases the lock

    def start(self, *, resume: bool) -> None:
        """Make the claimed folder ready, once the stage's validations passed: a resumed run keeps
        it; otherwise everything in it but the lock goes (a ``restart``'s checkpoint and logs, or
        what a run that never reached a checkpoint left)."""
        if resume or not self._claimed:
            return
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _check_inside(self) -> None:
        """The folder, once links are followed, is a child of ``<runs>/<stage>`` (a link could lead anywhere)."""
        if self.path.resolve().parent != self.parent.resolve():
            raise ConfigError(f"the run folder leads to {self.path.resolve()}, outside {self.parent.resolve()}; "
                              "remove the link or pick another --name", self.path)

    def _check(self, resume: bool, restart: bool) -> None:
        if resume and not self.has_checkpoint():
            raise ConfigError("--resume: no checkpoint to continue in this run folder; drop --resume to start a "
                              "new run", self.path)
        if self.has_checkpoint() and not (resume or restart):
            raise ConfigError("this run folder holds a checkpoint: continue it with --resume, or delete it and "
                              "start over with --restart", self.path)

    def _check_config(self, config: dict[str, Any], neutral: dict[str, Any]) -> None:
        from dydis.training.checkpoint import load_checkpoint  # deferred: imports torch

        saved = load_checkpoint(self.checkpoint, mmap=True)["config"]
        changed = [key for key in changed_keys(without_neutral(saved, neutral), without_neutral(config, neutral))
                   if key not in LENGTH_KEYS]
        if changed:
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise ConfigError(f"--resume: this run was started with a different config ({shown}); resume with the "
                              f"same settings (only {' / '.join(LENGTH_KEYS)} may change, to train it to another "
                              "length), or start over with --restart", self.path)

    def _lock(self, flags: int) -> int:
        """An open descriptor of the lock file holding its exclusive lock, or a ``ConfigError``."""
        descriptor = os.open(self.path / LOCK, flags, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ConfigError("another process is using this run folder (a run of the same stage and --name); "
                              "wait for it to finish or pick another --name", self.path) from None
        return descriptor
