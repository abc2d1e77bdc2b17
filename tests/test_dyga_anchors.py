"""Anchor selection (Algorithm 2): densities, split choice, split bookkeeping, filtering."""

from __future__ import annotations

import warnings

import pytest
import torch

from dydis.dyga import DyGA
from dydis.dyga.anchors import (EMSettings, SplitBatch, along_first_direction, choose_splits, drop_small,
                                merge_children, split_batch)
from dydis.dyga.clusters import ComponentDensities, cluster_density
from dydis.dyga.hddc import Points, e_step, isotropic
from dydis.dyga.streams import UnitStreams

F64 = torch.float64
HALF = torch.full((1, 4), 0.5, dtype=F64)  # the round's uniform draws, where they do not matter


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def grid_blobs(centres, n_per=60, std=0.1, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=F64)
    return centres.repeat_interleave(n_per, 0) + std * torch.randn(len(centres) * n_per, centres.shape[1],
                                                                     generator=g, dtype=F64)


def test_cluster_density_is_eq5():
    x = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [5.0, 5.0], [9.0, 9.0]]], dtype=F64)
    members = torch.tensor([[0, 0, 0, 1, -1]])
    density, sizes = cluster_density(x, members, 2)
    centre = torch.tensor([2 / 3, 2 / 3], dtype=F64)
    want = (x[0, :3] - centre).norm(dim=-1).mean()
    assert sizes.tolist() == [[3, 1]]
    assert density[0, 0].item() == pytest.approx(want.item())
    assert density[0, 1].item() == 0.0
    # no points at all (merging reads only the points of the pairs it tests): empty clusters
    density, sizes = cluster_density(torch.zeros(1, 0, 2, dtype=F64), torch.zeros(1, 0, dtype=torch.long), 2)
    assert sizes.tolist() == [[0, 0]] and bool(density.isnan().all())



def top_responsibility_clusters(points, mix, phi=0.5):
    """Clusters straight from a full E-step: the component whose responsibility exceeds phi."""
    resp, _ = e_step(points, mix)
    top, arg = resp.max(1)
    return torch.where(top > phi, arg, torch.full_like(arg, -1)), top


def test_component_densities_give_the_clusters_of_a_fresh_e_step_after_slots_change():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 400, 4, generator=g)
    points = Points.of(x)
    settings = EMSettings(max_iter=3, init_scale="data")
    mix, _ = settings.run(points, settings.start(points, x[:, :5].clone()))
    mix = mix.padded(8)
    cache, never_marked = ComponentDensities(points, 8), ComponentDensities(points, 8)

    def check(cache, mix):
        got = cache.members(mix.trimmed(), 0.5)
        want, top = top_responsibility_clusters(points, mix.trimmed())
        # rounding may only move a point whose top responsibility is phi itself
        assert bool(((got == want) | ((top - 0.5).abs() < 1e-4)).all())
        return got, want

    check(cache, mix)
    never_marked.members(mix.trimmed(), 0.5)
    # a split round: unit 0's slot 1 moves, unit 1 gains slot 5, and every weight changes
    new = mix._replace(means=mix.means.clone(), valid=mix.valid.clone(), weights=mix.weights.clone())
    new.means[0, 1] += 1.0
    new.means[1, 5] = x[1, 10]
    new.valid[1, 5] = True
    new.weights[1, 5] = 0.3
    new = new._replace(weights=new.weights / new.weights.sum(1, keepdim=True))
    changed = torch.zeros(2, 8, dtype=torch.bool)
    changed[0, 1] = changed[1, 5] = True
    cache.mark(changed)
    got, want = check(cache, new)
    assert bool((want[1] == 5).any()) and bool((want[0] == 1).any())  # the changed slots own points
    # the slots that changed are exactly what must be recomputed: unmarked, the cache is stale
    assert not torch.equal(never_marked.members(new.trimmed(), 0.5), want)

def test_paper_rule_splits_dense_clusters_densest_first_within_the_cap():
    density = torch.tensor([[0.9, 0.1, 0.7, 0.6]], dtype=F64)
    sizes = torch.tensor([[50, 50, 50, 1]])  # the last cluster is too small to split
    valid = torch.ones(1, 4, dtype=torch.bool)
    counted = torch.zeros(1, dtype=torch.long)
    chosen, going_on = choose_splits(density, sizes, valid, psi=0.5, random_split=0.0, max_components=5,
                                     rule="paper", counted=counted, draw=HALF)
    assert chosen.tolist() == [[True, False, False, False]]  # one free slot: the densest
    assert going_on.tolist() == [False]  # the cap is reached
    chosen, going_on = choose_splits(density, sizes, valid, psi=0.5, random_split=0.0, max_components=32,
                                     rule="paper", counted=counted, draw=HALF)
    assert chosen.tolist() == [[True, False, True, False]] and going_on.tolist() == [True]
    chosen, _ = choose_splits(density, sizes, valid, psi=0.5, random_split=1.0, max_components=32, rule="paper",
                              counted=counted, draw=HALF)
    assert chosen.tolist() == [[True, True, True, False]]  # random splits take every splittable cluster
    chosen, going_on = choose_splits(torch.zeros(1, 4, dtype=F64), sizes, valid, psi=0.5, random_split=0.0,
                                     max_components=32, rule="paper", counted=counted, draw=HALF)
    assert not chosen.any() and going_on.tolist() == [False]  # F is empty: Algorithm 2 stops
    calm = torch.full((1, 4), 0.1, dtype=F64)
    chosen, _ = choose_splits(calm, sizes, valid, psi=0.5, random_split=0.5, max_components=32, rule="paper",
                              counted=counted, draw=torch.tensor([[0.2, 0.9, 0.4, 0.1]], dtype=F64))
    assert chosen.tolist() == [[True, False, True, False]]  # draws below random_split; the last is too small


def test_official_rule_splits_one_random_candidate_per_round_without_dense_clusters():
    sizes = torch.full((1, 4), 50)
    valid = torch.ones(1, 4, dtype=torch.bool)
    counted = torch.zeros(1, dtype=torch.long)
    calm = torch.full((1, 4), 0.1, dtype=F64)
    chosen, going_on = choose_splits(calm, sizes, valid, psi=0.5, random_split=1.0, max_components=32,
                                     rule="official", counted=counted, draw=HALF)
    assert chosen.tolist() == [[True, False, False, False]] and counted.item() == 0  # uncounted
    assert going_on.tolist() == [True]
    # Gaussians drawn whose clusters are too small: nothing splits, but the next round draws again
    chosen, going_on = choose_splits(calm, torch.ones(1, 4, dtype=torch.long), valid, psi=0.5, random_split=1.0,
                                     max_components=32, rule="official", counted=counted, draw=HALF)
    assert not chosen.any() and going_on.tolist() == [True]
    dense = torch.tensor([[0.1, 0.9, 0.8, 0.1]], dtype=F64)
    chosen, going_on = choose_splits(dense, sizes, valid, psi=0.5, random_split=0.0, max_components=32,
                                     rule="official", counted=counted, draw=HALF)
    assert chosen.tolist() == [[False, True, True, False]] and counted.item() == 2
    counted.fill_(3)  # the released code stops after 3 counted splits
    chosen, going_on = choose_splits(dense, sizes, valid, psi=0.5, random_split=1.0, max_components=32,
                                     rule="official", counted=counted, draw=HALF)
    assert not chosen.any() and going_on.tolist() == [False]


@pytest.mark.parametrize("child_weights", ["parent", "half"])
def test_children_replace_their_parents_by_slot_when_several_split_at_once(child_weights):
    U, K, D = 2, 6, 2
    mix = isotropic(U, K, D, 1.0, full=False, dtype=F64, device="cpu")
    means = torch.arange(U * K * D, dtype=F64).view(U, K, D)
    valid = torch.tensor([[True] * 3 + [False] * 3, [True] * 2 + [False] * 4])
    weights = torch.tensor([[0.5, 0.3, 0.2, 0, 0, 0], [0.6, 0.4, 0, 0, 0, 0]], dtype=F64)
    mix = mix._replace(means=means * valid[..., None], valid=valid, weights=weights)
    # unit 0 splits slots 0 and 2, unit 1 splits slot 1
    unit, parent = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    children = isotropic(3, 2, D, 1.0, full=False, dtype=F64, device="cpu")
    child_means = torch.tensor([[[100.0, 0], [101, 0]], [[120, 0], [121, 0]], [[211, 0], [212, 0]]], dtype=F64)
    children = children._replace(means=child_means, valid=torch.ones(3, 2, dtype=torch.bool),
                                 weights=torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.1, 0.9]], dtype=F64))
    batch = SplitBatch(points=None, unit=unit, parent=parent, first_two=child_means)
    merged = merge_children(mix, children, batch, child_weights=child_weights)
    assert merged.valid.sum(1).tolist() == [5, 3]
    m = merged.means[..., 0]
    assert m[0, :5].tolist() == [100.0, means[0, 1, 0].item(), 120.0, 101.0, 121.0]
    assert m[1, :3].tolist() == [means[1, 0, 0].item(), 211.0, 212.0]
    w = merged.weights
    if child_weights == "parent":  # children share the parent's weight; the total stays 1
        torch.testing.assert_close(w[0, :5], torch.tensor([0.125, 0.3, 0.1, 0.375, 0.1], dtype=F64))
        torch.testing.assert_close(w[1, :3], torch.tensor([0.6, 0.04, 0.36], dtype=F64))
    else:  # released code: half the EM weights, then renormalise
        raw = torch.tensor([0.125, 0.3, 0.25, 0.375, 0.25], dtype=F64)
        torch.testing.assert_close(w[0, :5], raw / raw.sum())
    assert torch.allclose(w.sum(1), torch.ones(2, dtype=F64))


def test_split_batch_gathers_each_chosen_cluster_and_starts_children_inside_it():
    x = grid_blobs([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]], n_per=20)[None]
    members = torch.arange(3).repeat_interleave(20)[None]
    sizes = torch.full((1, 3), 20)
    chosen = torch.tensor([[True, False, True]])
    for child_init in ("random", "spread"):
        batch = split_batch(x, members, sizes, chosen, UnitStreams.seeded(0, 1), child_init)
        assert batch.parent.tolist() == [0, 2]
        owner, mask = batch.points.owner, batch.points.mask
        for seg, centre in ((0, 0.0), (1, 10.0)):
            pts = batch.points.x[owner == seg][mask[owner == seg]]
            assert len(pts) == 20 and (pts[:, 0] - centre).abs().max() < 1.0
            assert (batch.first_two[seg, :, 0] - centre).abs().max() < 1.0
            assert not torch.equal(batch.first_two[seg, 0], batch.first_two[seg, 1])
            assert torch.equal(pts, x[0, members[0] == 2 * seg])  # the cluster's points, in x's order


def test_split_batch_starts_children_at_a_uniform_pair_of_the_clusters_points():
    x = torch.arange(4, dtype=F64).reshape(1, 4, 1)  # cluster 0 holds points 1, 2, 3
    members = torch.tensor([[-1, 0, 0, 0]])
    counts = torch.zeros(4, 4)
    streams = UnitStreams.seeded(0, 1)
    for _ in range(1200):
        pair = split_batch(x, members, torch.tensor([[3]]), torch.tensor([[True]]), streams).first_two[0, :, 0]
        counts[int(pair[0]), int(pair[1])] += 1
    off_diagonal = counts[1:, 1:][~torch.eye(3, dtype=torch.bool)]
    assert counts[1:, 1:].sum() == 1200 and counts[1:, 1:].diagonal().sum() == 0
    assert bool((off_diagonal > 150).all() and (off_diagonal < 250).all())  # 200 each if uniform


def test_small_gaussians_are_filtered_and_weights_renormalised():
    x = torch.cat([grid_blobs([[0.0, 0.0], [4.0, 0.0]], n_per=100), grid_blobs([[2.0, 9.0]], n_per=3)])[None]
    points = Points.of(x)
    settings = EMSettings(model="hddc")
    mix = settings.start(points, torch.tensor([[[0.0, 0.0], [4.0, 0.0], [2.0, 9.0]]], dtype=F64))
    kept, removed = drop_small(points, mix, min_size=10)
    assert removed.tolist() == [1]
    assert kept.valid.tolist() == [[True, True]]
    torch.testing.assert_close(kept.means[0], torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=F64))
    assert kept.weights.sum().item() == pytest.approx(1.0)
    # when every Gaussian is too small, the largest one stays
    kept, removed = drop_small(points, mix, min_size=1000)
    assert kept.valid.sum().item() == 1 and removed.item() == 2


def test_bimodal_clusters_split_in_one_round_and_a_tiny_cluster_is_filtered():
    # three groups of two blobs plus a 3-point cluster; one starting Gaussian per group and
    # one on the tiny cluster. Groups are denser than psi, single blobs are not.
    centres = [[x, y] for x in (0.0, 10.0, 20.0) for y in (-1.0, 1.0)]
    x = torch.cat([grid_blobs(centres), grid_blobs([[10.0, 6.0]], n_per=3, std=0.01)])[:, None]
    init = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [10.0, 6.0]]], dtype=F64)
    model = DyGA(n_init=4, max_components=8, psi=0.02, random_split=0.0, means_init=init).fit(x)
    assert model.n_split_rounds_ == 1
    assert model.n_splits_.tolist() == [3] and model.n_filtered_.tolist() == [1]
    anchors = model.anchors_[0][model.component_mask_[0]]
    assert len(anchors) == 6
    # every blob has exactly one anchor close to it (the filtered cluster's 3 points join
    # the nearest Gaussian in the final EM and pull its mean by about 3 * 5 / 63)
    distance = torch.cdist(torch.tensor(centres, dtype=F64), anchors)
    assert distance.min(1).values.max() < 0.3
    assert sorted(distance.argmin(1).tolist()) == list(range(6))


def test_official_schedule_splits_one_calm_cluster_per_round_up_to_max_components():
    x = grid_blobs([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], n_per=100)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # every Gaussian is drawn each round, none is denser than psi: one uncounted split per round
        model = DyGA("official", n_init=2, max_components=7, min_cluster_size=0, random_split=1.0).fit(x)
        assert model.n_components_.tolist() == [7]
        assert model.n_splits_.tolist() == [5] and model.n_split_rounds_ == 5
        # with draws at 0.5 the schedule is the same until a round draws nothing
        model = DyGA("official", n_init=2, max_components=7, min_cluster_size=0).fit(x)
        assert model.n_splits_.tolist() == [model.n_split_rounds_]
        assert model.n_components_.tolist() == [2 + model.n_split_rounds_]


def test_points_are_sorted_along_each_units_first_principal_direction():
    g = torch.Generator().manual_seed(5)
    t = torch.rand(2, 500, generator=g)  # position along a line, in random order
    direction = torch.nn.functional.normalize(torch.randn(2, 1, 6, generator=g), dim=-1)
    x = t.unsqueeze(-1) * direction + 0.01 * torch.randn(2, 500, 6, generator=g)
    got = along_first_direction(x)
    for u in range(2):  # a permutation of the unit's points ...
        assert torch.equal(got[u][torch.argsort(got[u, :, 0])], x[u][torch.argsort(x[u, :, 0])])
        along = got[u] @ direction[u, 0]  # ... ordered along the line (either way round)
        steps = torch.diff(along)
        assert bool((steps >= -0.05).all()) or bool((steps <= 0.05).all())
        assert abs(float(along[-1] - along[0])) > 0.9
    constant = torch.ones(1, 10, 3)
    assert torch.equal(along_first_direction(constant), constant)


# ----------------------------------------------------------------------------------------------
# the anchor count follows the data (paper mode)


def unit_like(attributes: list[int], n: int, dim: int = 32, noise: float = 0.03,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features like a trained extractor's units, [n, U, D], and each point's attribute [U, n].

    Unit u holds ``attributes[u]`` well-separated attributes: a scalar taking one of that
    many values spread over [-1, 1], plus noise, through a random 1-256-512-D ReLU MLP whose
    last ReLU leaves many exact zeros (as bench/dyga.py's data and the released extractor).
    """
    g = torch.Generator().manual_seed(seed)
    units, labels = [], []
    for k in attributes:
        label = torch.randint(0, k, (n,), generator=g)
        s = torch.linspace(-1.0, 1.0, k)[label] + noise * torch.randn(n, generator=g)
        w1, b1 = torch.randn(1, 256, generator=g) * 2 ** 0.5, 0.1 * torch.randn(256, generator=g)
        w2 = torch.randn(256, 512, generator=g) * (2 / 256) ** 0.5
        w3 = torch.randn(512, dim, generator=g) * (2 / 512) ** 0.5
        units.append(torch.relu(torch.relu(torch.relu(s[:, None] @ w1 + b1) @ w2) @ w3))
        labels.append(label)
    return torch.stack(units, 1), torch.stack(labels)


def purity(model: DyGA, x: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per unit: the share of points whose most responsible anchor's majority attribute is theirs."""
    anchor = model.responsibilities(x).argmax(-1).T  # [U, n]
    out = []
    for a, y in zip(anchor, labels):
        agree = sum(int(torch.bincount(y[a == k]).max()) for k in a.unique())
        out.append(agree / len(y))
    return out


def test_paper_mode_ends_with_between_k_and_2k_plus_2_anchors_for_k_attributes():
    # the released schedule (and Algorithm 2 without a merge) ended every unit at 25-32 anchors
    attributes = [2, 3, 4, 6, 8]
    x, labels = unit_like(attributes, 4000, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DyGA("paper", random_state=0).fit(x)
    for k, count in zip(attributes, model.n_components_.tolist()):
        assert k <= count <= 2 * k + 2, (k, model.n_components_.tolist())
    assert min(purity(model, x, labels)) >= 0.95


def test_every_unit_of_a_batched_fit_keeps_its_attributes_apart():
    # 8 units of 10 attributes each: before, a Gaussian left spanning two attributes (no
    # random split reached it before the cap) gave 3 of these units purity 0.80-0.91
    x, labels = unit_like([10] * 8, 5000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DyGA("paper", random_state=0).fit(x)
    scores = purity(model, x, labels)
    assert min(scores) >= 0.95, [round(p, 3) for p in scores]
    assert all(10 <= k <= 22 for k in model.n_components_.tolist())


def test_without_the_merge_random_splits_come_once_per_gaussian():
    # Algorithm 2 alone (merge="none"): no cluster is denser than psi here, so only random
    # splits add Gaussians, at most one per starting Gaussian: 2 to 4 starts give at most 8
    x, _ = unit_like([2, 2], 2000, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DyGA("paper", merge="none", n_init=4, random_split=1.0, random_state=0).fit(x)
    assert model.n_merged_.tolist() == [0, 0]
    assert model.n_splits_.tolist() == [4, 4] and model.n_components_.tolist() == [8, 8]
