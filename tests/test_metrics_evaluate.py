"""evaluate(): the flat result dict, per-metric seeds, reductions, inputs it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dydis.errors import ConfigError, DataError
from dydis.metrics import GroundTruth, evaluate, grid_factors, mig, reduce_units, sap
from dydis.metrics.evaluate import SCORE_KEYS

SIZES = (3, 4, 5)
QUICK = {
    "factor_vae": dict(n_train=200, n_eval=100, n_variance=300),
    "dci": dict(n_train=200, n_test=100),
    "mig": dict(n_samples=300),
    "sap": dict(n_train=200, n_test=100),
    "modularity": dict(n_train=300, n_test=200),
    "infomec": dict(n_samples=300),
}
GRID_KEYS = {
    "factor_vae", "factor_vae_active", "dci_disentanglement", "dci_completeness",
    "dci_informativeness", "mig", "sap", "modularity", "explicitness", "infom", "infoe", "infoc",
}


@pytest.fixture(scope="module")
def data():
    factors = grid_factors(SIZES)
    rng = np.random.default_rng(0)
    codes = factors + 0.2 * rng.normal(size=factors.shape)
    return GroundTruth(factors, SIZES), np.concatenate([codes, rng.normal(size=(len(codes), 1))], 1)


def test_all_grid_metrics_give_a_flat_json_dict(data):
    gt, codes = data
    scores = evaluate(codes, gt, options=QUICK, n_jobs=2)
    assert set(scores) == GRID_KEYS and GRID_KEYS | {"tad", "tad_captured", "fid"} == set(SCORE_KEYS)
    assert all(isinstance(v, float) for v in scores.values())
    json.dumps(scores)
    assert scores.arrays["dci_importance"].shape == (4, 3)
    assert scores.arrays["dci_test_accuracy"].mean() == scores["dci_informativeness"]
    assert scores.arrays["infomec_nmi"].shape == (3, 4)
    assert set(scores.timings) == {"factor_vae", "dci", "mig", "sap", "modularity", "infomec"}
    assert scores["factor_vae"] == 1.0 and scores["dci_informativeness"] > 0.9


def test_each_metric_has_its_own_random_state(data):
    gt, codes = data
    alone = evaluate(codes, gt, metrics="mig", options=QUICK)
    together = evaluate(codes, gt, metrics=["sap", "mig"], options=QUICK, n_jobs=1)
    assert alone["mig"] == together["mig"] == mig(codes, gt, **QUICK["mig"])["mig"]
    assert together["sap"] == sap(codes, gt, **QUICK["sap"])["sap"]
    assert evaluate(codes, gt, metrics="mig", seed=1, options=QUICK)["mig"] != alone["mig"]


def test_vector_units_are_reduced_first(data):
    gt, codes = data
    rng = np.random.default_rng(1)
    units = codes[:, :, None] * rng.normal(size=(1, 4, 3)) + 0.01 * rng.normal(size=(len(codes), 4, 3))
    via_units = evaluate(units, gt, metrics="mig,factor_vae", options=QUICK)
    via_codes = evaluate(reduce_units(units, "pca"), gt, metrics="mig,factor_vae", options=QUICK)
    assert dict(via_units) == dict(via_codes)
    flat = evaluate(units, gt, metrics="factor_vae", reduce="none", options=QUICK)
    assert flat["factor_vae_active"] > 4  # 12 codes, minus any with std < 0.05


def test_tad_and_fid_without_ground_truth():
    rng = np.random.default_rng(2)
    attr = (rng.random((300, 3)) < 0.5).astype(int) * 2 - 1
    codes = attr + 0.3 * rng.normal(size=attr.shape)
    feats = rng.normal(size=(50, 4))
    scores = evaluate(codes, attributes=attr, fid_features=(feats, feats + 1.0))
    assert set(scores) == {"tad", "tad_captured", "fid"}
    assert scores["tad_captured"] == 3.0
    assert scores["fid"] == pytest.approx(4.0, rel=1e-9)
    assert scores.arrays["tad_auroc"].shape == (3, 3)


def test_refuses_what_it_cannot_compute(data):
    gt, codes = data
    with pytest.raises(ConfigError, match="unknown metrics"):
        evaluate(codes, gt, metrics="beta_vae")
    with pytest.raises(ConfigError, match="ground-truth"):
        evaluate(codes, metrics="dci")
    with pytest.raises(ConfigError, match="attributes"):
        evaluate(codes, gt, metrics="tad")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate(codes)
    with pytest.raises(ConfigError, match="reduce"):
        evaluate(codes, gt, metrics="mig", reduce="mean")
    with pytest.raises(DataError, match="aligned"):
        evaluate(codes[:-1], gt, metrics="mig")
    bad = codes.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate(bad, gt, metrics="mig")
    with pytest.raises(DataError, match="codes reach [0-9.]+e\\+300 in magnitude, beyond float32's range"):
        sap(codes * 1e300, gt, n_jobs=1, **QUICK["sap"])  # liblinear once looped for over 10 minutes on these


def test_codes_large_within_float32_give_the_scores_of_their_rescaled_selves(data):
    gt, codes = data
    metrics = ("mig", "dci", "factor_vae", "modularity", "infomec")  # SAP's SVM is not scale-free (C=0.01)
    options = {m: QUICK[m] for m in metrics}
    large = evaluate(codes * 1e37, gt, metrics=metrics, n_jobs=1, options=options)
    assert large == pytest.approx(evaluate(codes, gt, metrics=metrics, n_jobs=1, options=options))


def test_reduce_units_modes():
    units = np.random.default_rng(3).normal(size=(20, 3, 4)).astype(np.float32)
    assert reduce_units(units).shape == (20, 3) and reduce_units(units).dtype == np.float32
    assert reduce_units(units, "none").shape == (20, 12)
    scalars = units[:, :, 0]
    assert reduce_units(scalars, "scalar") is scalars
    with pytest.raises(DataError, match="scalar"):
        reduce_units(units, "scalar")


def test_a_constant_factor_is_a_clear_error():
    from dydis.errors import DataError

    factors = np.stack(np.meshgrid(np.arange(3), np.arange(1), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    truth = GroundTruth(factors, (3, 1, 4))
    with pytest.raises(DataError, match=r"factors \[1\] take a single value"):
        evaluate(factors.astype(float), truth, metrics=["mig"])
