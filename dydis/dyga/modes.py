"""When two Gaussians are one attribute: the valley test, and merging (our addition to Algorithm 2).

Algorithm 2 adds Gaussians (a split when a cluster is denser than psi, and arbitrary splits
"to escape sub-optimal points while covering a large number of attributes", paper section
3.2.1) and removes only tiny ones; nothing joins the ``n_init`` starting Gaussians that land
on one attribute, or undoes an arbitrary split that cut one attribute in two. The anchor
count then follows the random draws, not the data. Paper mode's ``merge="valley"`` (the
default; ``"none"`` is Algorithm 2 alone) adds one test and uses it twice:

* **The valley test.** Two Gaussians are two *modes* of the data when the points of their
  clusters, projected on the line through the two means, thin out somewhere between the
  means. The projections t = (x - mu_a).(mu_b - mu_a) / |mu_b - mu_a|^2 in [0, 1) fall into
  ``VALLEY_BINS`` equal bins; the pair is two modes when some bin holds less than
  ``VALLEY_RATIO`` of the emptier of the fullest bins on either side of it, by more than two
  Poisson standard deviations of that count (so that a few points cannot fake a valley).
  Well-separated attributes leave the bins between them nearly empty, even when one of the
  Gaussians still spans two attributes and its mean sits in a valley itself; two Gaussians
  that share one attribute (a Gaussian blob, or a stretch of a curve, cut in two) see no
  dip. Two equal Gaussian attributes pass as two modes from about 3.5 standard deviations
  apart.
* **Arbitrary splits are trials** (``anchors.select_anchors``): a split made at random is
  kept only when its two children are two modes; otherwise the parent stays and is not
  drawn again. Splits of clusters denser than psi are always kept, as in the paper.
* **Merging** (``merge_modes``), after the final EM: neighbouring Gaussians that are one
  mode, and whose joint cluster is no denser than psi (so that the density rule would not
  split the merged Gaussian again), are merged by moment matching. No EM follows: on a
  curved attribute EM gains likelihood from two Gaussians, and started from the merged
  one it takes the second back from a neighbour, which then spans two attributes. A
  continuous attribute stays covered by several anchors when it is longer than psi allows
  one cluster to be, as the paper intends; a discrete attribute gets one.

Everything here is batched over units and component slots. A split round's trials read the
points of the clusters split at random once; merging costs one E-step (the clusters, kept in
a ``ComponentDensities``) and per round a pass over the points of the pairs it tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dydis.dyga.clusters import ComponentDensities, cluster_density
from dydis.dyga.hddc import Mixture, block_elements, full_model, hddc_model

#: Bins of the projections between two means in the valley test.
VALLEY_BINS = 8
#: A bin between two fuller ones must hold less than this share of the emptier of them.
VALLEY_RATIO = 0.5
#: Half-width, in standard deviations, of the principal-axis histogram of ``two_mode_clusters``.
PRINCIPAL_SPAN = 2.5
#: Rounds of merging at most (each one pass over the points of the pairs it tests). Units
#: with k well-separated attributes need about 4-7.
MAX_MERGE_ROUNDS = 16


def valley_counts(x: Tensor, label: Tensor, start: Tensor, end: Tensor, n_slots: int) -> Tensor:
    """Histograms of the points of every labelled group along its line.

    Parameters
    ----------
    x : [U, n, D] points.
    label : [U, n] group (slot) of each point, -1 for none.
    start, end : [U, K, D] the two means of each group; bins cover t in [0, 1) from start to end.

    Returns
    -------
    [U, K, VALLEY_BINS] float64 counts (points beyond either mean are not counted).
    """
    U, n, D = x.shape
    B = VALLEY_BINS
    direction = (end - start).reshape(U * n_slots, D).to(x.dtype)
    offset = (start.reshape(U * n_slots, D).to(x.dtype) * direction).sum(-1)
    scale = direction.double().square().sum(-1).clamp(min=1e-300).reciprocal().to(x.dtype)
    group = (label + torch.arange(U, device=x.device).unsqueeze(1) * n_slots).view(-1)
    rows = (label >= 0).view(-1).nonzero().squeeze(1)  # sync: the labelled points only
    flat_x = x.reshape(U * n, D)
    counts = torch.zeros(U * n_slots * B, dtype=torch.float64, device=x.device)
    step = max(1, block_elements(x.device) // D)
    for first in range(0, len(rows), step):
        piece = rows[first:first + step]
        g = group[piece]
        t = ((flat_x[piece] * direction[g]).sum(-1) - offset[g]) * scale[g]
        inside = (t >= 0) & (t < 1)
        bins = g * B + (t * B).long().clamp(0, B - 1)
        counts.index_add_(0, bins[inside], torch.ones_like(t, dtype=torch.float64)[inside])
    return counts.view(U, n_slots, B)


def two_modes(counts: Tensor) -> Tensor:
    """The valley test on histograms [..., VALLEY_BINS]: [...] bool (module docstring)."""
    left = counts.cummax(-1).values[..., :-2]  # the fullest bin before each inner bin
    right = counts.flip(-1).cummax(-1).values.flip(-1)[..., 2:]  # ... and after it
    peak = torch.minimum(left, right)
    return (counts[..., 1:-1] + 2.0 * peak.sqrt() < VALLEY_RATIO * peak).any(-1)


def two_mode_clusters(x: Tensor, members: Tensor, mix: Mixture) -> Tensor:
    """[U, K] bool: the cluster of Gaussian k is two modes along its principal axis.

    The valley test on the cluster's points projected on the leading eigenvector of the
    Gaussian's covariance, over its mean +- ``PRINCIPAL_SPAN`` standard deviations: a
    Gaussian stretched over two attributes has its principal axis through both, and the
    bins between them empty.
    """
    U, K, D = mix.means.shape
    variances, vectors = torch.linalg.eigh(mix.covariances())  # ascending
    reach = (PRINCIPAL_SPAN * variances[..., -1].clamp(min=0).sqrt()).unsqueeze(-1) * vectors[..., -1]
    means = mix.means.double()
    counts = valley_counts(x, members, means - reach, means + reach, K)
    return two_modes(counts) & mix.valid


def gabriel_neighbours(means: Tensor, valid: Tensor) -> Tensor:
    """[U, K, K] bool: means j and l are neighbours in the Gabriel graph of each unit's valid
    means, no other mean k lying in the ball with diameter mu_j mu_l, i.e. with an obtuse
    angle at k: (mu_k - mu_j).(mu_k - mu_l) < 0. On means strung along a curve these are
    the consecutive pairs, so merging tests a pair only across no other Gaussian."""
    K = means.shape[1]
    gram = means @ means.transpose(1, 2)  # [U, K, K]
    sq = gram.diagonal(dim1=1, dim2=2)
    # obtuse[u, k, j, l] = |mu_k|^2 - mu_k.mu_j - mu_k.mu_l + mu_j.mu_l < 0
    obtuse = (sq[:, :, None, None] - gram[:, :, :, None] - gram[:, :, None, :] + gram[:, None, :, :]) < 0
    other = ~torch.eye(K, dtype=torch.bool, device=means.device)
    inside = obtuse & valid[:, :, None, None] & other[:, :, None] & other[:, None, :]  # k is neither j nor l
    return ~inside.any(1)


def merge_pairs(mix: Mixture, head: Tensor, partner: Tensor, *, model: str, reg: float, dim_threshold: float,
                n_dims: int | None) -> Mixture:
    """Each slot j with ``head`` [U, K] true takes the moment-matched merge of itself and slot
    ``partner[u, j]`` ([U, K] long); the partner slots become invalid (holes, which the
    filter's compaction removes).

    The merged Gaussian has the pair's total weight, their weighted mean and the covariance
    of their mixture, sum_i f_i (Sigma_i + (mu_i - mu)(mu_i - mu)^T); its covariance model
    (HDDC's Q, a, b, d or a full Cholesky factor) is refitted to that covariance, so the
    final EM starts from the pair's exact first two moments.
    """
    U, K, D = mix.means.shape
    u, j = head.nonzero(as_tuple=True)
    partner_slot = partner[u, j]
    weights = mix.weights.double()
    total = weights[u, j] + weights[u, partner_slot]
    share = torch.stack([weights[u, j], weights[u, partner_slot]], 1) / total.clamp(min=1e-300).unsqueeze(1)
    means = torch.stack([mix.means[u, j], mix.means[u, partner_slot]], 1).double()  # [P, 2, D]
    mean = (share.unsqueeze(-1) * means).sum(1)
    covariances = mix.covariances()
    pair_cov = torch.stack([covariances[u, j], covariances[u, partner_slot]], 1)  # [P, 2, D, D]
    spread = means - mean.unsqueeze(1)
    cov = (share[..., None, None] * (pair_cov + spread.unsqueeze(-1) * spread.unsqueeze(-2))).sum(1)
    cov = cov - reg * torch.eye(D, dtype=cov.dtype, device=cov.device)  # the model adds the floor back
    P = len(u)
    if model == "full":
        basis, log_det = full_model(cov, reg=reg)
        scales = torch.ones(P, D, dtype=cov.dtype, device=cov.device)
        noise = torch.zeros(P, dtype=cov.dtype, device=cov.device)
        d = torch.full((P,), D, dtype=torch.long, device=cov.device)
    else:
        valid = torch.ones(P, dtype=torch.bool, device=cov.device)
        basis, scales, noise, d, log_det = hddc_model(cov, valid, reg=reg, dim_threshold=dim_threshold,
                                                      n_dims=n_dims)
    dtype = mix.means.dtype
    merged = Mixture(mean.to(dtype), basis.to(dtype), scales.to(dtype), noise.to(dtype), d, log_det.to(dtype),
                     total.to(dtype), torch.ones(P, dtype=torch.bool, device=cov.device))
    merged = merged.map(lambda t: t.unsqueeze(1))
    width = max(mix.width, merged.width)
    mix, merged = mix.with_width(width), merged.with_width(width)
    target = u * K + j
    out = Mixture(*(dst.flatten(0, 1).index_copy(0, target, src.flatten(0, 1)).view_as(dst)
                    for dst, src in zip(mix, merged)))
    gone = torch.zeros_like(head)
    gone[u, partner_slot] = True
    return out._replace(valid=out.valid & ~gone, weights=out.weights.masked_fill(gone, 0.0))


def merge_modes(x: Tensor, mix: Mixture, densities: ComponentDensities, *, phi: float, psi: float, model: str,
                reg: float, dim_threshold: float = 0.2, n_dims: int | None = None,
                max_rounds: int = MAX_MERGE_ROUNDS) -> tuple[Mixture, Tensor]:
    """Merge neighbouring Gaussians that are one mode and not dense together (module docstring).

    Candidates are the pairs of Gaussians that are neighbours in the Gabriel graph of their
    means, neither denser than ``psi`` itself (the density rule would split it) and not too
    far apart for their joint density to stay below ``psi``. Each round takes the
    candidates that are each other's nearest (disjoint pairs), computes their joint
    clusters' density (eq. 5) and valley histogram from their points alone, merges the
    pairs that are one mode with a joint density <= ``psi``, and remembers the others as
    tested. Rounds end when no candidate is left (a merged Gaussian is new, and a candidate
    afresh) or after ``max_rounds``.

    Parameters
    ----------
    x : [U, n, D] the points; ``densities`` caches their log-densities under ``mix``'s slots.
    mix : [U, K] mixtures (holes allowed).

    Returns
    -------
    The mixtures (merged pairs in the first slot of the pair, holes in the second) and the
    number of merges per unit [U].
    """
    U, K, D = mix.means.shape
    slots = torch.arange(K, device=x.device)
    tested = torch.eye(K, dtype=torch.bool, device=x.device).expand(U, K, K).clone()
    own_density, _ = cluster_density(x, densities.members(mix, phi), K)
    tested |= (own_density > psi).unsqueeze(1) | (own_density > psi).unsqueeze(2)  # never candidates
    n_merged = torch.zeros(U, dtype=torch.long, device=x.device)
    for _ in range(max_rounds):
        means = mix.means.double()
        distance = torch.cdist(means, means)
        weights = mix.weights.double()
        share = weights.unsqueeze(2) / (weights.unsqueeze(2) + weights.unsqueeze(1)).clamp(min=1e-300)
        # the joint density is at least the spread of the two means, 2 f (1 - f) |mu_a - mu_b|
        too_far = 2 * share * (1 - share) * distance > psi
        valid = mix.valid
        skip = tested | ~valid.unsqueeze(1) | ~valid.unsqueeze(2) | ~gabriel_neighbours(means, valid) | too_far
        nearest_distance, nearest = distance.masked_fill(skip, float("inf")).min(-1)
        mutual = nearest_distance.isfinite() & (nearest.gather(1, nearest) == slots) & (slots < nearest)
        if not bool(mutual.any()):  # sync once per round
            break
        u, first = mutual.nonzero(as_tuple=True)
        second = nearest[u, first]
        tested[u, first, second] = True
        tested[u, second, first] = True
        # the points of both clusters of a pair, labelled with the pair's first slot
        owner = torch.full((U, K), -1, dtype=torch.long, device=x.device)
        owner[u, first] = first
        owner[u, second] = first
        members = densities.members(mix, phi)
        label = torch.where(members >= 0, owner.gather(1, members.clamp(min=0)), members)
        pair_x, pair_label = _labelled_points(x, label, K)
        density, _ = cluster_density(pair_x, pair_label, U * K)
        partner_means = mix.means.gather(1, nearest.unsqueeze(-1).expand(U, K, D))
        counts = valley_counts(pair_x, pair_label, mix.means.reshape(1, U * K, D),
                               partner_means.reshape(1, U * K, D), U * K)
        merge = mutual & ~two_modes(counts.view(U, K, -1)) & (density.view(U, K) <= psi)
        if bool(merge.any()):
            mix = merge_pairs(mix, merge, nearest, model=model, reg=reg, dim_threshold=dim_threshold, n_dims=n_dims)
            densities.mark(merge)
            fresh = merge.unsqueeze(1) | merge.unsqueeze(2)
            tested = (tested & ~fresh) | torch.eye(K, dtype=torch.bool, device=x.device)
            n_merged += merge.sum(1)
    return mix, n_merged


def _labelled_points(x: Tensor, label: Tensor, n_slots: int) -> tuple[Tensor, Tensor]:
    """The points of ``x`` [U, n, D] with a label >= 0, as one unit [1, m, D] whose labels
    [1, m] are unit * n_slots + label: later rounds of merging touch few points."""
    U, n, D = x.shape
    rows = (label >= 0).view(-1).nonzero().squeeze(1)  # sync: the labelled points only
    flat_label = (label + torch.arange(U, device=x.device).unsqueeze(1) * n_slots).view(-1)
    return x.reshape(U * n, D).index_select(0, rows).unsqueeze(0), flat_label[rows].unsqueeze(0)
