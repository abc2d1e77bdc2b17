"""One call for the whole metric suite: ``evaluate(codes, ground_truth, metrics=...)``.

Every metric gets a fresh ``numpy.random.RandomState(seed)``, as in the paper's authors'
``evaluate_renew.py``, so each one sees the same samples whether it runs alone or in the
suite, and in any order.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Mapping

import numpy as np

from dydis.errors import ConfigError, DataError
from dydis.metrics.dci import dci_importance, dci_scores
from dydis.metrics.factor_vae import factor_vae_details
from dydis.metrics.fid import fid
from dydis.metrics.ground_truth import GroundTruth
from dydis.metrics.infomec import infomec_details
from dydis.metrics.mig import mig
from dydis.metrics.modularity import modularity_explicitness
from dydis.metrics.reduce import REDUCTIONS, reduce_codes
from dydis.metrics.sap import sap
from dydis.metrics.tad import tad_details

logger = logging.getLogger(__name__)

GRID_METRICS = ("factor_vae", "dci", "mig", "sap", "modularity", "infomec")
METRICS = GRID_METRICS + ("tad", "fid")
# The keys each metric puts in the flat result: the names of train_log.csv's evaluation columns,
# which the training monitor writes and the report plots.
METRIC_KEYS = {"factor_vae": ("factor_vae", "factor_vae_active"),
               "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness"),
               "mig": ("mig",), "sap": ("sap",), "modularity": ("modularity", "explicitness"),
               "infomec": ("infom", "infoe", "infoc"), "tad": ("tad", "tad_captured"), "fid": ("fid",)}
SCORE_KEYS = tuple(key for metric in METRICS for key in METRIC_KEYS[metric])
# + a factor's name: DCI's test accuracy of that factor (``Scores.arrays["dci_test_accuracy"]``), as
# train_log.csv's columns and the report's scores name it
FACTOR_ACCURACY = "dci_accuracy_"


class Scores(dict):
    """The flat ``{name: float}`` result, plus what is not a number.

    Attributes
    ----------
    arrays : dict[str, np.ndarray]
        ``factor_vae_votes`` (n_factors, n_codes: the evaluation votes each code won),
        ``dci_importance`` (n_codes, n_factors), ``dci_test_accuracy`` (n_factors,: which factors
        the codes hold at all; informativeness is its mean), ``infomec_nmi`` (n_factors, n_codes),
        ``infomec_active`` (n_codes,), ``tad_auroc`` (n_attributes, n_codes), for the
        metrics computed.
    timings : dict[str, float]
        Wall-clock seconds per metric.
    """

    def __init__(self) -> None:
        super().__init__()
        self.arrays: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {}


def evaluate(
    codes: np.ndarray,
    ground_truth: GroundTruth | None = None,
    *,
    metrics: Iterable[str] | str | None = None,
    seed: int = 0,
    n_jobs: int = -1,
    reduce: str = "pca",
    attributes: np.ndarray | None = None,
    tad_protocol: str = "dis-dis",
    infomec_active: str = "iqr",
    fid_features: tuple[np.ndarray, np.ndarray] | None = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Scores:
    """Compute the chosen metrics of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) or (n_rows, N, D) float
        Representation of every dataset row in canonical order. Vector units are reduced
        with ``reduce`` for the grid metrics; TAD's ``dis-dis`` protocol reduces them itself,
        on its own draw of images.
    ground_truth : GroundTruth, optional
        Needed by the grid metrics (FactorVAE, DCI, MIG, SAP, Modularity, InfoMEC).
    metrics : names or comma-separated string, optional
        Any of ``factor_vae, dci, mig, sap, modularity, infomec, tad, fid``. Default: all
        that the given inputs allow.
    seed : int
        Seed of every metric's fresh ``RandomState``.
    n_jobs : int
        Parallel fits inside DCI, SAP, Modularity and InfoMEC (joblib; -1 = all cores).
    reduce : {"pca", "scalar", "none"}
        See ``reduce_units``.
    attributes : (n_rows, A) int, optional
        Binary attributes (+-1 or 0/1) for TAD.
    tad_protocol : {"dis-dis", "nashae"}
    infomec_active : {"iqr", "range"}
    fid_features : (real, generated (m, d)), optional
        For FID: the real feature set (n, d) or its ``reference_statistics``, and the generated
        features (see ``dydis.metrics.fid``).
    options : {metric: {keyword: value}}, optional
        Extra keywords per metric, e.g. ``{"dci": {"n_train": 1000}}`` for a quick run.
    progress : callable, optional
        Called with each metric's name before it runs.

    Returns
    -------
    Scores
        Flat dict with the keys ``factor_vae``, ``factor_vae_active``,
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``, ``mig``,
        ``sap``, ``modularity``, ``explicitness``, ``infom``, ``infoe``, ``infoc``, ``tad``,
        ``tad_captured``, ``fid`` (those computed), with ``.arrays`` and ``.timings``.
    """
    chosen = _choose(metrics, ground_truth, attributes, fid_features)
    constant = [j for j, size in enumerate(ground_truth.factor_sizes) if size < 2] if ground_truth else []
    if constant and any(m in GRID_METRICS for m in chosen):
        raise DataError(f"factors {constant} take a single value: the grid metrics need every factor to vary "
                        "(prepare the dataset without them, e.g. a synthetic grid with no size-1 factor)")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = set(options) - set(METRICS)
    if unknown:
        raise ConfigError(f"options for unknown metrics {sorted(unknown)}; known: {METRICS}")

    codes = np.asarray(codes)
    scalar_codes = None
    tad_needs_scalars = "tad" in chosen and not _tad_reduces(codes, reduce)
    if any(m in GRID_METRICS for m in chosen) or tad_needs_scalars:
        scalar_codes = reduce_codes(codes, reduce)

    scores = Scores()
    for name in chosen:
        if progress is not None:
            progress(name)
        start = time.perf_counter()
        kw = options.get(name, {})
        if name == "factor_vae":
            d = factor_vae_details(scalar_codes, ground_truth, seed=seed, **kw)
            scores.update({k: d[k] for k in ("factor_vae", "factor_vae_active")})
            scores.arrays["factor_vae_votes"] = d["votes"]
        elif name == "dci":
            fit = dci_importance(scalar_codes, ground_truth, seed=seed, n_jobs=n_jobs, **kw)
            scores.update(dci_scores(fit))
            scores.arrays["dci_importance"], scores.arrays["dci_test_accuracy"] = fit.importance, fit.test_accuracy
        elif name == "mig":
            scores.update(mig(scalar_codes, ground_truth, seed=seed, **kw))
        elif name == "sap":
            scores.update(sap(scalar_codes, ground_truth, seed=seed, n_jobs=n_jobs, **kw))
        elif name == "modularity":
            scores.update(modularity_explicitness(
                scalar_codes, ground_truth, seed=seed, n_jobs=n_jobs, **kw))
        elif name == "infomec":
            d = infomec_details(scalar_codes, ground_truth, seed=seed, n_jobs=n_jobs,
                                active=kw.pop("active", infomec_active), **kw)
            scores.update({k: d[k] for k in ("infom", "infoe", "infoc")})
            scores.arrays["infomec_nmi"], scores.arrays["infomec_active"] = d["nmi"], d["active"]
        elif name == "tad":
            tad_codes = codes if _tad_reduces(codes, reduce) else scalar_codes
            d = tad_details(tad_codes, attributes, seed=seed,
                            protocol=kw.pop("protocol", tad_protocol), **kw)
            scores.update({"tad": d["tad"], "tad_captured": d["tad_captured"]})
            scores.arrays["tad_auroc"] = d["auroc"]
        elif name == "fid":
            scores.update(fid(*fid_features))
        scores.timings[name] = time.perf_counter() - start
        logger.info("%s: %.2f s", name, scores.timings[name])
    return scores


def _tad_reduces(codes: np.ndarray, reduce: str) -> bool:
    """Whether TAD gets the vector units and fits its own PCA on the images it draws."""
    return codes.ndim == 3 and reduce == "pca"


def _choose(metrics, ground_truth, attributes, fid_features) -> list[str]:
    if metrics is None:
        chosen = list(GRID_METRICS) if ground_truth is not None else []
        chosen += ["tad"] if attributes is not None else []
        chosen += ["fid"] if fid_features is not None else []
        if not chosen:
            raise ConfigError(
                "nothing to evaluate: give a ground truth, attributes or FID features"
            )
        return chosen
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    chosen = list(dict.fromkeys(metrics))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if ground_truth is None and any(m in GRID_METRICS for m in chosen):
        needing = [m for m in chosen if m in GRID_METRICS]
        raise ConfigError(f"{needing} need ground-truth factors; this dataset has none")
    if "tad" in chosen and attributes is None:
        raise ConfigError("tad needs binary attributes (CelebA); this dataset has none")
    if "fid" in chosen and fid_features is None:
        raise ConfigError("fid needs real and generated image features")
    return chosen
