"""Frechet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", Section 4).

FID = ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians fitted to the
feature sets of real and generated images (Inception-v3 pool features, 2048 dimensions, for
the standard number). The mean and the unbiased covariance (``np.cov``, ddof=1) follow
pytorch-fid / torch-fidelity.

The trace of the matrix square root is computed as the sum of the square roots of the
eigenvalues of S_r^(1/2) S_g S_r^(1/2), which is symmetric positive semi-definite and has the
same eigenvalues as S_r S_g; this avoids ``scipy.linalg.sqrtm``'s complex round-off and is
exact up to rounding (the tests check it against the sqrtm formula).

The feature network is injected (``compute_features``), so tests run with a small stand-in.
The standard one is pytorch-fid's Inception from a local weights file; ``compute_features``
hands it [0, 1] batches of any size, which it resizes and rescales itself::

    net = load_fid_inception(weights_path).to(device)  # dydis.models.inception
    real = compute_features(real_images, net, device=device)
    generated = compute_features(generated_images, net, device=device)

The real side is the same for every model scored on one dataset, so ``reference_statistics``
reduces it to what FID needs of it, which a caller can keep (``dydis.metrics.fid_reference``
caches it on disk) and pass to ``fid`` in place of the features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from dydis.errors import DataError

if TYPE_CHECKING:
    import torch


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of a feature set (n, d), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise DataError(f"features must be (n >= 2, d), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Parameters
    ----------
    mu1, mu2 : (d,) float
    sigma1, sigma2 : (d, d) float, symmetric positive semi-definite

    Returns
    -------
    float
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise DataError(
            f"feature statistics do not match: means {mu1.shape} / {mu2.shape}, "
            f"covariances {sigma1.shape} / {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off -> 0)."""
    eig, vec = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vec * np.sqrt(np.clip(eig, 0.0, None))) @ vec.T


def reference_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """What ``fid`` needs of the real feature set (n, d), to keep in place of it.

    Fewer features than their width (smoke runs): the features themselves, float64 (n, d), which
    are smaller than a covariance and let ``fid`` take its cross-product route. Otherwise
    ``mu`` (d,) and ``sigma`` (d, d), float64, as ``feature_statistics`` computes them. Either
    way ``fid`` gives the same value as from the features.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 2 and len(features) < features.shape[1]:
        return {"features": features}
    mu, sigma = feature_statistics(features)
    return {"mu": mu, "sigma": sigma}


def fid(real: np.ndarray | Mapping[str, np.ndarray], generated_features: np.ndarray) -> dict[str, float]:
    """FID between the real set and a generated feature set (n_generated, d).

    ``real`` is a feature set (n_real, d) or its ``reference_statistics``. When both sets are
    smaller than the feature width (smoke runs: a few hundred images of 2048 features), the
    trace term comes from the n_real x n_generated cross product instead of two d x d
    eigendecompositions: with centred A = X_r / sqrt(n_r - 1) and B = X_g / sqrt(n_g - 1),
    S_r S_g = A^T A B^T B has the non-zero eigenvalues of (A B^T)(A B^T)^T, so
    tr (S_r S_g)^(1/2) is the sum of the singular values of A B^T. Same value, far less work.

    Returns
    -------
    dict
        ``fid``.
    """
    if isinstance(real, Mapping):
        if "features" not in real:
            return {"fid": frechet_distance(real["mu"], real["sigma"], *feature_statistics(generated_features))}
        real = real["features"]
    real, generated = (np.asarray(f, dtype=np.float64) for f in (real, generated_features))
    if real.ndim == generated.ndim == 2 and real.shape[1] == generated.shape[1] and \
            max(len(real), len(generated)) < real.shape[1] and min(len(real), len(generated)) >= 2:
        a = (real - real.mean(0)) / np.sqrt(len(real) - 1)
        b = (generated - generated.mean(0)) / np.sqrt(len(generated) - 1)
        trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
        diff = real.mean(0) - generated.mean(0)
        return {"fid": float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * trace_sqrt)}
    return {"fid": frechet_distance(*feature_statistics(real), *feature_statistics(generated))}


def compute_features(
    images: np.ndarray | torch.Tensor,
    feature_net: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 200,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features (n, d) of images with an injected network, batch by batch.

    Parameters
    ----------
    images : (n, h, w, 3) uint8, or (n, 3, h, w) float in [0, 1]
        The dataset format's uint8 images (channels last) or a float batch (channels first).
    feature_net : callable
        Maps a float32 batch (b, 3, h, w) in [0, 1] on ``device`` to features (b, d);
        ``FIDInceptionV3`` does its own resizing and normalisation.
    batch_size : int
    device : str or torch.device
    progress : callable, optional
        Called with the number of images done after each batch.

    Returns
    -------
    (n, d) float64
    """
    import torch  # why: only this function needs torch; the metrics import without it
    from einops import rearrange

    n = len(images)
    if n == 0:
        raise DataError("no images to compute features of")
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size]
            batch = torch.as_tensor(batch if torch.is_tensor(batch) else np.asarray(batch))
            if batch.dtype == torch.uint8:
                batch = rearrange(batch, "b h w c -> b c h w").float() / 255.0
            feats = feature_net(batch.to(device=device, dtype=torch.float32))  # (b, d)
            out.append(rearrange(feats, "b ... -> b (...)").double().cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, n))
    return np.concatenate(out)
