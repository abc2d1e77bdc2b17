"""Devices and data-parallel training: one process per GPU (or per CPU worker with gloo).

``launch`` starts the worker processes on one machine; under ``torchrun`` (multi-node) the
environment already names each process's rank and ``init`` reads it from there.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dydis.errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(gpus: int) -> torch.device:
    """``gpus=0`` is the CPU; otherwise CUDA, with an error if it is not there."""
    if gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--gpus {gpus} asks for CUDA, but torch sees no GPU here (use --gpus 0 for the CPU)")
    if gpus > torch.cuda.device_count():
        raise ConfigError(f"--gpus {gpus} asks for more GPUs than the {torch.cuda.device_count()} available")
    return torch.device("cuda", 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(rank: int, world_size: int, backend: str) -> Context:
    """Join the process group (when there is more than one process) and pick this rank's device."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Context(rank, world_size, device)


def _worker(rank: int, world_size: int, backend: str, fn: Callable, args: tuple) -> None:
    ctx = init(rank, world_size, backend)
    try:
        fn(ctx, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable, world_size: int, backend: str, *args) -> None:
    """Run ``fn(ctx, *args)`` in ``world_size`` processes (or in this one when it is 1)."""
    if world_size == 1:
        fn(init(0, 1, backend), *args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(_worker, args=(world_size, backend, fn, args), nprocs=world_size, join=True)


def all_reduce_mean(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value
