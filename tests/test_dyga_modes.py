"""When two Gaussians are one attribute: the valley test, Gabriel neighbours, merging."""

from __future__ import annotations

import pytest
import torch

from dydis.dyga.anchors import EMSettings
from dydis.dyga.clusters import ComponentDensities
from dydis.dyga.hddc import Points, isotropic
from dydis.dyga.modes import (gabriel_neighbours, merge_modes, merge_pairs, two_mode_clusters, two_modes,
                              valley_counts)

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def blobs(centres, n_per=300, std=0.05, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, n, D] points around ``centres`` and each point's blob [n]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=F64)
    which = torch.arange(len(centres)).repeat_interleave(n_per)
    return (centres[which] + std * torch.randn(len(which), centres.shape[1], generator=g, dtype=F64))[None], which


def histogram(x, start, end):
    """The valley histogram of all points of the one unit ``x`` [1, n, D] between two points."""
    label = torch.zeros(x.shape[:2], dtype=torch.long)
    return valley_counts(x, label, torch.as_tensor(start, dtype=F64)[None, None],
                         torch.as_tensor(end, dtype=F64)[None, None], 1)[0, 0]


def test_valley_test_tells_two_blobs_from_one_blob_cut_in_two():
    two, _ = blobs([[0.0, 0.0], [1.0, 0.0]])
    counts = histogram(two, [0.0, 0.0], [1.0, 0.0])
    assert counts.sum() == pytest.approx(300, abs=30)  # about half of each blob lies between the means
    assert bool(two_modes(counts))
    one, _ = blobs([[0.0, 0.0]], n_per=2000, std=1.0)
    # the means of the two halves of one Gaussian (+-0.8 sd): no dip between them
    assert not bool(two_modes(histogram(one, [-0.8, 0.0], [0.8, 0.0])))
    # a Gaussian spanning blobs A and B has its mean in the gap; against C the valley is still seen
    three, _ = blobs([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert bool(two_modes(histogram(three, [0.5, 0.0], [2.0, 0.0])))


def test_valley_test_does_not_trust_a_few_points():
    assert not bool(two_modes(torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0], dtype=F64)))
    assert bool(two_modes(torch.tensor([30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 40.0], dtype=F64)))
    # a shallow dip in large counts is no valley
    assert not bool(two_modes(torch.tensor([900.0, 800, 700, 600, 600, 700, 800, 900], dtype=F64)))


def test_gabriel_neighbours_of_means_along_a_curve_are_consecutive():
    t = torch.tensor([0.0, 1.0, 2.1, 3.3, 10.0], dtype=F64)
    means = torch.stack([t, 0.01 * t ** 2, torch.zeros(5, dtype=F64)], -1)[None]
    valid = torch.ones(1, 5, dtype=torch.bool)
    chain = torch.diag(torch.ones(4, dtype=torch.bool), 1)
    chain = chain | chain.T | torch.eye(5, dtype=torch.bool)
    assert torch.equal(gabriel_neighbours(means, valid)[0], chain)
    valid[0, 1] = False  # an invalid mean blocks nothing: 0 and 2 become neighbours
    assert bool(gabriel_neighbours(means, valid)[0, 0, 2])


@pytest.mark.parametrize("model", ["hddc", "full"])
def test_merging_two_gaussians_keeps_their_first_two_moments(model):
    g = torch.Generator().manual_seed(1)
    U, D = 2, 4
    x = torch.randn(U, 600, D, generator=g, dtype=F64) * torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=F64)
    x[:, 300:] += torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=F64)
    points = Points.of(x)
    settings = EMSettings(model=model, init_scale="data", n_dims=2 if model == "hddc" else None)
    mix, _ = settings.run(points, settings.start(points, x[:, [0, 300, 599]].clone()))
    head = torch.tensor([[True, False, False], [False, True, False]])
    partner = torch.tensor([[2, 0, 0], [0, 2, 0]])  # unit 0 merges slots 0 and 2, unit 1 slots 1 and 2
    merged = merge_pairs(mix, head, partner, model=model, reg=1e-6, dim_threshold=0.2, n_dims=None)
    cov = mix.covariances()
    for u, (j, l) in enumerate([(0, 2), (1, 2)]):
        w = mix.weights[u, [j, l]].double()
        mu = (w[:, None] * mix.means[u, [j, l]]).sum(0) / w.sum()
        spread = mix.means[u, [j, l]] - mu
        want = sum(w[i] * (cov[u, [j, l][i]] + torch.outer(spread[i], spread[i])) for i in range(2)) / w.sum()
        assert not bool(merged.valid[u, l]) and float(merged.weights[u, l]) == 0.0
        assert float(merged.weights[u, j]) == pytest.approx(float(w.sum()))
        torch.testing.assert_close(merged.means[u, j], mu)
        got = merged.covariances()[u, j]
        if model == "full":
            torch.testing.assert_close(got, want)
        else:  # HDDC ties the trailing eigenvalues to their mean: trace and leading axis stay
            assert float(torch.trace(got)) == pytest.approx(float(torch.trace(want)), rel=1e-9)
            lead_got, lead_want = torch.linalg.eigh(got)[1][:, -1], torch.linalg.eigh(want)[1][:, -1]
            assert abs(float(lead_got @ lead_want)) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose((merged.weights * merged.valid).sum(1), torch.ones(U, dtype=F64))


def test_merge_modes_joins_gaussians_of_one_blob_and_keeps_blobs_apart():
    # two tight blobs, each covered by two Gaussians: one Gaussian per blob remains
    x, which = blobs([[0.0, 0.0], [1.0, 0.0]], n_per=400)
    points = Points.of(x)
    settings = EMSettings(init_scale="data")
    start = torch.tensor([[[-0.03, 0.0], [0.03, 0.0], [0.97, 0.0], [1.03, 0.0]]], dtype=F64)
    mix, _ = settings.run(points, settings.start(points, start))
    merged, n_merged = merge_modes(x, mix, ComponentDensities(points, 4), phi=0.5, psi=0.5, model="hddc",
                                   reg=1e-6)
    assert n_merged.tolist() == [2] and merged.valid.sum().item() == 2
    means = merged.means[0][merged.valid[0]]
    torch.testing.assert_close(means[means[:, 0].argsort()], torch.stack([x[0, which == b].mean(0) for b in (0, 1)]),
                               atol=0.01, rtol=0)
    # the same blobs with psi below their joint density: the density rule forbids nothing here
    # (each pair of Gaussians on one blob is far below psi), but two blobs never merge
    _, none_merged = merge_modes(x, merged, ComponentDensities(points, 4), phi=0.5, psi=10.0, model="hddc",
                                 reg=1e-6)
    assert none_merged.tolist() == [0]


def test_merge_modes_keeps_a_stretch_longer_than_psi_in_pieces():
    # a uniform segment of length 4: one mode, but one Gaussian over it would be denser than psi
    g = torch.Generator().manual_seed(2)
    t = torch.rand(1, 2000, 1, generator=g, dtype=F64) * 4
    x = torch.cat([t, 0.01 * torch.randn(1, 2000, 1, generator=g, dtype=F64)], -1)
    points = Points.of(x)
    settings = EMSettings(init_scale="data")
    start = torch.tensor([[[0.5, 0.0], [1.5, 0.0], [2.5, 0.0], [3.5, 0.0]]], dtype=F64)
    mix, _ = settings.run(points, settings.start(points, start))
    merged, n_merged = merge_modes(x, mix, ComponentDensities(points, 4), phi=0.5, psi=0.6, model="hddc",
                                   reg=1e-6)
    # pieces of length 1 have density 0.25, pairs 0.5 (merged), a pair of pairs 1.0 (kept)
    assert n_merged.tolist() == [2] and merged.valid.sum().item() == 2


def test_two_mode_clusters_finds_a_gaussian_stretched_over_two_blobs():
    x, _ = blobs([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    points = Points.of(x)
    mix = EMSettings(init_scale="data").start(points, torch.tensor([[[0.5, 0.0], [5.0, 5.0]]], dtype=F64))
    mix, _ = EMSettings().run(points, mix)  # one Gaussian for the first two blobs
    members = ComponentDensities(points, 2).members(mix, 0.5)
    assert two_mode_clusters(x, members, mix).tolist() == [[True, False]]


def test_merge_pairs_leaves_other_slots_alone():
    mix = isotropic(1, 4, 2, 1.0, full=False, dtype=F64, device="cpu")
    mix = mix._replace(means=torch.tensor([[[0.0, 0], [1, 0], [5, 5], [9, 9]]], dtype=F64),
                       valid=torch.ones(1, 4, dtype=torch.bool), weights=torch.full((1, 4), 0.25, dtype=F64))
    merged = merge_pairs(mix, torch.tensor([[True, False, False, False]]), torch.tensor([[1, 0, 0, 0]]),
                         model="hddc", reg=1e-6, dim_threshold=0.2, n_dims=None)
    assert merged.valid.tolist() == [[True, False, True, True]]
    assert torch.equal(merged.means[0, 2:], mix.means[0, 2:]) and torch.equal(merged.weights[0, 2:],
                                                                               mix.weights[0, 2:])
    torch.testing.assert_close(merged.means[0, 0], torch.tensor([0.5, 0.0], dtype=F64))
