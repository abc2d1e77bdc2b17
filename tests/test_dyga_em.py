"""The batched EM of dydis.dyga.hddc: log-densities, the covariance models, EM itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch.distributions import MultivariateNormal

from dydis.dyga import hddc
from dydis.dyga.anchors import EMSettings
from dydis.dyga.hddc import (Mixture, Points, cattell_dims, density_terms, e_step, full_model,
                             hddc_model, isotropic, log_density, m_step, scatter_matrices, squared_distances)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def blobs(centres, n_per: int, std: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, D] points around each centre (float64) and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=F64)
    labels = torch.arange(len(centres)).repeat_interleave(n_per)
    return centres[labels] + std * torch.randn(len(labels), centres.shape[1], generator=g, dtype=F64), labels


def random_mixture(model: str, U=2, K=3, D=6, seed=0) -> Mixture:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(U, K, D, D, generator=g, dtype=F64)
    cov = a @ a.transpose(-1, -2) / D
    cov[0, 0] = torch.diag(torch.tensor([5.0] + [1e-3] * (D - 1), dtype=F64))  # one tight, elongated cluster
    valid = torch.ones(U, K, dtype=torch.bool)
    means = torch.randn(U, K, D, generator=g, dtype=F64)
    weights = torch.full((U, K), 1.0 / K, dtype=F64)
    if model == "hddc":
        basis, scales, noise, d, log_det = hddc_model(cov, valid, reg=1e-6)
    else:
        basis, log_det = full_model(cov, reg=1e-6)
        scales, noise = torch.ones(U, K, D, dtype=F64), torch.zeros(U, K, dtype=F64)
        d = torch.full((U, K), D)
    return Mixture(means, basis, scales, noise, d, log_det, weights, valid)


@pytest.mark.parametrize("model", ["hddc", "full"])
def test_log_density_equals_a_direct_gaussian_evaluation(model):
    mix = random_mixture(model)
    x = 2.0 * torch.randn(2, 40, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    got = log_density(Points.of(x), density_terms(mix, F64, with_weights=False))  # [U, K, n]
    cov = mix.covariances()
    want = torch.stack([torch.stack([MultivariateNormal(mix.means[u, k], cov[u, k]).log_prob(x[u])
                                     for k in range(3)]) for u in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-7)



def test_projection_layers_read_only_the_coordinates_they_use():
    # full covariance: W = L^-1 is lower triangular, so layer j reads x[:j+1]
    mix = random_mixture("full", D=8)
    terms = density_terms(mix, F64)
    assert terms.layers == ((0, 2, 2), (2, 4, 4), (4, 6, 6), (6, 8, 8))
    assert hddc._layer_groups([3, 8, 2, 2], 8) == ((0, 1, 3), (1, 4, 8))  # dense from layer 1 on
    # HDDC: d_k differ per component, so every d_k beyond the smallest is an extra row
    mix = random_mixture("hddc", D=8)
    terms = density_terms(mix, F64)
    assert terms.shared == int(mix.n_dims.min())
    extra = (mix.n_dims - terms.shared).sum(1)  # per unit
    assert terms.extra_slot.shape[1] == int(extra.max())

def test_squared_distances_of_lifted_points_equal_direct_differences():
    # float32 points, float64 distances: the lifted rows (x, 1, ||x||^2) keep them exact
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 30, 8, generator=g) - 1.0  # like features scaled to [-1, 0]
    means = x[:, :4] + 1e-3 * torch.randn(2, 4, 8, generator=g)  # some means right next to points
    want = (x.double().unsqueeze(1) - means.double().unsqueeze(2)).square().sum(-1)  # [2, 4, 30]
    torch.testing.assert_close(squared_distances(Points.of(x), means), want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(squared_distances(Points.of(x), means, 5, 9), want[..., 5:9], rtol=1e-12, atol=1e-15)


def test_hddc_covariance_is_built_from_q_a_b():
    mix = random_mixture("hddc")
    D = 6
    for u in range(2):
        for k in range(3):
            d = int(mix.n_dims[u, k])
            q = mix.basis[u, k, :, :d]
            a, b = mix.scales[u, k, :d], mix.noise[u, k]
            direct = q @ torch.diag(a - b) @ q.T + b * torch.eye(D, dtype=F64)
            torch.testing.assert_close(mix.covariances()[u, k], direct)
            assert (a >= b).all()
    # the tight cluster: one free direction (variance 5 + floor), the rest tied at 1e-3 + floor
    assert int(mix.n_dims[0, 0]) == 1
    assert mix.scales[0, 0, 0].item() == pytest.approx(5.0 + 1e-6)
    assert mix.noise[0, 0].item() == pytest.approx(1e-3 + 1e-6)


def test_hddc_keeps_the_leading_eigenpairs_of_the_sample_covariance():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 8, 8, generator=g, dtype=F64)
    cov = a @ a.transpose(-1, -2)
    basis, scales, noise, d, _ = hddc_model(cov, torch.ones(4, dtype=torch.bool), reg=1e-6, n_dims=3)
    lam, vec = torch.linalg.eigh(cov + 1e-6 * torch.eye(8, dtype=F64))
    lam, vec = lam.flip(-1), vec.flip(-1)
    torch.testing.assert_close(scales, lam[:, :3])
    torch.testing.assert_close(noise, lam[:, 3:].mean(-1))
    overlap = (basis.transpose(-1, -2) @ vec[..., :3]).abs()  # same subspace, same vectors up to sign
    torch.testing.assert_close(overlap, torch.eye(3, dtype=F64).expand(4, 3, 3), atol=1e-7, rtol=0)


def test_cattell_scree_test_picks_the_last_big_gap():
    eig = torch.tensor([[10.0, 9.0, 2.0, 1.9, 1.8, 1.7],  # gaps 1, 7, .1, .1, .1 -> d = 2
                        [10.0, 5.0, 1.0, 0.9, 0.8, 0.7],  # gaps 5, 4, .1 ... -> 4 > 0.2*5 -> d = 2
                        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # isotropic -> d = 1
    assert cattell_dims(eig, 0.2).tolist() == [2, 2, 1]
    assert cattell_dims(eig[:1], 0.01).tolist() == [5]  # every gap now exceeds 0.01 * 7


def run_em(x: torch.Tensor, init: torch.Tensor, model: str, **kw) -> tuple[Mixture, object]:
    """EM on units x [U, n, D] from means init [U, K, D] with covariance I."""
    settings = EMSettings(model=model, **kw)
    points = Points.of(x)
    return settings.run(points, settings.start(points, init))


@pytest.mark.parametrize("model", ["hddc", "full"])
def test_em_recovers_the_means_of_a_well_separated_mixture(model):
    centres = [[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]]
    x, _ = blobs(centres, 300, 0.5)
    init = x[[0, 300, 600]] + 0.5  # one rough start per blob
    mix, result = run_em(x[None], init[None], model, max_iter=100, tol=1e-8)
    assert bool(result.converged.all())
    torch.testing.assert_close(mix.means[0], torch.tensor(centres, dtype=F64), atol=0.1, rtol=0)
    torch.testing.assert_close(mix.weights[0], torch.full((3,), 1 / 3, dtype=F64), atol=0.01, rtol=0)


@pytest.mark.parametrize("model,n_dims", [("hddc", 2), ("full", None)])
@pytest.mark.parametrize("resp_eps", [0.0, 1e-8])
def test_log_likelihood_never_decreases(model, n_dims, resp_eps):
    # overlapping clusters and a poor start, so EM needs many small steps
    x, _ = blobs([[0.0, 0.0, 0.0, 0.0], [1.5, 1.0, 0.0, 0.5], [0.0, 2.0, 1.0, 0.0]], 120, 0.6, seed=2)
    init = x[:4].unsqueeze(0)
    _, result = run_em(x[None], init, model, max_iter=40, tol=0.0, n_dims=n_dims, resp_eps=resp_eps)
    history = torch.stack(result.history)[:, 0]
    assert len(history) == 41
    assert (history[1:] - history[:-1]).min() > -1e-9
    assert history[-1] > history[0] + 0.1


def test_full_model_agrees_with_scikit_learn():
    x, _ = blobs([[0.0, 0.0], [3.0, 3.0], [-3.0, 2.0]], 100, 0.7, seed=4)
    init = x[[5, 150, 250]]
    iters = 15
    mix, _ = run_em(x[None], init[None], "full", max_iter=iters, tol=0.0, resp_eps=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, tol=0.0, max_iter=iters,
                              weights_init=np.full(3, 1 / 3), means_init=init.numpy(),
                              precisions_init=np.stack([np.eye(2)] * 3)).fit(x.numpy())
    np.testing.assert_allclose(mix.means[0].numpy(), ref.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(mix.weights[0].numpy(), ref.weights_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(mix.covariances()[0].numpy(), ref.covariances_, rtol=1e-7, atol=1e-9)
    _, log_lik = e_step(Points.of(x[None]), mix)
    assert log_lik.mean().item() == pytest.approx(ref.score(x.numpy()), rel=1e-9)


def test_units_fitted_together_match_units_fitted_alone():
    x0, _ = blobs([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]], 100, 0.5, seed=5)
    x1, _ = blobs([[0.0, 2.0, 0.0], [0.0, -2.0, 1.0]], 100, 0.8, seed=6)
    x = torch.stack([x0, x1])
    init = x[:, [0, 150]]
    together, res = run_em(x, init, "hddc", max_iter=50, tol=1e-6)
    for u in range(2):
        alone, res_u = run_em(x[u:u + 1], init[u:u + 1], "hddc", max_iter=50, tol=1e-6)
        assert int(res_u.n_iter[0]) == int(res.n_iter[u])
        torch.testing.assert_close(alone.means[0], together.means[u], rtol=0, atol=1e-12)
        torch.testing.assert_close(alone.covariances()[0], together.covariances()[u], rtol=0, atol=1e-12)


def test_units_frozen_in_the_batch_do_not_change_the_others():
    # five units that converge at different iterations: frozen ones stay in the batch until
    # they are half of it, and no unit's fit may depend on its companions
    units = [blobs([[0.0, 0.0, 0.0], [2.0 + u, 0.0, 0.5 * u]], 80, 0.4 + 0.1 * u, seed=10 + u)[0] for u in range(5)]
    x = torch.stack(units)
    init = x[:, [0, 120]]
    together, res = run_em(x, init, "hddc", max_iter=60, tol=1e-7)
    assert len(set(res.n_iter.tolist())) > 1  # staggered convergence, so the batch shrank
    for u in range(5):
        alone, res_u = run_em(x[u:u + 1], init[u:u + 1], "hddc", max_iter=60, tol=1e-7)
        assert int(res_u.n_iter[0]) == int(res.n_iter[u])
        torch.testing.assert_close(alone.means[0], together.means[u], rtol=0, atol=1e-12)


@pytest.mark.parametrize("resp_eps", [0.0, 1e-3])
@pytest.mark.parametrize("block", [None, 64])
@pytest.mark.parametrize("K", [3, 2])  # 2 slots (split children) take the in-place route
def test_scatter_matrices_equal_the_dense_weighted_sums(resp_eps, block, K, monkeypatch):
    # three segments spread over chunks of unequal use (segment 1 owns two chunks), padded
    # points masked out, responsibilities with many small entries; with tiny blocks the
    # chunks come in several groups and runs are longer than a piece of pairs
    if block is not None:
        monkeypatch.setitem(hddc._BLOCK_ELEMENTS, "cpu", block)
    g = torch.Generator().manual_seed(3)
    C, L, D = 4, 50, 5
    x = torch.randn(C, L, D, generator=g, dtype=F64)
    owner = torch.tensor([0, 1, 1, 2])
    mask = torch.ones(C, L, dtype=torch.bool)
    mask[2, 40:] = False
    logits = 4.0 * torch.randn(C, K, L, generator=g, dtype=F64)
    resp = torch.softmax(logits, 1) * mask.unsqueeze(1)
    means = torch.randn(3, K, D, generator=g, dtype=F64)
    got = scatter_matrices(Points.of(x, owner=owner, mask=mask), resp, means, resp_eps)
    kept = resp * (resp > resp_eps)
    centred = x.unsqueeze(1) - means[owner].unsqueeze(2)  # [C, K, L, D]
    per_chunk = torch.einsum("ckl,ckld,ckle->ckde", kept, centred, centred)
    want = torch.zeros(3, K, D, D, dtype=F64).index_add_(0, owner, per_chunk)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["hddc", "full"])
def test_em_survives_degenerate_data(model):
    # identical points and more components than distinct values: no NaN, covariances at the floor
    x = torch.cat([torch.zeros(30, 4, dtype=F64), torch.ones(2, 4, dtype=F64)])[None]
    init = torch.cat([torch.zeros(3, 4, dtype=F64), torch.full((1, 4), 5.0, dtype=F64)])[None]  # one far away
    mix, result = run_em(x, init, model, max_iter=10, tol=1e-6)
    assert torch.isfinite(mix.means).all() and torch.isfinite(mix.log_det).all()
    assert torch.isfinite(torch.stack(result.history)).all()
    assert mix.weights.sum().item() == pytest.approx(1.0)
    # the far component was empty, so it was re-seeded on a data point
    assert ((mix.means[0, 3] == 0) | (mix.means[0, 3] == 1)).all()


@pytest.mark.parametrize("model", ["hddc", "full"])
def test_empty_components_restart_on_the_points_explained_worst(model):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 40, 3, generator=g, dtype=F64)
    log_lik = torch.randn(1, 40, generator=g, dtype=F64)
    mix = isotropic(1, 3, 3, 1.0, full=model == "full", dtype=F64, device="cpu")
    mix = mix._replace(valid=torch.ones(1, 3, dtype=torch.bool), weights=torch.full((1, 3), 1 / 3, dtype=F64))
    resp = torch.zeros(1, 3, 40, dtype=F64)
    resp[:, 0] = 1.0  # slots 1 and 2 explain nothing
    new = m_step(Points.of(x), resp, log_lik, mix, model=model, reg=1e-6)
    worst = log_lik[0].argsort()[:2]
    assert torch.equal(new.means[0, 1:], x[0, worst])  # the j-th empty slot on the j-th worst point
    torch.testing.assert_close(new.means[0, 0], x[0].mean(0))
    torch.testing.assert_close(new.weights.sum(), torch.tensor(1.0, dtype=F64))


def test_factorisations_run_on_one_thread_and_restore_the_callers_setting(monkeypatch):
    # LAPACK splits a batch of small matrices over threads at a loss (module docstring)
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 10, 10, generator=g, dtype=F64)
    cov = a @ a.transpose(-1, -2)
    threads_seen = []
    for name in ("eigh", "cholesky_ex"):
        real = getattr(torch.linalg, name)

        def spy(*args, real=real, **kwargs):
            threads_seen.append(torch.get_num_threads())
            return real(*args, **kwargs)
        monkeypatch.setattr(torch.linalg, name, spy)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hddc_model(cov, torch.ones(6, dtype=torch.bool), reg=1e-6)
        full_model(cov, reg=1e-6)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert threads_seen == [1, 1]


def test_trimming_drops_only_slots_after_the_last_valid_one():
    mix = isotropic(2, 5, 3, 1.0, full=False, dtype=torch.float64, device="cpu")
    valid = torch.tensor([[True, False, True, False, False], [True, False, False, False, False]])  # a hole
    trimmed = mix._replace(valid=valid).trimmed()
    assert trimmed.n_slots == 3 and torch.equal(trimmed.valid, valid[:, :3])
