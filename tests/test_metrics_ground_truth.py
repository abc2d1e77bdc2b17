"""GroundTruth: exact lookup on full grids, matching draws on subsets, the reference's stream."""

from __future__ import annotations

import numpy as np
import pytest

from dydis.errors import DataError
from dydis.metrics import GroundTruth, grid_factors

SIZES = (3, 4, 2, 5)


def test_grid_factors_are_canonical_order():
    f = grid_factors(SIZES)
    assert f.shape == (120, 4)
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(f.T), SIZES), np.arange(120))
    np.testing.assert_array_equal(f[1], [0, 0, 0, 1])  # last factor fastest


def test_canonical_grid_lookup_is_ravel_index_and_draws_like_the_reference():
    gt = GroundTruth(grid_factors(SIZES), SIZES)
    assert gt.layout == "canonical" and gt.is_full_grid
    factors = gt.sample_factors(50, np.random.RandomState(0))
    rs = np.random.RandomState(0)  # disentanglement_lib: one randint per factor, in order
    expected = np.stack([rs.randint(s, size=50) for s in SIZES], axis=1)
    np.testing.assert_array_equal(factors, expected)
    np.testing.assert_array_equal(gt.rows_of(factors), np.ravel_multi_index(tuple(factors.T), SIZES))


def test_batched_sample_repeats_the_reference_batches():
    gt = GroundTruth(grid_factors(SIZES), SIZES)
    factors, rows = gt.sample(40, np.random.RandomState(0), batch_size=16)
    rs = np.random.RandomState(0)
    parts = [np.stack([rs.randint(s, size=m) for s in SIZES], axis=1) for m in (16, 16, 8)]
    np.testing.assert_array_equal(factors, np.concatenate(parts))
    np.testing.assert_array_equal(gt.factors[rows], factors)
    # unbatched draws differ: the batching decides which numbers land on which factor
    assert not np.array_equal(gt.sample(40, np.random.RandomState(0))[0], factors)


def test_shuffled_full_grid_uses_a_lookup_table():
    perm = np.random.default_rng(0).permutation(120)
    gt = GroundTruth(grid_factors(SIZES)[perm], SIZES)
    assert gt.layout == "grid"
    factors, rows = gt.sample(200, np.random.RandomState(1))
    np.testing.assert_array_equal(gt.factors[rows], factors)
    # same draws as the canonical grid: only the row numbers differ
    canonical = GroundTruth(grid_factors(SIZES), SIZES)
    np.testing.assert_array_equal(canonical.sample(200, np.random.RandomState(1))[0], factors)


def test_fixed_factor_batch_matches_reference_on_grid():
    gt = GroundTruth(grid_factors(SIZES), SIZES)
    factors, rows = gt.sample_with_fixed_factor(64, 2, np.random.RandomState(0))
    rs = np.random.RandomState(0)
    expected = np.stack([rs.randint(s, size=64) for s in SIZES], axis=1)
    expected[:, 2] = expected[0, 2]
    np.testing.assert_array_equal(factors, expected)
    np.testing.assert_array_equal(gt.factors[rows], factors)


def test_subset_draws_only_existing_rows_and_matches_fixed_factor():
    full = grid_factors(SIZES)
    keep = np.random.default_rng(0).random(len(full)) < 0.6
    gt = GroundTruth(full[keep], SIZES)
    assert gt.layout == "subset" and not gt.is_full_grid
    rs = np.random.RandomState(0)
    factors, rows = gt.sample(500, rs, batch_size=16)
    np.testing.assert_array_equal(gt.factors[rows], factors)
    for k in range(len(SIZES)):
        f, r = gt.sample_with_fixed_factor(64, k, rs)
        np.testing.assert_array_equal(gt.factors[r], f)
        assert (f[:, k] == f[0, k]).all()
    missing = full[~keep][0]
    with pytest.raises(DataError, match="no row"):
        gt.rows_of(missing[None, :])


def test_subset_with_repeats_draws_among_matching_rows():
    full = grid_factors((2, 3))
    factors = np.concatenate([full, full[:2]])  # rows 6, 7 repeat rows 0, 1
    gt = GroundTruth(factors, (2, 3))
    rows = gt.rows_of(np.repeat(full[:1], 400, axis=0), np.random.RandomState(0))
    assert set(rows.tolist()) == {0, 6}
    assert 100 < (rows == 6).sum() < 300
    np.testing.assert_array_equal(gt.rows_of(full[2:3], np.random.RandomState(0)), [2])


@pytest.mark.parametrize(
    "factors, sizes, match",
    [
        (np.zeros((4,), dtype=int), (2,), "n_rows, n_factors"),
        (np.zeros((4, 2), dtype=int), (2,), "columns"),
        (np.full((4, 1), 2), (2,), r"\[0, size\)"),
        (np.full((4, 1), 0.5), (2,), "integer"),
    ],
)
def test_bad_factors_raise_data_error(factors, sizes, match):
    with pytest.raises(DataError, match=match):
        GroundTruth(factors, sizes)
