"""Anchor selection (paper section 3.2.1, Algorithm 2), batched over latent units.

1. Initialise ``n_init`` Gaussians at random points with equal weights and isotropic
   covariances (``init_scale``: I as the authors' code, or matched to the data) and fit
   them by EM.
2. Split. From one E-step, each Gaussian's *cluster* is the set of points whose
   responsibility exceeds ``phi``; its *density* is eq. (5), the mean distance of the
   cluster's points to the cluster's mean. Gaussians with density > ``psi``, and others at
   random with probability ``random_split`` (to escape poor EM optima), are split: the two
   children start at two points of the cluster (``child_init``: a uniform random pair as
   the authors' code, or k-means++-spread) and are fitted by EM on the cluster's points
   alone. All clusters chosen in a round, in every unit, are split together: each
   cluster is one segment of a single batched EM whose points are that cluster's points.
   The children are written back by slot number -- the first replaces its parent, the
   second takes the next free slot -- so nothing shifts while a round is in flight (the
   authors' loop removes entries from the list it is indexing). Rounds repeat until no
   cluster is chosen or ``max_components`` is reached.
3. Filter: Gaussians whose soft count (sum of responsibilities) is below
   ``min_cluster_size`` are removed (at least one Gaussian per unit is kept).
4. Final EM on all points. The anchors are the means.
5. ``merge="valley"`` only (``modes.py``; paper mode's default): every Gaussian whose
   cluster is two modes along its principal axis is split as in step 2, and neighbouring
   Gaussians that are one mode and not denser than psi together are merged. No EM follows.

Two split rules:

* ``paper`` -- every chosen cluster of a round is split (densest first when fewer slots are
  left than candidates); the two children share the parent's weight in proportion to their
  EM weights. A Gaussian is split at random at most once: with ``merge="valley"`` a random
  split is a trial, kept only when its children are two modes (``modes.py``), and the
  children of a kept split are new Gaussians that may be drawn in turn; with
  ``merge="none"`` the children of a random split are not drawn again. Rounds go on while
  a dense cluster or an undrawn Gaussian is left.
* ``official`` -- the released code's schedule (youngjun-jun/dis-dis, ``DyGA.fit`` and
  ``split_large_density_clusters``): a round with no cluster denser than ``psi`` splits only
  its first candidate and does not count it, so random splits repeat until
  ``max_components``; rounds with dense clusters split all candidates and count them, and
  splitting stops after 3 counted splits. The children get half their EM weights and all
  weights are renormalised. Unlike the released code, the cap is never exceeded,
  bookkeeping is by slot, and the splits of a round come from one E-step rather than from
  densities re-computed after every split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from einops import repeat
from torch import Tensor
from torch.profiler import record_function

from dydis.dyga.clusters import ComponentDensities, cluster_density
from dydis.dyga.hddc import (RESP_EPS, EMResult, Mixture, Points, block_elements, e_step, fit_em, isotropic,
                             squared_distances)
from dydis.dyga.modes import merge_modes, two_mode_clusters, two_modes, valley_counts
from dydis.dyga.streams import UnitStreams

#: Counted splits after which the released code stops splitting (its ``max_split_iter``).
OFFICIAL_MAX_COUNTED_SPLITS = 3
#: Consecutive rounds without a split after which a unit stops splitting. The released loop
#: (official rule) would spin forever when every drawn cluster is too small to split; with
#: the paper rule and a tiny ``random_split``, the untried Gaussians could take as long to
#: be drawn.
MAX_IDLE_ROUNDS = 100


@dataclass(frozen=True)
class EMSettings:
    """Settings shared by every EM run of one anchor selection."""

    model: str = "hddc"
    max_iter: int = 30
    tol: float = 1e-4
    reg: float = 1e-6
    dim_threshold: float = 0.2
    n_dims: int | None = None
    resp_eps: float = RESP_EPS
    init_scale: str = "identity"

    def run(self, points: Points, mix: Mixture) -> tuple[Mixture, EMResult]:
        return fit_em(points, mix, model=self.model, max_iter=self.max_iter, tol=self.tol, reg=self.reg,
                      dim_threshold=self.dim_threshold, n_dims=self.n_dims, resp_eps=self.resp_eps)

    def start(self, points: Points, means: Tensor) -> Mixture:
        """Valid components at ``means`` [G, K, D] with equal weights and isotropic covariances.

        ``init_scale="identity"``: covariance I, as the released code. ``"data"``: variance
        = mean squared distance of the segment's points to their nearest starting mean, per
        dimension, so the first E-step already separates the components; with I in the
        [-1, 0]-scaled space every point is claimed almost equally by all of them.
        """
        G, K, D = means.shape
        full = self.model == "full"
        if self.init_scale == "identity":
            variance = torch.ones(G, dtype=torch.float64, device=means.device)
        else:
            variance = nearest_mean_variance(points, means).clamp(min=self.reg)
        mix = isotropic(G, K, D, 1.0, full=full, dtype=means.dtype, device=means.device, n_dims=self.n_dims or 1)
        var = variance.to(means.dtype)[:, None]
        return mix._replace(
            means=means, weights=torch.full_like(mix.weights, 1.0 / K), valid=torch.ones_like(mix.valid),
            basis=mix.basis / var.sqrt()[..., None, None] if full else mix.basis,
            scales=mix.scales if full else mix.scales * var[..., None],
            noise=mix.noise if full else mix.noise * var,
            log_det=(D * variance.log()).to(means.dtype)[:, None].expand(G, K).clone())


def nearest_mean_variance(points: Points, means: Tensor) -> Tensor:
    """Per segment: mean over its points of min_k ||x - mu_k||^2, divided by D. [G] float64."""
    C, L, D = points.x.shape
    mu = points.per_chunk(means)  # [C, K, D]
    block = max(1, block_elements(points.x.device) // max(1, C * mu.shape[1]))
    near = torch.cat([squared_distances(points, mu, i, i + block).amin(1) for i in range(0, L, block)], 1)  # [C, L]
    count = torch.full((C,), float(L), dtype=torch.float64, device=near.device)
    if points.mask is not None:
        near = near * points.mask
        count = points.mask.sum(1).double()
    return points.per_segment(near.sum(1)) / points.per_segment(count).clamp(min=1) / D


@dataclass
class SelectionReport:
    """Diagnostics of one anchor selection (tensors are per unit, [U])."""

    initial: EMResult
    final: EMResult
    log_likelihood: Tensor  # [U] mean log-likelihood per point of the returned mixtures
    n_rounds: int = 0
    n_splits: Tensor | None = None
    n_merged: Tensor | None = None
    n_filtered: Tensor | None = None
    child_fits: list[EMResult] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Step 2: the choice of splits (clusters and their densities: ``clusters.py``)


def choose_splits(density: Tensor, sizes: Tensor, valid: Tensor, *, psi: float, random_split: float,
                  max_components: int, rule: str, counted: Tensor, draw: Tensor,
                  tried: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Which components to split this round, and which units go on splitting afterwards.

    A cluster needs two points to be split (the children start at two of them). ``draw``
    [U, K] holds the round's uniform draws: a Gaussian is a random candidate when its draw
    is below ``random_split`` and, with the paper rule, it has not been ``tried`` [U, K]
    (default: none) at random before. ``counted`` [U] (official rule) is updated in place.

    Returns
    -------
    chosen : [U, K] bool.
    going_on : [U] bool. ``paper``: a cluster was chosen, or an untried one is left to draw
        (Algorithm 2's loop ends when F is empty), and there is room. ``official``: some
        Gaussian was drawn at all, even one whose cluster is too small to split -- the
        released loop skips those and draws again next round -- and fewer than 3 splits
        were counted.
    """
    splittable = valid & (sizes >= 2)
    dense = splittable & (density > psi)
    untried = splittable if tried is None or rule == "official" else splittable & ~tried
    candidate = dense | (untried & (draw < random_split))
    room = (max_components - valid.sum(1)).clamp(min=0)  # [U]
    if rule == "official":
        room = torch.where(counted < OFFICIAL_MAX_COUNTED_SPLITS, room, torch.zeros_like(room))
    # rank the candidates: dense ones first (densest first), then the random ones in draw order
    key = torch.where(dense, 2.0 + density.nan_to_num(0.0), draw).masked_fill(~candidate, float("-inf"))
    rank = torch.argsort(torch.argsort(key, dim=1, descending=True, stable=True), dim=1)
    chosen = candidate & (rank < room.unsqueeze(1))
    room_left = valid.sum(1) + chosen.sum(1) < max_components
    if rule == "official":
        drawn = valid & ((density > psi) | (draw < random_split))
        any_dense = (valid & (density > psi)).any(1)
        first = candidate & (torch.cumsum(candidate.long(), 1) == 1)  # the lowest-slot candidate
        chosen = torch.where(any_dense.unsqueeze(1), chosen, first & (room > 0).unsqueeze(1))
        counted += torch.where(any_dense, chosen.sum(1), torch.zeros_like(counted))
        room_left = valid.sum(1) + chosen.sum(1) < max_components
        going_on = drawn.any(1) & (counted < OFFICIAL_MAX_COUNTED_SPLITS) & room_left
        return chosen, going_on
    left_to_draw = (untried & ~chosen).any(1) & (random_split > 0)
    return chosen, (chosen.any(1) | left_to_draw) & room_left


# ----------------------------------------------------------------------------------------------
# Step 2: fitting the children of every chosen cluster at once


@dataclass
class SplitBatch:
    """The chosen clusters of one round as segments of one EM."""

    points: Points  # chunks of cluster points, owner = segment
    unit: Tensor  # [G] unit of each segment
    parent: Tensor  # [G] slot of the split component in its unit
    first_two: Tensor  # [G, 2, D] the two starting points


def split_batch(x: Tensor, members: Tensor, sizes: Tensor, chosen: Tensor, streams: UnitStreams,
                child_init: str = "random") -> SplitBatch:
    """Gather the points of every chosen cluster into chunks, one segment per cluster.

    Points are grouped by cluster, each cluster's points keeping their order in ``x`` (so
    chunks keep ``along_first_direction``'s locality). The first child starts at a
    uniformly random point of the cluster; the second at another uniformly random point
    (``child_init="random"``, a uniform pair as in the released code) or at a point drawn
    with probability proportional to its squared distance from the first (``"spread"``,
    k-means++ seeding, Arthur & Vassilvitskii 2007), which keeps both children from
    starting in one mode. ``streams`` has one row per unit; each cluster draws from its unit's.
    """
    U, n, D = x.shape
    order = torch.argsort(members, dim=1, stable=True)  # points of no cluster first, then cluster 0, 1, ...
    first = (members < 0).sum(1, keepdim=True) + torch.cumsum(sizes, 1) - sizes  # [U, K]
    unit, parent = chosen.nonzero(as_tuple=True)  # segments, in (unit, slot) order
    seg_size = sizes[unit, parent]
    seg_first = first[unit, parent]
    # chunk length ~ an eighth of the mean cluster size: padding (under one chunk per cluster)
    # then costs about 6% of the child EMs' work instead of about 30% with half-size chunks;
    # at least 512, so that small fits do not pay per-chunk work for tiny chunks
    mean_size = int(seg_size.sum()) // max(1, len(unit))  # sync: sizes the chunks
    length = 1 << max(9, min(14, (max(1, mean_size // 8) - 1).bit_length()))
    n_chunks = (seg_size + length - 1) // length
    owner = torch.repeat_interleave(torch.arange(len(unit), device=x.device), n_chunks)
    chunk_first = torch.cumsum(n_chunks, 0) - n_chunks
    pos = (torch.arange(len(owner), device=x.device) - chunk_first[owner]).unsqueeze(1) * length \
        + torch.arange(length, device=x.device)  # [C, length] position within the segment
    mask = pos < seg_size[owner].unsqueeze(1)
    sorted_pos = (seg_first[owner].unsqueeze(1) + pos).clamp(max=n - 1)
    flat_order = (order + torch.arange(U, device=x.device).unsqueeze(1) * n).view(-1)  # rows of x.view(U * n, D)
    rows = flat_order[unit[owner].unsqueeze(1) * n + sorted_pos]  # [C, length]
    flat_x = x.reshape(U * n, D)
    chunk_x = flat_x.index_select(0, rows.view(-1)).view(*rows.shape, D).masked_fill_(~mask.unsqueeze(-1), 0.0)
    # a uniform pair of distinct positions in the cluster (sizes >= 2: see choose_splits)
    segment_streams = streams.rows(unit)
    u = segment_streams.rand(2).to(x.device)
    one = (u[:, 0] * seg_size).long().clamp(max=seg_size - 1)
    other = (u[:, 1] * (seg_size - 1)).long().clamp(max=seg_size - 2)
    pair = torch.stack([one, other + (other >= one).long()], 1)
    first_two = flat_x[flat_order[(unit * n + seg_first).unsqueeze(1) + pair]]
    points = Points.of(chunk_x, owner=owner, mask=mask)
    if child_init == "spread":
        first_two[:, 1] = _far_point(points, first_two[:, 0], segment_streams)
    return SplitBatch(points, unit, parent, first_two)


def _far_point(points: Points, first: Tensor, streams: UnitStreams) -> Tensor:
    """Per segment, a point drawn with probability proportional to its squared distance to
    ``first`` [G, D] (Gumbel-max over the segment's chunks; ``streams`` by segment). Returns [G, D]."""
    C, L, D = points.x.shape
    G = first.shape[0]
    owner, mask = points.owner, points.mask
    # ||x - f||^2 through the lifted float64 points: no temporary the size of the points
    dist = squared_distances(points, first[owner].unsqueeze(1)).squeeze(1)  # [C, L]
    u = streams.rows(owner).rand(L).to(dist.device)
    key = dist.clamp(min=1e-300).log() - torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    key = key.masked_fill(~mask, float("-inf")).flatten()
    seg = owner.repeat_interleave(L)
    best = torch.full((G,), float("-inf"), dtype=key.dtype, device=key.device).scatter_reduce(0, seg, key, "amax")
    position = torch.arange(C * L, device=key.device)
    hit = torch.where(key == best[seg], position, torch.full_like(position, C * L))
    pick = torch.full((G,), C * L, dtype=torch.long, device=key.device).scatter_reduce(0, seg, hit, "amin")
    return points.x.reshape(C * L, D)[pick.clamp(max=C * L - 1)]


def second_slots(mix: Mixture, batch: SplitBatch) -> Tensor:
    """The free slot [G] that each segment's second child takes: a unit's free slots in
    the order of its segments (segments come in unit order)."""
    unit = batch.unit
    rank = torch.arange(len(unit), device=unit.device) - torch.searchsorted(unit, unit)
    return mix.valid.sum(1)[unit] + rank


def merge_children(mix: Mixture, children: Mixture, batch: SplitBatch, *, child_weights: str) -> Mixture:
    """Write the children back: the first replaces its parent, the second takes a free slot.

    ``mix`` must have room (``max_components`` slots). Children share their parent's weight
    in proportion to their EM weights (``child_weights="parent"``) or, as in the released
    code, get half their EM weights before every weight of the unit is renormalised
    (``"half"``).
    """
    U, K, D = mix.means.shape
    width = max(mix.width, children.width)
    mix, children = mix.with_width(width), children.with_width(width)
    unit, parent = batch.unit, batch.parent
    second = second_slots(mix, batch)
    if child_weights == "parent":
        w = children.weights * mix.weights[unit, parent].unsqueeze(1)
    else:
        w = children.weights * 0.5
    children = children._replace(weights=w)
    target = torch.stack([unit * K + parent, unit * K + second], 1).flatten()  # [2G]
    merged = Mixture(*(dst.flatten(0, 1).index_copy(0, target, src.flatten(0, 1)).view_as(dst)
                       for dst, src in zip(mix, children)))
    if child_weights != "parent":
        total = (merged.weights * merged.valid).sum(1, keepdim=True)
        merged = merged._replace(weights=merged.weights / total.clamp(min=1e-30))
    return merged


# ----------------------------------------------------------------------------------------------
# Step 3: filtering


def drop_small(points: Points, mix: Mixture, min_size: float) -> tuple[Mixture, Tensor]:
    """Remove Gaussians whose soft count is below ``min_size``; keep at least the largest one.

    Returns the compacted mixture (valid slots first, weights renormalised) and the number
    removed per unit.
    """
    resp, _ = e_step(points, mix)
    nk = resp.sum(-1).double()
    del resp
    keep = mix.valid & (nk >= min_size)
    largest = torch.nn.functional.one_hot(nk.masked_fill(~mix.valid, -1).argmax(1), mix.n_slots).bool()
    keep |= largest & ~keep.any(1, keepdim=True)
    return compacted(mix._replace(valid=keep)), (mix.valid & ~keep).sum(1)


def compacted(mix: Mixture) -> Mixture:
    """The valid slots first (in their order), weights renormalised over them, trailing
    invalid slots dropped."""
    order = torch.argsort((~mix.valid).to(torch.int8), dim=1, stable=True)
    kept = mix.select(order)
    w = kept.weights * kept.valid
    return kept._replace(weights=w / w.sum(1, keepdim=True).clamp(min=1e-30)).trimmed()


# ----------------------------------------------------------------------------------------------
# Algorithm 2


def along_first_direction(x: Tensor, n_iter: int = 30) -> Tensor:
    """Each unit's points [U, n, D] sorted by their projection on the unit's first principal
    direction (power iteration on the covariance).

    Latent units lie near curves, so neighbours in this order are mostly neighbours in
    space: the points a component explains come in a few stretches, and the M-step's
    gathers (``hddc.scatter_matrices``) read memory mostly in order. On the final EM's
    state of the 20 x 100,000 benchmark that made the scatter about 20% faster (405 ms
    against 512 ms on one thread). A constant unit keeps its order.
    """
    centred = x - x.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred  # [U, D, D]
    v = torch.ones(*x.shape[::2], 1, dtype=x.dtype, device=x.device)  # [U, D, 1]
    for _ in range(n_iter):
        v = cov @ v
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp(min=1e-30)
    order = (x @ v).squeeze(-1).argsort(dim=1, stable=True)
    return x.gather(1, order.unsqueeze(-1).expand_as(x))


def select_anchors(x: Tensor, settings: EMSettings, *, n_init: int = 8, max_components: int = 32,
                   phi: float = 0.5, psi: float = 0.5, random_split: float = 0.5, min_cluster_size: float = 10,
                   split_rule: str = "paper", child_weights: str = "parent", child_init: str = "random",
                   merge: str = "none", init_means: Tensor | None = None,
                   streams: UnitStreams | None = None) -> tuple[Mixture, SelectionReport]:
    """Algorithm 2 for every unit of ``x`` [U, n, D] at once; returns the mixtures [U, K] and a report.

    The initial Gaussians sit at ``n_init`` random points of each unit (one per point when
    a unit has fewer), or at ``init_means`` [U, K0, D] when given. Each unit's points are
    first sorted along the data (``along_first_direction``), for speed only: the algorithm
    is the same for any order, its random draws just pick other points. Every unit draws
    from its own stream of ``streams`` (default: seed 0), so its anchors do not depend on
    the units fitted beside it, up to floating-point rounding.

    With the paper rule each Gaussian is split at random at most once (it is *tried*): with
    ``merge="valley"`` a random split is kept only when its children are two modes
    (``modes.py``), and the children of a kept split are new Gaussians, tried in turn; with
    ``merge="none"`` every random split is kept and its children are not drawn again, which
    bounds the random splits to one per Gaussian of the initial EM or of a dense split.
    ``merge="valley"`` also settles the mixture after the final EM (``_settle``): Gaussians
    whose clusters are two modes are split and neighbouring ones that are one mode merged.
    """
    U, n, D = x.shape
    streams = streams if streams is not None else UnitStreams.seeded(0, U, x.device)
    x = along_first_direction(x)
    points = Points.of(x)
    if init_means is None:
        k0 = max(1, min(n_init, max_components, n))
        start = streams.multinomial(torch.ones(U, n, device=x.device), k0)
        init_means = x.gather(1, repeat(start, "u k -> u k d", d=D))
    mix = settings.start(points, init_means.to(x.dtype))
    with record_function("dyga.initial_em"):  # phase labels for torch.profiler (bench/dyga.py --profile)
        mix, initial = settings.run(points, mix)
    mix = mix.padded(max_components)
    counted = torch.zeros(U, dtype=torch.long, device=x.device)
    n_splits = torch.zeros(U, dtype=torch.long, device=x.device)
    splitting = torch.ones(U, dtype=torch.bool, device=x.device)
    idle = torch.zeros(U, dtype=torch.long, device=x.device)  # consecutive rounds without a split
    tried = torch.zeros(U, max_components, dtype=torch.bool, device=x.device)  # split at random before
    trials = merge == "valley" and split_rule == "paper"
    child_fits = []
    rounds = 0
    densities = ComponentDensities(points, max_components)
    while bool(splitting.any()):  # sync once per round
        current = mix.trimmed()
        with record_function("dyga.clusters"):
            members = densities.members(current, phi)  # the clusters of one E-step of ``current``
            density, sizes = cluster_density(x, members, current.n_slots)
        pad = mix.n_slots - current.n_slots
        density = torch.nn.functional.pad(density, (0, pad), value=float("nan"))
        sizes = torch.nn.functional.pad(sizes, (0, pad))
        # only units still splitting draw: a unit's stream must not depend on how long others go on
        live = splitting.nonzero().squeeze(1)
        draw = torch.ones(U, mix.n_slots, dtype=torch.float64, device=x.device)
        draw[live] = streams.rows(live).rand(mix.n_slots).to(x.device)
        chosen, going_on = choose_splits(density, sizes, mix.valid, psi=psi, random_split=random_split,
                                         max_components=max_components, rule=split_rule, counted=counted,
                                         draw=draw, tried=tried)
        chosen &= splitting.unsqueeze(1)
        at_random = chosen & ~(density > psi)
        # a round that drew only unsplittable clusters (official rule) is idle for its unit
        idle = torch.where(chosen.any(1), torch.zeros_like(idle), idle + splitting.long())
        splitting &= going_on & (idle < MAX_IDLE_ROUNDS)
        if not bool(chosen.any()):
            continue
        with record_function("dyga.split_batch"):
            batch = split_batch(x, members, sizes, chosen, streams, child_init)
        with record_function("dyga.child_em"):
            children = settings.start(batch.points, batch.first_two)
            children, fit = settings.run(batch.points, children)
        child_fits.append(fit)
        tried |= at_random
        if trials:  # a random split stays only when its children are two modes
            with record_function("dyga.trials"):
                batch, children = _keep_two_modes(x, members, batch, children, at_random)
            chosen = torch.zeros_like(chosen)
            chosen[batch.unit, batch.parent] = True
        merged = merge_children(mix, children, batch, child_weights=child_weights)
        second = second_slots(mix, batch)
        densities.mark(chosen | (merged.valid & ~mix.valid))  # the parents' slots and the new ones
        # children are new Gaussians, drawn in turn -- except random ones that no trial checked
        child_tried = at_random[batch.unit, batch.parent] & (not trials)
        tried[batch.unit, batch.parent] = child_tried
        tried[batch.unit, second] = child_tried
        mix = merged
        n_splits += chosen.sum(1)
        rounds += 1
    del densities  # as large as the responsibilities: freed before the final EM allocates its own
    with record_function("dyga.filter"):
        mix, n_filtered = drop_small(points, mix.trimmed(), min_cluster_size)
    with record_function("dyga.final_em"):
        mix, final = settings.run(points, mix)
    log_likelihood = final.history[-1]
    n_merged = torch.zeros(U, dtype=torch.long, device=x.device)
    if merge == "valley":
        with record_function("dyga.settle"):
            mix, n_settled, n_merged, log_likelihood = _settle(
                x, points, mix, settings, streams, phi=phi, psi=psi, max_components=max_components,
                child_init=child_init, child_weights=child_weights)
        n_splits += n_settled
    return mix, SelectionReport(initial=initial, final=final, log_likelihood=log_likelihood, n_rounds=rounds,
                                n_splits=n_splits, n_merged=n_merged, n_filtered=n_filtered, child_fits=child_fits)


def _settle(x: Tensor, points: Points, mix: Mixture, settings: EMSettings, streams: UnitStreams, *, phi: float,
            psi: float, max_components: int, child_init: str,
            child_weights: str) -> tuple[Mixture, Tensor, Tensor, Tensor]:
    """After the final EM (``merge="valley"``): split every Gaussian whose cluster is two
    modes along its principal axis, then merge neighbouring pairs that are one mode
    (``modes.py``). No EM follows: on a curved attribute EM gains likelihood from a second
    Gaussian and takes it from a neighbour, which then spans two attributes; the final EM
    does exactly that now and then, and this step undoes it.

    Returns the compacted mixtures, splits and merges per unit [U], and the mean
    log-likelihood per point of the result [U].
    """
    U = x.shape[0]
    mix = mix.padded(max_components)
    densities = ComponentDensities(points, max_components)
    n_splits = torch.zeros(U, dtype=torch.long, device=x.device)
    refused = torch.zeros(U, max_components, dtype=torch.bool, device=x.device)  # children were one mode
    for _ in range(max_components):  # each round splits or refuses a slot for good
        current = mix.trimmed()
        pad = mix.n_slots - current.n_slots
        members = densities.members(current, phi)
        _, sizes = cluster_density(x, members, current.n_slots)
        sizes = torch.nn.functional.pad(sizes, (0, pad))
        split = torch.nn.functional.pad(two_mode_clusters(x, members, current), (0, pad))
        split &= (sizes >= 2) & ~refused
        split &= torch.cumsum(split.long(), 1) <= (max_components - mix.valid.sum(1)).unsqueeze(1)  # the cap
        if not bool(split.any()):  # sync once per round
            break
        batch = split_batch(x, members, sizes, split, streams, child_init)
        children, _ = settings.run(batch.points, settings.start(batch.points, batch.first_two))
        batch, children = _keep_two_modes(x, members, batch, children, split)
        kept = torch.zeros_like(split)
        kept[batch.unit, batch.parent] = True
        refused |= split & ~kept
        merged = merge_children(mix, children, batch, child_weights=child_weights)
        born = merged.valid & ~mix.valid
        densities.mark(kept | born)
        refused &= ~(kept | born)
        mix = merged
        n_splits += kept.sum(1)
    mix, n_merged = merge_modes(x, mix.trimmed(), densities, phi=phi, psi=psi, model=settings.model, reg=settings.reg,
                                dim_threshold=settings.dim_threshold, n_dims=settings.n_dims)
    log_likelihood = densities.mean_log_likelihood(mix)
    return compacted(mix), n_splits, n_merged, log_likelihood


def _keep_two_modes(x: Tensor, members: Tensor, batch: SplitBatch, children: Mixture,
                    at_random: Tensor) -> tuple[SplitBatch, Mixture]:
    """The split batch without the random splits whose children are one mode (``modes.py``).

    ``members`` [U, n] are the round's clusters (a segment's points are its parent's cluster)
    and ``at_random`` [U, K] the parents split at random; dense splits always stay.
    """
    U, K = at_random.shape
    D = x.shape[-1]
    first = x.new_zeros(U, K, D)
    second = x.new_zeros(U, K, D)
    first[batch.unit, batch.parent] = children.means[:, 0].to(x.dtype)
    second[batch.unit, batch.parent] = children.means[:, 1].to(x.dtype)
    tested = at_random.gather(1, members.clamp(min=0)) & (members >= 0)
    label = torch.where(tested, members, torch.full_like(members, -1))
    separate = two_modes(valley_counts(x, label, first, second, K))
    keep = (~at_random | separate)[batch.unit, batch.parent]
    if bool(keep.all()):
        return batch, children
    kept = keep.nonzero().squeeze(1)
    # only the slots are read from here on (merge_children): the points are not carried over
    return dataclasses.replace(batch, points=None, unit=batch.unit[kept], parent=batch.parent[kept],
                               first_two=batch.first_two[kept]), children.take(kept)
