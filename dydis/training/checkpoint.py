"""Atomic, resumable checkpoints, and how the training loops use them.

A checkpoint is written to a temporary file and renamed over the previous one, so a crash
while saving leaves the last good checkpoint in place. It carries everything needed to
continue bit-for-bit: weights, optimiser states, the step, and the states of the random
generators the loop owns; the config is stored as a plain dict, so the file holds tensors and
plain values only and loads with ``weights_only=True`` (``dydis.torchfile``).

A loop saves through a ``Checkpoint``, which refuses to save a state with a NaN or infinite
value (a diverged run keeps its last good checkpoint) and words the errors that stop a run:
divergence and Ctrl-C (``stop_requests``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dydis.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from dydis.torchfile import load_torch_file, require_keys

ELAPSED = "elapsed_seconds"  # the training wall time a checkpoint's state took, over all sessions


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's state (``mmap``: tensors mapped, not read); a missing, unreadable or refused
    file is a one-line ``DataError``."""
    return require_keys(load_torch_file(path, "checkpoint", mmap=mmap), ("step", "config"), "checkpoint", path)


def cpu_state(module_or_optimizer) -> dict[str, Any]:
    """A state dict with every tensor on the CPU, so checkpoints load on any device."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().clone()
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(module_or_optimizer.state_dict())


def _float_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _float_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _float_tensors(item)


def count_non_finite(state: Any) -> tuple[int, int]:
    """(tensors holding a NaN or an infinity, floating-point tensors) in a nested state; one host sync."""
    tensors = list(_float_tensors(state))
    if not tensors:
        return 0, 0
    return int(torch.stack([~torch.isfinite(t).all() for t in tensors]).sum()), len(tensors)


class Checkpoint:
    """A run's checkpoint file as its training loop sees it.

    Every process calls ``save`` (only the one that ``writes`` writes the file), so all of them
    stop together when the state is not finite; ``step`` is the step of the state the file
    holds, as far as this run knows (None: no checkpoint, a fresh run), which the errors
    report.

    Each file also records ``ELAPSED``: the wall-clock seconds of training that led to its state,
    summed over every resumed session (work done after the last checkpoint of an interrupted
    session is redone, and counted, once). None when a resumed checkpoint did not record it.
    """

    def __init__(self, path: Path, *, writes: bool, lr_key: str):
        self.path, self.writes, self.lr_key = path, writes, lr_key
        self.step: int | None = None
        self._started, self._before = time.perf_counter(), 0.0

    def load(self, steps: int) -> dict[str, Any]:
        """The state to resume a run of ``steps`` steps from; a checkpoint past them is a ``ConfigError``
        (a resume may lengthen a run, ``dydis.training.runs``, but not undo steps)."""
        state = load_checkpoint(self.path)
        self.step = int(state["step"])
        if self.step > steps:
            raise ConfigError(f"--resume: the checkpoint is at step {self.step}, past the {steps} steps this run "
                              f"trains; give a length of at least {self.step} steps, or start over with --restart",
                              self.path)
        self._started, self._before = time.perf_counter(), state.get(ELAPSED)
        return state

    def save(self, step: int, parts: dict[str, Any], **values: Any) -> None:
        """Save the state dicts of ``parts`` (modules, optimisers) and plain ``values`` at ``step``;
        a part with a non-finite tensor stops the run instead, keeping the previous checkpoint."""
        bad = {name: count_non_finite(part.state_dict()) for name, part in parts.items()}
        bad = {name: counts for name, counts in bad.items() if counts[0]}
        if bad:
            found = ", ".join(f"{name} {n} of {total} tensors" for name, (n, total) in bad.items())
            raise self.diverged(f"the state became non-finite by step {step} ({found})")
        if self.writes:
            elapsed = None if self._before is None else self._before + time.perf_counter() - self._started
            save_checkpoint(self.path, {**{name: cpu_state(part) for name, part in parts.items()}, **values,
                                        "step": step, ELAPSED: elapsed})
        self.step = step

    def diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a run whose loss or state went NaN or infinite: what is kept, and
        what works (resume refuses a changed config, so a lower rate means starting over)."""
        kept = f"the checkpoint of step {self.step} is kept" if self.step is not None else "no checkpoint was saved"
        return TrainingDiverged(f"{what}; {kept}; lower {self.lr_key} and start over with --restart",
                                self.path if self.step is not None else self.path.parent)

    def interrupted(self, step: int, steps: int) -> TrainingInterrupted:
        return TrainingInterrupted(f"stopped at step {step} of {steps}; continue with --resume", self.path)


@contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks the loop to stop after the current step (a second Ctrl-C stops at once);
    yields the question "was it asked?". Outside the main thread no handler can be set: never."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def on_interrupt(signum, frame):
        requested.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
