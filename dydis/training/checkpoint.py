"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file and renamed over the previous one, so a crash
while saving leaves the last good checkpoint in place. It carries everything needed to
continue bit-for-bit: weights, optimiser states, the step, and the states of the random
generators the loop owns; the config is stored as a plain dict, so the file holds tensors and
plain values only and loads with ``weights_only=True`` (``dydis.torchfile``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dydis.torchfile import load_torch_file, require_keys


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

