"""Anchor selection of many units in groups, one group per CPU thread.

On a CPU, torch spreads every operation of the batched EM over all intra-op threads, but
much of the work does not spread: operations below torch's grain size, serial ones
(``nonzero``, ``searchsorted``, ``multinomial``) and the Python between them. Units are
independent, so it pays more to fit groups of units concurrently, each group on its own
thread with single-threaded operations; torch releases the GIL inside its operations.
On 2 cores, 20 units x 100,000 points took 33 s in two groups against 38-45 s in one batch
on two threads (two separate processes of 10 units each: 32 s).

Every unit draws from its own random stream (``streams.py``), so how the units are grouped
changes only floating-point rounding, as the thread count or the BLAS build do (block and
piece sizes follow the batch). Small fits come out identical (tests), but anchor selection
has many thresholds (cluster membership at phi, split density at psi, Cattell's d_k), and
once one point changes cluster the random draws pick other points: on the 20 x 100,000
benchmark, 4 of 20 units ended with a different number of components in one batch than in
two groups. On a GPU the units stay in one batch: its kernels are wide enough already.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from dydis.dyga.anchors import EMSettings, SelectionReport, select_anchors
from dydis.dyga.hddc import EMResult, Mixture
from dydis.dyga.streams import UnitStreams


def default_n_jobs(device: torch.device) -> int:
    """Groups fitted at once when the caller does not say: torch's intra-op threads on a
    CPU, one batch elsewhere."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def select_anchors_in_groups(x: Tensor, settings: EMSettings, *, n_jobs: int, streams: UnitStreams,
                             init_means: Tensor | None = None, **options) -> tuple[Mixture, SelectionReport]:
    """``select_anchors`` on ``min(n_jobs, U)`` contiguous groups of the units of ``x`` [U, n, D],
    concurrently; returns the same as one call on all units (mixtures padded to the largest K)."""
    U = x.shape[0]
    n_groups = max(1, min(n_jobs, U))
    if n_groups == 1:
        return select_anchors(x, settings, init_means=init_means, streams=streams, **options)
    bounds = [U * g // n_groups for g in range(n_groups + 1)]
    saved = torch.get_num_threads()
    threads_each = max(1, saved // n_groups)

    def fit(lo: int, hi: int) -> tuple[Mixture, SelectionReport]:
        torch.set_num_threads(threads_each)  # this thread's OpenMP and MKL settings
        return select_anchors(x[lo:hi], settings, streams=streams.rows(range(lo, hi)),
                              init_means=None if init_means is None else init_means[lo:hi], **options)

    try:
        with ThreadPoolExecutor(n_groups, thread_name_prefix="dyga") as pool:
            parts = list(pool.map(fit, bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(saved)  # also the default that threads started later inherit
    return _concat_mixtures([mix for mix, _ in parts]), _concat_reports([report for _, report in parts])


def _concat_mixtures(parts: list[Mixture]) -> Mixture:
    n_slots = max(mix.n_slots for mix in parts)
    width = max(mix.width for mix in parts)
    parts = [mix.padded(n_slots).with_width(width) for mix in parts]
    return Mixture(*(torch.cat(fields) for fields in zip(*parts)))


def _concat_em(parts: list[EMResult]) -> EMResult:
    """Per-unit results side by side; a group that stopped early repeats its last history entry."""
    n_steps = max(len(part.history) for part in parts)
    history = [torch.cat([part.history[min(step, len(part.history) - 1)] for part in parts])
               for step in range(n_steps)]
    return EMResult(torch.cat([part.n_iter for part in parts]), torch.cat([part.converged for part in parts]),
                    history)


def _concat_reports(parts: list[SelectionReport]) -> SelectionReport:
    return SelectionReport(initial=_concat_em([part.initial for part in parts]),
                           final=_concat_em([part.final for part in parts]),
                           log_likelihood=torch.cat([part.log_likelihood for part in parts]),
                           n_rounds=max(part.n_rounds for part in parts),
                           n_splits=torch.cat([part.n_splits for part in parts]),
                           n_merged=torch.cat([part.n_merged for part in parts]),
                           n_filtered=torch.cat([part.n_filtered for part in parts]),
                           child_fits=[fit for part in parts for fit in part.child_fits])
