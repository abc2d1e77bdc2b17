"""Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

Definition and defaults of disentanglement_lib (``evaluation/metrics/mig.py`` with the
histogram discretiser, as the paper's authors bind it): 10,000 points drawn 16 at a time;
each code cut into 20 equal-width bins over its own sampled range; mutual information in
nats between every binned code and every factor; per factor, (largest - second largest MI)
divided by the factor's entropy; the score is the mean over factors.
"""

from __future__ import annotations

import numpy as np

from dydis.errors import DataError
from dydis.metrics._common import (
    check_codes,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
)
from dydis.metrics.ground_truth import GroundTruth


def mig(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_samples: int = 10_000,
    n_bins: int = 20,
    batch_size: int = 16,
) -> dict[str, float]:
    """Mutual Information Gap of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
    ground_truth : GroundTruth
    seed : int
    n_samples, n_bins, batch_size
        disentanglement_lib's ``mig`` / ``discretizer`` settings (10000, 20, 16).

    Returns
    -------
    dict
        ``mig``.
    """
    codes = check_codes(codes, ground_truth)
    if codes.shape[1] < 2:
        raise DataError(f"MIG needs at least two codes, found {codes.shape[1]}: it subtracts the second-best MI; "
                        "leave it out (--metrics)")
    rs = np.random.RandomState(seed)
    factors, rows = ground_truth.sample(n_samples, rs, batch_size=batch_size)
    mi = discrete_mutual_info(histogram_discretize(codes[rows], n_bins), factors)
    return {"mig": mig_from_mutual_info(mi, discrete_entropy(factors))}


def mig_from_mutual_info(mi: np.ndarray, entropy: np.ndarray) -> float:
    """Mean over factors of (top MI - second MI) / H(factor); ``mi`` is (n_codes, n_factors)."""
    top = np.sort(mi, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))
