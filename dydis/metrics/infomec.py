"""InfoMEC: InfoM (modularity), InfoE (explicitness), InfoC (compactness) (Hsu et al. 2023,
"Disentanglement via Latent Quantization", Section 5 and Appendix).

Definition of latent_quantization's ``disentangle/metrics/infomec.py`` as the paper's
authors vendored and ran it (``youngjun-jun/dis-dis``, ``evaluation/metrics/infomec.py``,
called with ``discrete_latents=False, test_size=10000``):

- 10,000 points drawn 16 at a time; factors label-encoded;
- NMI (n_factors, n_codes): ``mutual_info_classif`` (k-NN estimator, ``n_neighbors=10``)
  between each standardised code and each factor, divided by the factor's entropy in nats;
- active codes: ``active="iqr"`` (the authors' copy, the default): inter-quartile range of
  the raw code > max IQR / 10; ``active="range"`` (latent_quantization's own file):
  range > max range / 20;
- InfoM = (mean over active codes of max_i NMI / sum_i NMI - 1/K) / (1 - 1/K);
- InfoC = (mean over factors of max_active NMI / (sum_active NMI + 1e-6) - 1/L) / (1 - 1/L),
  L the number of active codes (the 1e-6 is the authors' copy's; latent_quantization's has
  none; it only turns a 0/0 into 0);
- InfoE = mean over factors of (H_null - H_pred) / H_null, H_pred the training log-loss of an
  unregularised, class-balanced multinomial logistic regression (lbfgs, 100 iterations) on all
  standardised codes, H_null the same regression on an all-zero input;
- no active code: all three are 0 (the authors' copy). One active code makes InfoC 0/0: NaN.

Differences from the reference: ``mutual_info_classif`` adds tiny noise (1e-10 of the scale)
to break ties, drawn from numpy's global random state in the reference; here each call gets
its own ``RandomState`` seeded from the metric's, so the metric is reproducible and the calls
can run in parallel. "Unregularised" is spelled ``C=inf`` (``penalty=None`` is deprecated in
scikit-learn 1.8); the binary case fits a logistic rather than a two-class softmax model,
which has the same optimum.
"""

from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, mutual_info_score
from sklearn.preprocessing import StandardScaler

from dydis.errors import ConfigError
from dydis.metrics._common import check_codes
from dydis.metrics.ground_truth import GroundTruth

ACTIVE_RULES = ("iqr", "range")


def infomec(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_samples: int = 10_000,
    active: str = "iqr",
    n_neighbors: int = 10,
    batch_size: int = 16,
    n_jobs: int = -1,
) -> dict[str, float]:
    """InfoM, InfoE and InfoC of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
    ground_truth : GroundTruth
    seed : int
    n_samples, n_neighbors, batch_size
        The authors' settings (10000, 10, 16).
    active : {"iqr", "range"}
        Which codes count as active: the paper's authors' IQR rule or latent_quantization's
        range rule.
    n_jobs : int
        Parallel MI estimates and regressions (joblib; -1 = all cores).

    Returns
    -------
    dict
        ``infom``, ``infoe``, ``infoc``.
    """
    details = infomec_details(
        codes, ground_truth, seed=seed, n_samples=n_samples, active=active,
        n_neighbors=n_neighbors, batch_size=batch_size, n_jobs=n_jobs,
    )
    return {k: details[k] for k in ("infom", "infoe", "infoc")}


def infomec_details(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    n_samples: int = 10_000,
    active: str = "iqr",
    n_neighbors: int = 10,
    batch_size: int = 16,
    n_jobs: int = -1,
) -> dict:
    """InfoMEC scores plus ``nmi`` (n_factors, n_codes) and the ``active`` mask (n_codes,)."""
    if active not in ACTIVE_RULES:
        raise ConfigError(f"InfoMEC active rule must be one of {ACTIVE_RULES}, got {active!r}")
    codes = check_codes(codes, ground_truth)
    rs = np.random.RandomState(seed)
    factors, rows = ground_truth.sample(n_samples, rs, batch_size=batch_size)
    latents = codes[rows]
    sources = _label_encode(factors)
    z = _standardize(latents)

    # one seed per MI estimate, drawn in the reference's loop order (factors outer)
    pair_seeds = rs.randint(np.iinfo(np.int32).max, size=(sources.shape[1], z.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # process-wide, so around the threads
        mi = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(_mi_continuous)(z[:, j], sources[:, i], n_neighbors, pair_seeds[i, j])
            for i in range(sources.shape[1])
            for j in range(z.shape[1])
        )
        nmi = np.asarray(mi).reshape(sources.shape[1], z.shape[1])
        nmi /= np.array([mutual_info_score(s, s) for s in sources.T])[:, None]

        is_active = _active_codes(latents, active)
        scores = _infom_infoc(nmi, is_active)
        if is_active.any():
            losses = Parallel(n_jobs=n_jobs, prefer="threads")(
                delayed(_balanced_log_loss)(x, sources[:, i])
                for i in range(sources.shape[1])
                for x in (z, np.zeros_like(latents))
            )
            pred, null = np.asarray(losses[0::2]), np.asarray(losses[1::2])
            scores["infoe"] = float(np.mean((null - pred) / null))
        else:
            scores["infoe"] = 0.0
    return {**scores, "nmi": nmi, "active": is_active}


def _label_encode(factors: np.ndarray) -> np.ndarray:
    """Each factor's values mapped to 0..m-1 in sorted order (sklearn's LabelEncoder)."""
    return np.stack([np.unique(f, return_inverse=True)[1] for f in factors.T], axis=1)


def _standardize(x: np.ndarray) -> np.ndarray:
    """Per-column ``StandardScaler``, as the reference (a constant column becomes 0)."""
    return StandardScaler().fit_transform(x)


def _mi_continuous(x: np.ndarray, y: np.ndarray, n_neighbors: int, seed: int) -> float:
    return float(mutual_info_classif(
        x[:, None], y, discrete_features=False, n_neighbors=n_neighbors,
        random_state=np.random.RandomState(seed),
    )[0])


def _active_codes(latents: np.ndarray, rule: str) -> np.ndarray:
    if rule == "iqr":
        q25, q75 = np.quantile(latents, [0.25, 0.75], axis=0)
        iqr = q75 - q25
        return iqr > np.max(iqr) / 10
    spread = latents.max(axis=0) - latents.min(axis=0)
    return spread > np.max(spread) / 20


def _infom_infoc(nmi: np.ndarray, is_active: np.ndarray) -> dict[str, float]:
    n_sources, n_active = nmi.shape[0], int(is_active.sum())
    if n_active == 0:
        return {"infom": 0.0, "infoc": 0.0}
    pruned = nmi[:, is_active]
    with np.errstate(divide="ignore", invalid="ignore"):
        infom = (np.mean(pruned.max(axis=0) / pruned.sum(axis=0)) - 1 / n_sources) / (
            1 - 1 / n_sources
        )
        infoc = (np.mean(pruned.max(axis=1) / (pruned.sum(axis=1) + 1e-6)) - 1 / n_active) / (
            1 - 1 / n_active
        ) if n_active > 1 else np.nan
    return {"infom": float(infom), "infoc": float(infoc)}


def _balanced_log_loss(x: np.ndarray, y: np.ndarray) -> float:
    """Training log-loss of an unregularised class-balanced multinomial logistic regression."""
    model = LogisticRegression(
        C=np.inf, tol=1e-4, fit_intercept=True, class_weight="balanced", solver="lbfgs",
        max_iter=100,
    ).fit(x, y)
    return float(log_loss(y, model.predict_proba(x)))
