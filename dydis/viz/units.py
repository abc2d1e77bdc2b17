"""Latent units against the ground-truth factors (paper Figs. 1 and 11).

For each factor the figure shows the unit with the highest normalised mutual information with
it, as the paper picks it: units reduced to one scalar by PCA(1) (the evaluation's reduction,
``dydis.metrics.reduce_units``), cut into 20 equal-width bins, and the mutual information
divided by the factor's entropy, as MIG normalises it. That unit's D-dim features are then
embedded in 2-D (PaCMAP as in the paper when the optional ``pacmap`` package is installed,
else PCA) and coloured by the factor, with the unit's DyGA anchors marked.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from dydis.errors import ConfigError
from dydis.metrics._common import discrete_entropy, discrete_mutual_info, histogram_discretize
from dydis.metrics.reduce import reduce_units
from dydis.training.ldm import Anchors


def unit_factor_nmi(units: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Normalised mutual information (N, K) between each unit and each factor.

    Parameters
    ----------
    units : (n_samples, N, D) or (n_samples, N) the units of n images.
    factors : (n_samples, K) int, the images' factor classes.

    Returns
    -------
    (N, K) in [0, 1]: I(binned PCA(1) of unit; factor) / H(factor); 0 for a constant factor.
    """
    codes = reduce_units(units, "pca")
    mi = discrete_mutual_info(histogram_discretize(codes, n_bins), factors)
    entropy = discrete_entropy(factors)
    return np.divide(mi, entropy, out=np.zeros_like(mi), where=entropy > 0)


def unit_anchors(anchors: Anchors, unit: int) -> np.ndarray:
    """The DyGA anchors (k, D) of one unit in raw feature space, the padding slots dropped.

    Units may have been fitted in groups (one per training process), so the unit is looked up
    in the group that holds it.
    """
    for units, dyga in anchors.groups:
        if unit in units:
            row = units.index(unit)
            return dyga.anchors_[row][dyga.component_mask_[row]].cpu().numpy()
    raise AssertionError(f"unit {unit} is in no anchor group")


def embedding_method(requested: str) -> str:
    """``pacmap`` or ``pca``: ``auto`` is PaCMAP when its package is installed (it is optional)."""
    available = importlib.util.find_spec("pacmap") is not None
    if requested == "pacmap" and not available:
        raise ConfigError("embedding pacmap needs the optional pacmap package: pip install pacmap, or use "
                          "--embedding pca")
    if requested == "auto":
        return "pacmap" if available else "pca"
    return requested


def embed_2d(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D coordinates (m, 2) of points (m, D), by ``pca`` or ``pacmap`` (see ``embedding_method``)."""
    if method == "pacmap":
        import pacmap  # deferred: optional dependency

        return pacmap.PaCMAP(n_components=2, random_state=seed).fit_transform(points, init="pca")
    return PCA(n_components=2, random_state=seed).fit_transform(points)


@dataclass(frozen=True)
class UnitPanel:
    """One factor's panel: its best unit's features embedded, coloured by the factor."""

    factor: str
    unit: int
    nmi: float
    points: np.ndarray  # (n, 2) the images' features of that unit, embedded
    values: np.ndarray  # (n,) the images' class of the factor
    anchors: np.ndarray  # (k, 2) the unit's DyGA anchors in the same embedding


def unit_panels(units: np.ndarray, factors: np.ndarray, factor_names: tuple[str, ...], anchors: Anchors | None,
                method: str, seed: int) -> tuple[list[UnitPanel], np.ndarray]:
    """The panels of the figure and the NMI matrix (N, K) they were chosen by.

    ``units`` (n_samples, N, D) raw features and ``factors`` (n_samples, K) of the same images;
    ``anchors`` None (a model trained without DyGA) marks none.
    The anchors are embedded together with the features (one fit on both), because PaCMAP has
    no exact projection of new points and PCA hardly moves for k extra points among n.
    """
    nmi = unit_factor_nmi(units, factors)
    panels = []
    for j, name in enumerate(factor_names):
        unit = int(nmi[:, j].argmax())
        marked = np.zeros((0, units.shape[2])) if anchors is None else unit_anchors(anchors, unit)
        embedded = embed_2d(np.concatenate([units[:, unit], marked]).astype(np.float64), method, seed)
        panels.append(UnitPanel(name, unit, float(nmi[unit, j]), embedded[: len(units)], factors[:, j],
                                embedded[len(units):]))
    return panels, nmi
