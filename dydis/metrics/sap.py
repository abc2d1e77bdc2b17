"""SAP score (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from
Unlabeled Observations", Section 3), discrete factors.

Definition and defaults of disentanglement_lib (``evaluation/metrics/sap_score.py`` with
``continuous_factors=False``, as the paper's authors run it): 10,000 training and 5,000 test
points drawn 16 at a time; the score matrix S (n_codes, n_factors) holds the test accuracy of
``LinearSVC(C=0.01, class_weight="balanced")`` trained on one code alone to predict one
factor; per factor, best minus second-best accuracy; the score is the mean over factors.

Differences from disentanglement_lib: codes are fitted in parallel (joblib threads;
liblinear releases the GIL), and ``LinearSVC`` gets ``random_state=seed``: liblinear's
solver shuffles with it, and the reference leaves it to numpy's global random state.
The solver is scikit-learn's default of the installed version (``dual="auto"``).
"""

from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from dydis.errors import DataError
from dydis.metrics._common import check_codes
from dydis.metrics.ground_truth import GroundTruth


def sap(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_train: int = 10_000,
    n_test: int = 5_000,
    batch_size: int = 16,
    n_jobs: int = -1,
) -> dict[str, float]:
    """SAP score of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
    ground_truth : GroundTruth
    seed : int
    n_train, n_test, batch_size
        disentanglement_lib's ``sap_score`` settings (10000, 5000, 16).
    n_jobs : int
        Codes fitted in parallel (joblib; -1 = all cores).

    Returns
    -------
    dict
        ``sap``.
    """
    return {"sap": sap_from_matrix(sap_score_matrix(
        codes, ground_truth, seed=seed, n_train=n_train, n_test=n_test,
        batch_size=batch_size, n_jobs=n_jobs,
    ))}


def sap_score_matrix(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_train: int = 10_000,
    n_test: int = 5_000,
    batch_size: int = 16,
    n_jobs: int = -1,
) -> np.ndarray:
    """Test accuracy of a one-code linear SVM per (code, factor), shape (n_codes, n_factors)."""
    codes = check_codes(codes, ground_truth)
    if codes.shape[1] < 2:
        raise DataError(f"SAP needs at least two codes, found {codes.shape[1]}: it subtracts the second-best "
                        "accuracy; leave it out (--metrics)")
    rs = np.random.RandomState(seed)
    y_train, rows_train = ground_truth.sample(n_train, rs, batch_size=batch_size)
    y_test, rows_test = ground_truth.sample(n_test, rs, batch_size=batch_size)
    x_train, x_test = codes[rows_train], codes[rows_test]
    with warnings.catch_warnings():
        # why: liblinear often stops at max_iter on weakly informative codes; the reference
        # ran with the same limit, so the warning carries no news. Set here, around the
        # threads, because warning filters are process-wide.
        warnings.simplefilter("ignore", ConvergenceWarning)
        columns = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(_score_code)(x_train[:, i], y_train, x_test[:, i], y_test, seed)
            for i in range(codes.shape[1])
        )
    return np.stack(columns)


def _score_code(x_train, y_train, x_test, y_test, seed) -> np.ndarray:
    scores = np.zeros(y_train.shape[1])
    for j in range(y_train.shape[1]):
        clf = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
        clf.fit(x_train[:, None], y_train[:, j])
        scores[j] = np.mean(clf.predict(x_test[:, None]) == y_test[:, j])
    return scores


def sap_from_matrix(score_matrix: np.ndarray) -> float:
    """Mean over factors of best minus second-best score; ``score_matrix`` is (codes, factors)."""
    top = np.sort(score_matrix, axis=0)
    return float(np.mean(top[-1] - top[-2]))
