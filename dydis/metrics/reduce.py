"""Reduction of vector latent units to one scalar code each.

The paper's feature extractor emits N units of D dimensions each ([n, N, D]); the grid
metrics want one scalar per unit. The paper (and its authors' ``evaluate_renew.py``) fits
``PCA(n_components=1)`` per unit on the whole evaluation set and keeps the projection,
with NaNs replaced by 0 afterwards (``np.nan_to_num``). EncDiff's protocol instead reads the
extractor's scalar before its MLP; that array arrives already scalar and passes through.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from dydis.errors import ConfigError, DataError

REDUCTIONS = ("pca", "scalar", "none")


def reduce_units(units: np.ndarray, method: str = "pca") -> np.ndarray:
    """Turn a representation into one scalar code per unit, shape (n, N).

    Parameters
    ----------
    units : (n, N, D) or (n, N) float
        Vector units (``pca``, ``none``) or scalar codes (``scalar``, ``none``).
    method : {"pca", "scalar", "none"}
        ``pca``: per unit, ``PCA(n_components=1)`` fitted on all n rows (the paper's
        protocol); a (n, N) input counts as D = 1. ``scalar``: the input must already be
        (n, N) and is returned unchanged (EncDiff's pre-MLP scalars). ``none``: no reduction;
        (n, N, D) is flattened to (n, N*D), every dimension its own code.

    Returns
    -------
    (n, N) or (n, N*D) array; ``pca`` keeps float32 input in float32, like scikit-learn.
    """
    if method not in REDUCTIONS:
        raise ConfigError(f"reduce must be one of {REDUCTIONS}, got {method!r}")
    units = np.asarray(units)
    if units.ndim not in (2, 3):
        raise DataError(f"units must be (n, N) or (n, N, D), got shape {units.shape}")
    if method == "scalar":
        if units.ndim != 2:
            raise DataError(
                f"reduce 'scalar' expects one scalar per unit (n, N), got shape {units.shape}"
            )
        return units
    if method == "none":
        return units.reshape(units.shape[0], -1)
    if units.ndim == 2:
        units = units[:, :, None]
    return np.concatenate([_pca1(units[:, i, :]) for i in range(units.shape[1])], axis=1)


def reduce_codes(codes: np.ndarray, method: str = "pca") -> np.ndarray:
    """The (n, n_codes) codes the grid metrics and the downstream task fit on.

    Vector units (n, N, D) go through ``reduce_units``; codes that are already (n, n_codes)
    are used as given, because PCA(1) of a single column only centres and maybe flips it.
    """
    codes = np.asarray(codes)
    if codes.ndim == 2 and method in REDUCTIONS:
        return codes
    return reduce_units(codes, method)


def _pca1(x: np.ndarray) -> np.ndarray:
    """First principal component scores (n, 1) of one unit's vectors (n, D)."""
    return np.nan_to_num(PCA(n_components=1).fit_transform(x))
