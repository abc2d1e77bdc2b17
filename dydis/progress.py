"""How library code reports progress without printing.

Long-running library functions accept a ``Progress``; the CLI passes one that draws rich
progress bars on stderr, tests and library users get the silent default.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, amount: float = 1) -> None: ...

    def update(self, **fields) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "it") -> AbstractContextManager[Task]: ...


class _SilentTask:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class SilentProgress:
    """The default: reports nothing."""

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "it") -> Iterator[Task]:
        yield _SilentTask()
