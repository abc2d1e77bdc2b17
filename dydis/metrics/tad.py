"""TAD: Total AUROC Difference (Yeats et al. 2022, "NashAE: Disentangling Representations
through Adversarial Covariance Minimization", Section 5), for CelebA's binary attributes.

On a random subset of the images:

1. per code, its range over the subset; a code whose range is <= 0.2 is skipped (AUROC 0.5);
2. per (attribute, code), the ROC curve of the classifier "code >= threshold" over thresholds
   ``t * (max - min) + min`` for ``t = 0, step, ..., 1``, and of "code < threshold"; each curve's
   FPR and TPR columns are sorted and integrated with the right-endpoint sum
   ``sum TPR[i+1] (FPR[i+1] - FPR[i])``; the AUROC is the larger of the two;
3. per attribute, its best AUROC over codes and the gap to the second best;
4. an attribute is captured when its best AUROC >= 0.75 and no other attribute explains more
   than 20% of its entropy (largest mutual information with another attribute / its own
   entropy <= 0.2, MI in nats from the subset's empirical joint distribution);
5. TAD = sum of the gaps of the captured attributes; ``tad_captured`` = how many.

Two protocols:

- ``"dis-dis"`` (default): the paper's authors' ``evaluate_renew.py``: 10,000 images, step 0.1
  (11 thresholds), vector units reduced by ``PCA(1)`` per unit fitted on those 10,000 images.
  This produced the paper's TAD of 0.954.
- ``"nashae"``: NashAE's ``celeba_eval.ipynb`` / ``ae_utils_exp.py``: 1,000 images, step 0.01
  (101 thresholds), codes used as they are.

Differences from the references: the images are drawn with ``RandomState(seed).choice``
without replacement (the references take the first batch of a shuffled torch DataLoader),
and rates and areas are computed in float64 (the references use float32 tensors; the
difference is below 1e-6). A vector representation given to ``"nashae"`` is also reduced by
PCA on the drawn images.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dydis.errors import ConfigError, DataError
from dydis.metrics.reduce import reduce_units


class TADProtocol(NamedTuple):
    n_samples: int
    step: float


PROTOCOLS = {
    "dis-dis": TADProtocol(n_samples=10_000, step=0.1),
    "nashae": TADProtocol(n_samples=1_000, step=0.01),
}
AUROC_THRESHOLD = 0.75  # best AUROC an attribute needs to count as captured
ENTROPY_SHARE_THRESHOLD = 0.2  # most of its entropy another attribute may explain
MIN_RANGE = 0.2  # codes with a smaller range are skipped
_CODES_PER_BLOCK = 64


def tad(
    codes: np.ndarray,
    attributes: np.ndarray,
    *,
    protocol: str = "dis-dis",
    seed: int = 0,
    n_samples: int | None = None,
) -> dict[str, float]:
    """Total AUROC Difference of a representation against binary attributes.

    Parameters
    ----------
    codes : (n, L) or (n, N, D) float
        Scalar codes, or vector units reduced by PCA(1) on the drawn images.
    attributes : (n, A) int
        Binary attributes, as +-1 (CelebA's files) or 0/1.
    protocol : {"dis-dis", "nashae"}
    seed : int
        Seed of the draw of images.
    n_samples : int, optional
        Overrides the protocol's number of images (all images if there are fewer).

    Returns
    -------
    dict
        ``tad`` and ``tad_captured`` (number of captured attributes).
    """
    d = tad_details(codes, attributes, protocol=protocol, seed=seed, n_samples=n_samples)
    return {"tad": d["tad"], "tad_captured": d["tad_captured"]}


def tad_details(
    codes: np.ndarray,
    attributes: np.ndarray,
    *,
    protocol: str = "dis-dis",
    seed: int = 0,
    n_samples: int | None = None,
) -> dict:
    """TAD plus ``auroc`` (A, L), ``gap`` (A,), ``entropy_share`` (A,) and ``captured`` (A,)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"TAD protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    spec = PROTOCOLS[protocol]
    codes, attributes = np.asarray(codes), np.asarray(attributes)
    if attributes.ndim != 2 or codes.shape[0] != attributes.shape[0]:
        raise DataError(
            f"attributes must be (n, A) aligned with the codes' {codes.shape[0]} rows, "
            f"got shape {attributes.shape}"
        )
    if not np.isin(attributes, (-1, 0, 1)).all():
        raise DataError("attributes must be binary, as +-1 or 0/1")
    n = codes.shape[0]
    n_draw = spec.n_samples if n_samples is None else int(n_samples)
    if n <= n_draw:
        rows = np.arange(n)
    else:
        rows = np.random.RandomState(seed).choice(n, n_draw, replace=False)

    z = codes[rows]
    if z.ndim == 3:
        z = reduce_units(z, "pca")
    z = np.nan_to_num(z)
    targ = (attributes[rows] > 0).astype(np.float64)

    auroc = attribute_aurocs(z, targ, step=spec.step)
    best = auroc.max(axis=1)
    runner_up = auroc.copy()
    runner_up[np.arange(auroc.shape[0]), auroc.argmax(axis=1)] = 0.0
    gap = best - runner_up.max(axis=1)

    share = entropy_share(targ)
    with np.errstate(invalid="ignore"):
        captured = (best >= AUROC_THRESHOLD) & (share <= ENTROPY_SHARE_THRESHOLD)
    return {
        "tad": float(gap[captured].sum()),
        "tad_captured": float(captured.sum()),
        "auroc": auroc,
        "gap": gap,
        "entropy_share": share,
        "captured": captured,
    }


def attribute_aurocs(z: np.ndarray, targ: np.ndarray, *, step: float) -> np.ndarray:
    """Threshold-grid AUROC of every (attribute, code) pair, (A, L); 0.5 for skipped codes.

    Parameters
    ----------
    z : (n, L) float
    targ : (n, A) float in {0, 1}
    step : float
        Grid step of ``t`` in [0, 1] (0.1 gives 11 thresholds, 0.01 gives 101).
    """
    n, n_codes = z.shape
    hi, lo = z.max(axis=0), z.min(axis=0)
    # why: the references build t as float32 (torch.arange) and the threshold in the codes'
    # dtype; doing the same keeps "code >= threshold" identical at the boundaries.
    t = np.arange(0.0, 1.0001, step).astype(np.float32).astype(z.dtype)
    pos = targ.sum(axis=0)[:, None, None]  # (A, 1, 1)
    neg = n - pos
    auroc = np.empty((targ.shape[1], n_codes))
    for start in range(0, n_codes, _CODES_PER_BLOCK):  # bounds the (n, T, codes) block
        block = slice(start, start + _CODES_PER_BLOCK)
        thr = t[:, None] * (hi[block] - lo[block])[None, :] + lo[block][None, :]  # (T, l)
        above = z[:, None, block] >= thr[None]  # (n, T, l): "code >= threshold"
        above = above.reshape(n, -1).astype(np.float64)
        tp = (targ.T @ above).reshape(targ.shape[1], len(t), -1)  # (A, T, l) positives above
        fp = above.sum(axis=0).reshape(1, len(t), -1) - tp  # negatives above
        with np.errstate(divide="ignore", invalid="ignore"):
            area_up = _sorted_area(fp / neg, tp / pos)
            area_down = _sorted_area((neg - fp) / neg, (pos - tp) / pos)  # "code < threshold"
        auroc[:, block] = np.maximum(area_up, area_down)
    auroc[:, (hi - lo) <= MIN_RANGE] = 0.5
    return auroc


def _sorted_area(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Right-endpoint area over the threshold axis (1) of independently sorted FPR, TPR."""
    fpr, tpr = np.sort(fpr, axis=1), np.sort(tpr, axis=1)
    return np.sum(tpr[:, 1:] * np.diff(fpr, axis=1), axis=1)


def entropy_share(targ: np.ndarray) -> np.ndarray:
    """Per attribute, the largest MI with another attribute over its own entropy, (A,)."""
    n = targ.shape[0]
    p1 = targ.mean(axis=0)
    mi = np.zeros((targ.shape[1], targ.shape[1]))
    for a_i, p_i in ((targ, p1), (1 - targ, 1 - p1)):
        for a_j, p_j in ((targ, p1), (1 - targ, 1 - p1)):
            joint = (a_i.T @ a_j) / n
            outer = p_i[:, None] * p_j[None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                term = joint * np.log(joint / outer)
            mi += np.where((joint == 0) | (outer == 0), 0.0, term)
    off = mi * (1 - np.eye(mi.shape[0]))
    h = np.diag(mi)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (h - off.max(axis=1)) / h
