"""How library code reports progress without printing.

Long-running library functions accept a ``Progress``; the CLI passes one that draws rich
progress bars on stderr (plain lines when stderr is a file), tests and library users get the
silent default.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, amount: float = 1) -> None: ...

    def update(self, **fields) -> None: ...

    def log(self, values: dict[str, float]) -> None:
        """A training loop's log step: the values of its CSV row worth reading while it runs
        (epoch, loss, images/s); a bar shows them, a log file gets them as one line."""


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "it") -> AbstractContextManager[Task]: ...


class _SilentTask:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, **fields) -> None:
        pass

    def log(self, values: dict[str, float]) -> None:
        pass


class SilentProgress:
    """The default: reports nothing."""

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "it") -> Iterator[Task]:
        yield _SilentTask()
