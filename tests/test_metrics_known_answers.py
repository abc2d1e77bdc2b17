"""Hand-built representations whose scores are known (issue 6, item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from dydis.metrics import (
    GroundTruth, dci, factor_vae, factor_vae_details, grid_factors, infomec, mig, modularity_explicitness,
    reduce_units, sap,
)

SIZES = (4, 5, 3, 6)
SMALL = {
    "factor_vae": dict(n_train=300, n_eval=200, n_variance=500),
    "dci": dict(n_train=250, n_test=200, n_jobs=2),
    "mig": dict(n_samples=1000),
    "sap": dict(n_train=500, n_test=300, n_jobs=2),
    "modularity": dict(n_train=400, n_test=300, n_jobs=2),
    "infomec": dict(n_samples=400, n_jobs=2),
}
FUNCS = {
    "factor_vae": factor_vae, "dci": dci, "mig": mig, "sap": sap,
    "modularity": modularity_explicitness, "infomec": infomec,
}


EXACTISH = dict(rel=1e-6, abs=1e-9)
# why: a small tree node can be split equally well on two codes, or at two thresholds of one
# code; the boosted trees take the first they visit, so reordering or mirroring codes moves
# some importance between codes. disentanglement_lib shares this (there the visiting order
# is even random from run to run).
TOLERANCE = {"dci": dict(abs=0.01)}


def run(name, codes, gt, **kw):
    return FUNCS[name](codes, gt, **{**SMALL[name], **kw})


@pytest.fixture(scope="module")
def grid():
    factors = grid_factors(SIZES)
    return GroundTruth(factors, SIZES), factors.astype(np.float64)


def plugin_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information in nats from the joint counts of two label arrays."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))


def test_identity_codes_score_one_on_factor_vae(grid):
    gt, identity = grid
    assert run("factor_vae", identity, gt) == {"factor_vae": 1.0, "factor_vae_active": 4.0}


def test_factor_vae_votes_show_two_factors_sharing_a_code(grid):
    """Code 0 holds factors 0 and 1 together: fixing either halves its variance, so both factors'
    votes go to it, the majority vote gives it to one of them and the score stops near 3/4."""
    gt, identity = grid
    standard = (identity - identity.mean(0)) / identity.std(0)
    rng = np.random.default_rng(0)
    codes = np.column_stack([standard[:, 0] + standard[:, 1], rng.normal(size=len(identity)),
                             standard[:, 2], standard[:, 3], np.zeros(len(identity))])  # code 4 is dead
    d = factor_vae_details(codes, gt, **SMALL["factor_vae"])
    votes = d["votes"]
    assert votes.shape == (4, 5) and votes.sum() == SMALL["factor_vae"]["n_eval"]
    assert (votes[:2, 1:] == 0).all() and (votes[2:, 0] == 0).all()  # factors 0 and 1 vote for code 0 only
    assert votes[2, 2] == votes[2].sum() and votes[3, 3] == votes[3].sum()
    assert (votes[:, 4] == 0).all() and d["factor_vae_active"] == 4.0
    assert d["factor_vae"] == pytest.approx((votes[:2, 0].max() + votes[2:].sum()) / votes.sum())
    assert d["factor_vae"] == pytest.approx(0.75, abs=0.08)
    assert factor_vae(codes, gt, **SMALL["factor_vae"]) == {k: d[k] for k in ("factor_vae", "factor_vae_active")}


def test_identity_codes_have_dci_near_one(grid):
    gt, identity = grid
    s = run("dci", identity, gt)
    assert s["dci_disentanglement"] > 0.999
    assert s["dci_completeness"] > 0.999
    assert s["dci_informativeness"] == 1.0


def test_random_rotation_lowers_dci_disentanglement(grid):
    gt, identity = grid
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    rotated = (identity / np.array(SIZES)) @ q
    s = run("dci", rotated, gt)
    assert s["dci_disentanglement"] < 0.6
    assert s["dci_completeness"] < 0.6


def test_identity_mig_is_entropy_minus_second_mi_by_hand(grid):
    gt, identity = grid
    factors, _ = gt.sample(1000, np.random.RandomState(0), batch_size=16)
    # identity codes keep their classes through the 20 bins, so MI(code j, factor i) is the
    # plug-in MI between the sampled factors i and j, and MI(code j, factor j) = H(factor j)
    expected = []
    for j in range(len(SIZES)):
        h = plugin_mi(factors[:, j], factors[:, j])
        second = max(plugin_mi(factors[:, i], factors[:, j]) for i in range(len(SIZES)) if i != j)
        expected.append((h - second) / h)
    assert run("mig", identity, gt)["mig"] == pytest.approx(np.mean(expected), rel=1e-10)
    assert 0.9 < np.mean(expected) < 1.0


def test_duplicated_code_has_zero_gap_for_its_factor(grid):
    gt, identity = grid
    dup = np.concatenate([identity, identity[:, :1]], axis=1)  # factor 0 twice
    s_mig = run("mig", dup, gt)["mig"]
    s_sap = run("sap", dup, gt)["sap"]
    # factor 0's gap vanishes, the others' stay: the mean drops by about a quarter
    assert s_mig == pytest.approx(run("mig", identity, gt)["mig"] * 3 / 4, abs=0.02)
    assert s_sap < run("sap", identity, gt)["sap"]


def test_permuting_codes_changes_no_metric(grid):
    gt, identity = grid
    rng = np.random.default_rng(1)
    codes = identity @ rng.normal(size=(4, 6)) * 0.3 + identity.repeat(2, axis=1)[:, :6]
    codes += 0.2 * rng.normal(size=codes.shape)
    perm = np.array([3, 0, 5, 1, 4, 2])
    for name in FUNCS:
        a, b = run(name, codes, gt), run(name, codes[:, perm], gt)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], **TOLERANCE.get(name, EXACTISH)), (name, key)


def test_dead_code_lowers_modularity_but_not_factor_vae(grid):
    gt, identity = grid
    noisy = identity + 0.2 * np.random.default_rng(2).normal(size=identity.shape)
    dead = np.concatenate([noisy, np.full((len(noisy), 1), 3.0)], axis=1)
    assert run("factor_vae", dead, gt)["factor_vae"] == run("factor_vae", noisy, gt)["factor_vae"]
    assert run("factor_vae", dead, gt)["factor_vae_active"] == 4.0
    m_alive = run("modularity", noisy, gt)["modularity"]
    m_dead = run("modularity", dead, gt)["modularity"]
    assert m_dead == pytest.approx(m_alive * 4 / 5, rel=1e-12)  # the dead code scores 0


def test_sign_and_scale_leave_invariant_metrics_unchanged(grid):
    gt, identity = grid
    noisy = identity + 0.3 * np.random.default_rng(3).normal(size=identity.shape)
    flipped = noisy * np.array([-1.0, 2.0, -0.5, 4.0])  # powers of two: exact in floating point
    fv = run("factor_vae", noisy, gt)
    assert run("factor_vae", flipped, gt) == fv
    assert run("mig", flipped, gt)["mig"] == pytest.approx(run("mig", noisy, gt)["mig"], abs=0.01)
    a, b = run("dci", noisy, gt), run("dci", flipped, gt)
    for key in a:
        assert b[key] == pytest.approx(a[key], **TOLERANCE["dci"])
    a, b = run("modularity", noisy, gt), run("modularity", flipped, gt)
    assert b["explicitness"] == pytest.approx(a["explicitness"], rel=1e-6)
    assert b["modularity"] == pytest.approx(a["modularity"], abs=0.01)


def test_pca_reduction_is_sign_and_scale_equivariant(grid):
    gt, identity = grid
    rng = np.random.default_rng(4)
    n, d = len(identity), 8
    directions = rng.normal(size=(4, d))
    units = identity[:, :, None] * directions[None] + 0.1 * rng.normal(size=(n, 4, d))
    codes = reduce_units(units, "pca")
    assert codes.shape == (n, 4)
    scale = np.array([-1.0, 3.0, 0.5, -2.0])
    codes2 = reduce_units(units * scale[None, :, None], "pca")
    # the covariance, hence the loading, ignores the sign; the scores keep it
    np.testing.assert_allclose(codes2, codes * scale, rtol=1e-8, atol=1e-8)
    for name in ("factor_vae", "dci", "infomec"):
        a, b = run(name, codes, gt), run(name, codes2, gt)
        for key in a:
            assert b[key] == pytest.approx(a[key], **TOLERANCE.get(name, dict(rel=1e-6))), (name, key)
    # one-dimensional units: PCA(1) is the centred value
    np.testing.assert_allclose(np.abs(reduce_units(identity[:, :2], "pca")),
                               np.abs(identity[:, :2] - identity[:, :2].mean(0)), atol=1e-10)


def test_identity_codes_on_a_subset_of_the_grid():
    factors = grid_factors(SIZES)
    keep = np.random.default_rng(5).random(len(factors)) < 0.7  # 30% of the combinations missing
    gt = GroundTruth(factors[keep], SIZES)
    identity = factors[keep].astype(np.float64)
    assert gt.layout == "subset"
    assert run("factor_vae", identity, gt) == {"factor_vae": 1.0, "factor_vae_active": 4.0}
    assert run("dci", identity, gt)["dci_disentanglement"] > 0.99
