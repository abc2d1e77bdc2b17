"""Devices and data-parallel training: one process per GPU (or per CPU worker with gloo).

``launch`` starts the worker processes on one machine. Under ``torchrun`` (several nodes) it
starts none: torchrun already started one process per GPU and named its rank in the
environment, e.g. ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500
--no-python dydis train-ldm --gpus 8 ...`` on each node.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dydis.errors import ConfigError, DydisError


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


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A maker of the training steps' autocast context: bf16 when asked, or by default ("auto")
    on a GPU; a no-op otherwise (fp32, or the CPU under "auto")."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def publishes_results() -> bool:
    """Whether this process writes the stage's artifact: always, except the ranks > 0 that
    torchrun started (the spawned workers of ``launch`` never return to the stage)."""
    return not under_torchrun() or int(os.environ.get("RANK", "0")) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(rank: int, world_size: int, backend: str) -> Context:
    """Join the process group (when there is more than one process) and pick this rank's device."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", rank))  # torchrun numbers the processes of each node
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Context(rank, world_size, device)


def _worker(rank: int, world_size: int, backend: str, fn: Callable, args: tuple, errors) -> None:
    """One spawned process. A user-fixable error goes back to the parent through ``errors``.

    After a clean run it leaves with ``os._exit(0)``: gloo's C++ threads can outlive
    interpreter shutdown and abort a finished worker (SIGABRT, "terminate called without an
    active exception"), which would fail a run whose work is already saved.
    """
    if backend == "gloo":  # CPU workers share the cores: more threads than cores spin-wait on each other
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    ctx = init(rank, world_size, backend)
    code = 0
    try:
        fn(ctx, *args)
    except DydisError as err:
        errors.put((type(err), err.message, err.path))
        code = 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def _children_handle_ctrl_c() -> Iterator[None]:
    """While workers run, Ctrl-C is theirs to handle (they checkpoint and stop); the parent waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def launch(fn: Callable, world_size: int, backend: str, *args) -> None:
    """Run ``fn(ctx, *args)`` in ``world_size`` processes (or in this one when it is 1).

    A ``DydisError`` raised in a worker is raised again here, so the user sees the same one-line
    error as in a single-process run.
    """
    if under_torchrun():  # started by torchrun: this process is one rank of its world
        ctx = init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), backend)
        try:
            fn(ctx, *args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return
    if world_size == 1:
        fn(init(0, 1, backend), *args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        with _children_handle_ctrl_c():
            mp.spawn(_worker, args=(world_size, backend, fn, args, errors), nprocs=world_size, join=True)
    except mp.ProcessExitedException:
        if errors.empty():
            raise
        kind, message, path = errors.get()
        raise kind(message, path) from None


def all_reduce_mean(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value
