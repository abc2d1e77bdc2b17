"""The fast boosted trees behind DCI against scikit-learn's GradientBoostingClassifier()."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from dydis.metrics import GroundTruth, dci, grid_factors
from dydis.metrics._gbt import fit_boosted_classifier, presort


def compare(x, y, seed=0):
    ref = GradientBoostingClassifier(random_state=seed).fit(x, y)
    ours = fit_boosted_classifier(presort(x), y, random_state=seed)
    return ref, ours


@pytest.mark.parametrize("seed", [0, 3])
def test_duplicated_codes_share_importance_exactly_like_sklearn(seed):
    # every split ties between the copies of `a`; only the splitter's random feature order,
    # which we replay, decides which copy gets it
    rng = np.random.default_rng(seed)
    a = rng.normal(size=150)
    x = np.stack([a, a, rng.normal(size=150), a, np.zeros(150)], axis=1)
    y = np.digitize(a + 0.3 * rng.normal(size=150), [-0.5, 0.5])
    ref, ours = compare(x, y, seed)
    np.testing.assert_allclose(ours.feature_importances, ref.feature_importances_, atol=2e-3)
    assert ours.feature_importances[4] == 0.0
    assert np.argsort(ours.feature_importances).tolist() == np.argsort(ref.feature_importances_).tolist()


def test_first_stages_are_sklearns_trees():
    # before rounding differences can accumulate, every tree is scikit-learn's, node for node
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=(300, 4)) * 2) / 2
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=300), [-1, 0, 1])
    ref, ours = compare(x, y)
    for stage in range(5):
        for k in range(4):
            theirs, mine = ref.estimators_[stage, k].tree_, ours.trees[stage][k]
            np.testing.assert_array_equal(np.where(mine.feature < 0, -2, mine.feature), theirs.feature)
            np.testing.assert_array_equal(mine.threshold[mine.feature >= 0],
                                          theirs.threshold[theirs.feature >= 0])
            leaves = theirs.feature < 0
            np.testing.assert_allclose(mine.value[leaves], theirs.value[leaves, 0, 0], rtol=1e-9)
    np.testing.assert_allclose(ours.feature_importances, ref.feature_importances_, atol=2e-3)
    assert np.mean(ours.predict(x) == ref.predict(x)) > 0.98


def test_binary_target():
    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=(200, 3)) * 3) / 3
    y = np.where(x[:, 0] + 0.5 * rng.normal(size=200) > 0, "b", "a")
    ref, ours = compare(x, y)
    # two residual values at the first stage: many splits tie exactly and are decided by
    # rounding, so trees differ early; the classifier and the importances do not
    assert np.mean(ours.predict(x) == ref.predict(x)) > 0.95
    np.testing.assert_allclose(ours.feature_importances, ref.feature_importances_, atol=0.02)


def test_continuous_codes_agree_up_to_rounding_ties():
    # split gains that are equal up to the last bits may go either way (scikit-learn's own
    # choice there depends on its in-place sort order); predictions and importances agree
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    y = np.digitize(x[:, 0] * 2 + x[:, 1] + rng.normal(size=400), [-1, 1])
    ref, ours = compare(x, y)
    x_test = rng.normal(size=(400, 5))
    assert np.mean(ours.predict(x_test) == ref.predict(x_test)) > 0.97
    np.testing.assert_allclose(ours.feature_importances, ref.feature_importances_, atol=0.01)


def test_dci_backends_agree_on_a_grid():
    sizes = (3, 4, 5)
    factors = grid_factors(sizes)
    codes = factors + 0.25 * np.random.default_rng(4).normal(size=factors.shape)
    gt = GroundTruth(factors, sizes)
    fast = dci(codes, gt, n_train=250, n_test=200, backend="fast", n_jobs=1)
    slow = dci(codes, gt, n_train=250, n_test=200, backend="sklearn", n_jobs=1)
    for key in fast:
        assert fast[key] == pytest.approx(slow[key], abs=5e-3), key
