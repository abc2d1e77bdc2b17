"""Helpers shared by the metrics: input checks, the histogram discretiser, discrete MI,
mean and spread across runs.

The discretiser and the mutual information follow disentanglement_lib's
``evaluation/metrics/utils.py`` (``_histogram_discretize``, ``discrete_mutual_info``,
``discrete_entropy``), transposed to our samples-first layout.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mutual_info_score

from dydis.errors import DataError
from dydis.metrics.ground_truth import GroundTruth


# The largest code magnitude the metrics evaluate: float32's. scikit-learn's trees and ours (DCI,
# the downstream GBT) compare features as float32, where larger values become infinite, and
# liblinear's SVM (SAP) overflows to NaN on codes of about 1e80 and then never stops.
MAX_ABS_CODE = float(np.finfo(np.float32).max)


def check_values(codes: np.ndarray) -> None:
    """DataError unless every value is finite and within +-MAX_ABS_CODE."""
    if not np.isfinite(codes).all():
        raise DataError("codes contain NaN or infinite values; replace them (np.nan_to_num) first")
    largest = float(np.abs(codes).max()) if codes.size else 0.0
    if largest > MAX_ABS_CODE:
        raise DataError(f"codes reach {largest:.3g} in magnitude, beyond float32's range ({MAX_ABS_CODE:.3g}) "
                        "that the metrics compute in; rescale the representation")


def check_codes(codes: np.ndarray, ground_truth: GroundTruth | None = None) -> np.ndarray:
    """Validate a representation (n_rows, n_codes), aligned with the ground truth's rows.

    The dtype is kept as given: disentanglement_lib computes the histograms and variances in
    the representation's own dtype, and float32 codes give (slightly) different bin edges
    than their float64 copies would.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(
            f"codes must be (n_rows, n_codes), got shape {codes.shape}; reduce vector units "
            "with dydis.metrics.reduce_units first"
        )
    if not (np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)):
        raise DataError(f"codes must be numeric, got dtype {codes.dtype}")
    if np.issubdtype(codes.dtype, np.integer):
        codes = codes.astype(np.float64)
    if ground_truth is not None and codes.shape[0] != ground_truth.n_rows:
        raise DataError(
            f"codes have {codes.shape[0]} rows but the ground truth has {ground_truth.n_rows}; "
            "the representation must be aligned with the dataset rows"
        )
    check_values(codes)
    return codes


def histogram_discretize(codes: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Bin each code into ``n_bins`` equal-width bins over its own range, values 1..n_bins.

    disentanglement_lib's ``_histogram_discretize``: ``np.digitize`` against the left edges of
    ``np.histogram(code, n_bins)``, so the maximum falls in bin ``n_bins`` and a constant code
    in bin ``n_bins`` too (numpy widens a zero range to +-0.5).

    Parameters
    ----------
    codes : (n_samples, n_codes) float
    n_bins : int

    Returns
    -------
    (n_samples, n_codes) int64
    """
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, i], n_bins)
        out[:, i] = np.digitize(codes[:, i], edges[:-1])
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mutual information in nats between each discretised code and each factor.

    scikit-learn's ``mutual_info_score`` per pair, as in disentanglement_lib.

    Returns
    -------
    (n_codes, n_factors) float64
    """
    n_codes, n_factors = discrete_codes.shape[1], factors.shape[1]
    m = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            m[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """Entropy in nats of each factor, (n_factors,), as ``mutual_info_score(y, y)``."""
    return np.array([mutual_info_score(y, y) for y in factors.T])


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof 0, 0 for one run) of each score across runs.

    The paper's tables report mean ± std over models or seeds; eval-metrics and the downstream
    task both summarise their runs this way.
    """
    keys = list(dict.fromkeys(k for r in runs for k in r))
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
            for k in keys}
