"""Modularity and explicitness (Ridgeway & Mozer 2018, "Learning Deep Disentangled Embeddings
With the F-Statistic Loss", Section 3).

Definition and defaults of disentanglement_lib
(``evaluation/metrics/modularity_explicitness.py`` with the 20-bin histogram discretiser):
10,000 training and 5,000 test points drawn 16 at a time.

- Modularity: m (n_codes, n_factors) the mutual information of the binned training codes
  with the factors, as in MIG; per code 1 - (sum_j m_ij^2 - max_j m_ij^2) /
  (max_j m_ij^2 (K - 1)); a code with no information scores 0; the mean over codes.
- Explicitness: codes standardised with the training mean and std (ddof=0); per factor a
  scikit-learn ``LogisticRegression()`` (defaults) on all codes, and the macro average over
  classes of the one-vs-rest ROC-AUC of its test probabilities; the mean over factors
  (disentanglement_lib's ``explicitness_score_test``).

Differences from disentanglement_lib, only where it fails: a code that is constant over the
training points is standardised with std 1 (the reference divides by zero and the
regression rejects the NaNs), and a class absent from the test points is left out of the
macro average (the reference's one-hot columns then no longer line up with the
classifier's and ``roc_auc_score`` raises). ``LogisticRegression()`` is the installed
scikit-learn's default (lbfgs, multinomial, 100 iterations); its convergence warnings are
silenced, since the reference ran with the same limit.
"""

from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dydis.metrics._common import check_codes, discrete_mutual_info, histogram_discretize
from dydis.metrics.ground_truth import GroundTruth


def modularity_explicitness(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_train: int = 10_000,
    n_test: int = 5_000,
    n_bins: int = 20,
    batch_size: int = 16,
    n_jobs: int = -1,
) -> dict[str, float]:
    """Modularity and explicitness of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
    ground_truth : GroundTruth
    seed : int
    n_train, n_test, n_bins, batch_size
        disentanglement_lib's ``modularity_explicitness`` settings (10000, 5000, 20, 16).
    n_jobs : int
        Factors fitted in parallel for explicitness (joblib; -1 = all cores).

    Returns
    -------
    dict
        ``modularity``, ``explicitness``.
    """
    codes = check_codes(codes, ground_truth)
    rs = np.random.RandomState(seed)
    y_train, rows_train = ground_truth.sample(n_train, rs, batch_size=batch_size)
    y_test, rows_test = ground_truth.sample(n_test, rs, batch_size=batch_size)
    x_train, x_test = codes[rows_train], codes[rows_test]

    mi = discrete_mutual_info(histogram_discretize(x_train, n_bins), y_train)

    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # process-wide, so around the threads
        aucs = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(explicitness_per_factor)(x_train, y_train[:, j], x_test, y_test[:, j])
            for j in range(y_train.shape[1])
        )
    return {"modularity": modularity(mi), "explicitness": float(np.mean(aucs))}


def modularity(mutual_info: np.ndarray) -> float:
    """Mean over codes of the modularity of their MI row; ``mutual_info`` is (codes, factors)."""
    sq = np.square(mutual_info)
    top = sq.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_code = 1.0 - (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1.0))
    per_code[top == 0.0] = 0.0
    return float(np.mean(per_code))


def explicitness_per_factor(x_train, y_train, x_test, y_test) -> float:
    """Macro one-vs-rest test ROC-AUC of a default logistic regression on all codes."""
    clf = LogisticRegression().fit(x_train, y_train)
    proba = clf.predict_proba(x_test)
    onehot = (y_test[:, None] == clf.classes_[None, :]).astype(np.int64)
    present = (onehot.min(axis=0) == 0) & (onehot.max(axis=0) == 1)
    return float(roc_auc_score(onehot[:, present], proba[:, present], average="macro"))
