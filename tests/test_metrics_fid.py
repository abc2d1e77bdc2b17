"""FID: zero for identical sets, equal to the scipy.linalg.sqrtm formula, features batched."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dydis.errors import DataError
from dydis.metrics import compute_features, feature_statistics, fid, frechet_distance
from dydis.metrics.fid import reference_statistics


def sqrtm_fid(mu1, s1, mu2, s2):
    """The pytorch-fid formula with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_identical_feature_sets_have_zero_fid():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert fid(x, x)["fid"] == pytest.approx(0.0, abs=1e-9)


def test_matches_scipy_sqrtm_formula_on_random_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 0.5
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    expected = sqrtm_fid(*stats_a, *stats_b)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-9)
    assert fid(a, b)["fid"] == pytest.approx(expected, rel=1e-9)
    assert expected > 1.0


def test_one_dimensional_gaussians_closed_form():
    # FID of N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == (
        pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2))


def test_compute_features_with_an_injected_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    images = np.random.default_rng(2).integers(0, 256, size=(23, 8, 8, 3), dtype=np.uint8)
    seen = []
    feats = compute_features(images, net, batch_size=10, progress=seen.append)
    assert feats.shape == (23, 5) and seen == [10, 20, 23]
    with torch.no_grad():
        direct = net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).double().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-6, atol=1e-6)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (n, 3, h, w) float input
    np.testing.assert_allclose(compute_features(floats, net, batch_size=7), feats, rtol=1e-6, atol=1e-6)


def test_mismatched_features_raise():
    with pytest.raises(DataError):
        fid(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(DataError):
        feature_statistics(np.zeros((1, 3)))


def test_small_sets_take_the_cross_product_route_to_the_same_value():
    rng = np.random.default_rng(3)
    real, generated = rng.normal(size=(12, 40)), rng.normal(0.3, 1.2, size=(9, 40))
    via_covariances = frechet_distance(*feature_statistics(real), *feature_statistics(generated))
    # rel 1e-6: the d x d route takes square roots of ~1e-16 round-off eigenvalues of the rank-deficient product
    assert fid(real, generated)["fid"] == pytest.approx(via_covariances, rel=1e-6)


@pytest.mark.parametrize("n_real, n_generated", [(12, 9), (60, 9), (12, 60), (60, 70)])
def test_reference_statistics_stand_in_for_the_real_features(n_real, n_generated):
    rng = np.random.default_rng(4)
    real, generated = rng.normal(size=(n_real, 40)), rng.normal(0.3, 1.2, size=(n_generated, 40))
    kept = reference_statistics(real)
    assert set(kept) == ({"features"} if n_real < 40 else {"mu", "sigma"})
    assert fid(kept, generated) == fid(real, generated)  # the same route, so the same rounding
