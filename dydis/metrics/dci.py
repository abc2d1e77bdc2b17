"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018).

Definition and defaults of disentanglement_lib (``evaluation/metrics/dci.py``):

- 10,000 training and 5,000 test points, drawn 16 at a time;
- per factor, one scikit-learn ``GradientBoostingClassifier()`` with default settings on the
  raw codes; the importance matrix R (n_codes, n_factors) holds ``|feature_importances_|``;
- disentanglement = sum_i rho_i (1 - H_K(P_i)), P_i the row i of R normalised, H_K the entropy
  in base K (number of factors), rho_i code i's share of the total importance;
- completeness = the same on the columns, entropy in base L (number of codes);
- informativeness = mean test accuracy over factors (disentanglement_lib's
  ``informativeness_test``).

Entropies add 1e-11 to every entry before normalising, as the reference does, so a row of
zeros counts as uniform.

The boosted trees (``backend``):

- ``"fast"`` (default): the same algorithm grown from presorted columns
  (``dydis.metrics._gbt``): same split rule, same random feature order, same leaf values and
  importances, several times faster. Sums are rounded in a different order, so splits whose
  gains are equal up to the last bits can go the other way. scikit-learn's own choice there
  depends on its random feature order, which disentanglement_lib leaves unseeded: on the
  benchmark's codes (2,000 training points) fast and scikit-learn (seed 0) differ by 3e-4 in
  disentanglement and 1e-4 in completeness, less than scikit-learn's seeds 0, 1 and 2 differ
  from each other (6e-4, 9e-4).
- ``"sklearn"``: scikit-learn's ``GradientBoostingClassifier(random_state=seed)`` itself,
  5-7x slower (on 480,000 rows x 20 codes, 2 cores: 144 s, against disentanglement_lib's
  unseeded reference whose own reruns differ at the 1e-4 level).

Differences from disentanglement_lib: the factors are fitted in parallel (joblib threads),
and the boosting gets ``random_state=seed`` instead of ``None``, so that reruns are
identical; the random state only orders the features the trees visit, which breaks ties
between equally good splits.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier

from dydis.errors import ConfigError
from dydis.metrics._common import check_codes
from dydis.metrics._gbt import fit_boosted_classifier, presort
from dydis.metrics.ground_truth import GroundTruth

BACKENDS = ("fast", "sklearn")


class DCIFit(NamedTuple):
    """Everything DCI derives its scores from."""

    importance: np.ndarray  # (n_codes, n_factors), |feature_importances_| per factor
    train_accuracy: np.ndarray  # (n_factors,)
    test_accuracy: np.ndarray  # (n_factors,)


def dci(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_train: int = 10_000,
    n_test: int = 5_000,
    batch_size: int = 16,
    n_jobs: int = -1,
    backend: str = "fast",
) -> dict[str, float]:
    """DCI disentanglement, completeness and informativeness of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
    ground_truth : GroundTruth
    seed : int
    n_train, n_test, batch_size
        disentanglement_lib's ``dci`` settings (10000, 5000, 16).
    n_jobs : int
        Factors fitted in parallel (joblib; -1 = all cores).
    backend : {"fast", "sklearn"}
        ``"fast"`` (default) grows scikit-learn's trees from presorted columns
        (``dydis.metrics._gbt``), several times faster, with rounding-level differences (see the
        module docstring); ``"sklearn"`` fits ``GradientBoostingClassifier`` itself.

    Returns
    -------
    dict
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``.
    """
    fit = dci_importance(
        codes, ground_truth, seed=seed, n_train=n_train, n_test=n_test,
        batch_size=batch_size, n_jobs=n_jobs, backend=backend,
    )
    return dci_scores(fit)


def dci_scores(fit: DCIFit) -> dict[str, float]:
    """The three DCI numbers of a fitted importance matrix."""
    return {
        "dci_disentanglement": disentanglement(fit.importance),
        "dci_completeness": completeness(fit.importance),
        "dci_informativeness": float(np.mean(fit.test_accuracy)),
    }


def dci_importance(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_train: int = 10_000,
    n_test: int = 5_000,
    batch_size: int = 16,
    n_jobs: int = -1,
    backend: str = "fast",
) -> DCIFit:
    """Sample the train/test sets and fit one gradient-boosted classifier per factor.

    Returns
    -------
    DCIFit
        ``importance`` (n_codes, n_factors) and per-factor train/test accuracies.
    """
    codes = check_codes(codes, ground_truth)
    rs = np.random.RandomState(seed)
    y_train, rows_train = ground_truth.sample(n_train, rs, batch_size=batch_size)
    y_test, rows_test = ground_truth.sample(n_test, rs, batch_size=batch_size)
    return fit_factor_classifiers(codes[rows_train], y_train, codes[rows_test], y_test,
                                  seed=seed, n_jobs=n_jobs, backend=backend)


def fit_factor_classifiers(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    seed: int = 0,
    n_jobs: int = -1,
    backend: str = "fast",
) -> DCIFit:
    """Fit one ``GradientBoostingClassifier()`` per factor on given samples, in parallel.

    Split out of ``dci_importance`` because the downstream task
    (``dydis.metrics.downstream``) fits the very same classifiers on its own samples.

    Parameters
    ----------
    x_train : (n_train, n_codes) float
    y_train : (n_train, n_factors) int
    x_test : (n_test, n_codes) float
    y_test : (n_test, n_factors) int
    seed : int
        The boosting's ``random_state`` (it only breaks ties between equal splits).
    n_jobs : int
        Factors fitted in parallel (joblib threads; -1 = all cores).
    backend : {"fast", "sklearn"}
        See ``dci``.

    Returns
    -------
    DCIFit
        ``importance`` (n_codes, n_factors) and per-factor train/test accuracies.
    """
    n_factors = y_train.shape[1]
    # why: boosting cost grows with the number of classes; biggest first balances the workers.
    order = np.argsort([-np.unique(y_train[:, j]).size for j in range(n_factors)], kind="stable")
    if backend not in BACKENDS:
        raise ConfigError(f"GBT backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "fast":
        x_train = presort(x_train)  # sorted once, shared by all factors
    fits = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fit_factor)(x_train, y_train[:, j], x_test, y_test[:, j], seed, backend)
        for j in order
    )
    importance = np.zeros((x_test.shape[1], n_factors))
    train_acc = np.zeros(n_factors)
    test_acc = np.zeros(n_factors)
    for j, (imp, acc_train, acc_test) in zip(order, fits):
        importance[:, j], train_acc[j], test_acc[j] = imp, acc_train, acc_test
    return DCIFit(importance, train_acc, test_acc)


def _fit_factor(x_train, y_train, x_test, y_test, seed, backend):
    if backend == "sklearn":
        model = GradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
        importance = model.feature_importances_
    else:
        model = fit_boosted_classifier(x_train, y_train, random_state=seed)
        importance = model.feature_importances
    return (
        np.abs(importance),
        float(np.mean(model.predict(x_train.x if backend == "fast" else x_train) == y_train)),
        float(np.mean(model.predict(x_test) == y_test)),
    )


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Entropy of the distributions along ``axis`` in base ``base`` (scipy.stats.entropy)."""
    p = p / p.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis) / np.log(base)


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean over codes of 1 - H_K(row), K = number of factors."""
    per_code = 1.0 - _entropy(importance + 1e-11, importance.shape[1], axis=1)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    weight = importance.sum(axis=1) / importance.sum()
    return float(np.sum(per_code * weight))


def completeness(importance: np.ndarray) -> float:
    """Importance-weighted mean over factors of 1 - H_L(column), L = number of codes."""
    per_factor = 1.0 - _entropy(importance + 1e-11, importance.shape[0], axis=0)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    weight = importance.sum(axis=0) / importance.sum()
    return float(np.sum(per_factor * weight))
