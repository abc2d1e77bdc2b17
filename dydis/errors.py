"""Errors a user can fix.

Every one of them reaches the terminal as a single line, ``error: <file>: <what was
expected, what was found>``, and exit code 2; anything else is an internal failure
(exit code 1, traceback with ``--debug``).
"""

from __future__ import annotations

import os


class DydisError(Exception):
    """Base class of the errors that bad input or configuration causes."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(DydisError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(DydisError):
    """A dataset file is missing, truncated or not in the expected format."""


class ArtifactError(DydisError):
    """An artifact is missing, of the wrong kind or schema, or fails its hash check."""


class TrainingDiverged(DydisError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(DydisError):
    """Training was stopped by the user (Ctrl-C) after saving a checkpoint to resume from."""
