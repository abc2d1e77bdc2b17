"""Clusters of a mixture and their densities (paper eq. 5), as anchor selection reads them.

A Gaussian's *cluster* is the set of points whose responsibility for it exceeds ``phi``
(>= 0.5, so clusters are disjoint); its *density* is eq. (5), the mean L2 distance of the
cluster's points to the cluster's own mean. ``ComponentDensities`` keeps every point's
log-density under every slot between the rounds of anchor selection, so that a round
recomputes only the slots that changed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dydis.dyga.hddc import EXP_FLOOR, Mixture, Points, block_elements, density_terms, log_density


class ComponentDensities:
    """log N(x_i | mu_k, Sigma_k) of every point and slot, kept from one split round to the next.

    A round changes the parameters of the split components only (the first child takes its
    parent's slot, the second a free one); every other slot keeps its mean and covariance,
    and weights enter only when clusters are read (``members``). So a round recomputes the
    densities of the changed slots alone: with the official rule, which splits one cluster
    per round for about 24 rounds, that is 2 slots per round instead of up to 32.
    """

    def __init__(self, points: Points, n_slots: int):
        C, L, _ = points.x.shape
        self.points = points
        self.values = points.x.new_empty(C, n_slots, L)  # [U, K, n] unweighted log-densities
        self.stale = torch.ones(C, n_slots, dtype=torch.bool, device=points.x.device)

    def mark(self, changed: Tensor) -> None:
        """Slots [U, K] bool whose parameters changed."""
        self.stale[:, :changed.shape[1]] |= changed

    def members(self, mix: Mixture, phi: float) -> Tensor:
        """The cluster of every point under ``mix`` (its first slots, [U, K <= n_slots]): the
        component whose responsibility exceeds ``phi``, -1 for none. With ``phi >= 0.5`` at
        most one qualifies, so clusters are disjoint. Returns [U, n] long."""
        self._refresh(mix)
        x = self.points.x
        C, L, _ = x.shape
        K = mix.n_slots
        log_w = mix.weights.log().masked_fill(~mix.valid, float("-inf")).to(x.dtype).unsqueeze(-1)
        out = torch.empty(C, L, dtype=torch.long, device=x.device)
        block = max(1, block_elements(x.device) // max(1, C * K))
        for start in range(0, L, block):
            logp = self.values[:, :K, start:start + block] + log_w
            top, arg = logp.max(1)  # the top responsibility is 1 / sum_k exp(logp_k - top)
            total = logp.sub_(top.unsqueeze(1)).clamp_(min=EXP_FLOOR).exp_().sum(1)
            out[:, start:start + block] = torch.where(total.reciprocal_() > phi, arg, torch.full_like(arg, -1))
        return out

    def mean_log_likelihood(self, mix: Mixture) -> Tensor:
        """Mean log-likelihood per point of each unit under ``mix`` [U, K <= n_slots]: [U] float64."""
        self._refresh(mix)
        x = self.points.x
        C, L, _ = x.shape
        K = mix.n_slots
        log_w = mix.weights.log().masked_fill(~mix.valid, float("-inf")).to(x.dtype).unsqueeze(-1)
        total = torch.zeros(C, dtype=torch.float64, device=x.device)
        block = max(1, block_elements(x.device) // max(1, C * K))
        for start in range(0, L, block):
            total += torch.logsumexp(self.values[:, :K, start:start + block] + log_w, 1).double().sum(1)
        return total / L

    def _refresh(self, mix: Mixture) -> None:
        K = mix.n_slots
        todo = self.stale[:, :K] & mix.valid
        n_todo = int(todo.sum(1).max())  # sync: sizes the recomputation
        if n_todo:
            # the stale slots of each unit first; units with fewer recompute some fresh ones too
            slots = torch.argsort((~todo).to(torch.int8), dim=1, stable=True)[:, :n_todo]
            terms = density_terms(mix.select(slots), self.points.x.dtype, with_weights=False)
            C, L, _ = self.points.x.shape
            block = max(1, block_elements(self.points.x.device) // max(1, C * n_todo * (terms.width + 2)))
            for start in range(0, L, block):
                logp = log_density(self.points, terms, start, start + block)
                self.values[:, :, start:start + block].scatter_(1, slots.unsqueeze(-1).expand_as(logp), logp)
        self.stale[:, :K] = False


def cluster_density(x: Tensor, members: Tensor, n_slots: int) -> tuple[Tensor, Tensor]:
    """Eq. (5): mean L2 distance of a cluster's points to the cluster's own mean.

    Parameters
    ----------
    x : [U, n, D] points.
    members : [U, n] cluster of each point (-1: none).

    Returns
    -------
    densities [U, K] float64 (NaN for empty clusters) and sizes [U, K] long.
    """
    U, n, D = x.shape
    slot = (members + 1).clamp(min=0)  # bin 0 collects the points of no cluster
    sizes = torch.zeros(U, n_slots + 1, dtype=torch.float64, device=x.device)
    sizes.scatter_add_(1, slot, torch.ones_like(slot, dtype=torch.float64))
    bins = (slot + torch.arange(U, device=x.device).unsqueeze(1) * (n_slots + 1)).view(-1)  # [U * n]
    flat_x = x.reshape(U * n, D)
    # in pieces: temporaries the size of all points cost more in page faults than in
    # arithmetic (see hddc.block_elements)
    step = max(1, block_elements(x.device) // D)
    pieces = [slice(i, i + step) for i in range(0, U * n, step)]
    sums = torch.zeros(U * (n_slots + 1), D, dtype=torch.float64, device=x.device)
    for piece in pieces:
        sums.index_add_(0, bins[piece], flat_x[piece].double())
    centre = (sums / sizes.view(-1, 1).clamp(min=1)).to(x.dtype)
    dist = torch.cat([flat_x.new_zeros(0)] + [
        torch.linalg.vector_norm(flat_x[piece] - centre.index_select(0, bins[piece]), dim=-1) for piece in pieces])
    total = torch.zeros(U * (n_slots + 1), dtype=torch.float64, device=x.device).index_add_(0, bins, dist.double())
    total = total.view(U, n_slots + 1)
    density = (total / sizes)[:, 1:]  # 0/0 = NaN: an empty cluster is never "dense"
    return density, sizes[:, 1:].long()
