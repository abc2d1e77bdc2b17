"""``DyGA``: Dynamic Gaussian Anchoring as a scikit-learn-style estimator over many units.

``fit(features)`` takes the raw feature-extractor outputs of the fitting set, ``[n, U, D]``
(n points, U latent units, D = 32: the extractor's own output layout), and runs anchor
selection (``anchors.py``) for all units at once; ``align(c)`` applies eq. (6) to a
training batch ``[B, U, D]`` in the same layout (``align.py``).

Two modes, because the paper and the released code (youngjun-jun/dis-dis) disagree
(DESIGN sections 6 and 9). Each difference is also its own parameter; ``None`` means "the
mode's value":

=================  =============================  ======================================
parameter          ``mode="paper"`` (default)      ``mode="official"``
=================  =============================  ======================================
covariance         ``"hddc"`` (section 3.2.1)      ``"full"`` (+1e-6 I, GaussianMixture)
init_scale         ``"data"`` (see below)          ``"identity"`` (start with I)
child_init         ``"spread"`` (k-means++ pair)   ``"random"`` (uniform random pair)
split_rule         ``"paper"``                     ``"official"`` (random splits up to 32)
merge              ``"valley"`` (see below)        ``"none"``
child_weights      ``"parent"`` (share parent's)   ``"half"`` (halved, renormalised)
align_stats        ``"fit"`` (stored min-max)      ``"batch"`` (the batch's min-max)
hard               ``False`` (Gumbel-softmax)      ``True`` (argmax, ``predict0``)
delta_scope        ``"sample"`` (eq. 6)            ``"batch"`` (one scalar per batch)
anchor_space       ``"raw"`` (anchor mapped back)  ``"normalized"`` (mixed into raw c)
delta_grad         ``"detach"`` (a coefficient)    ``"full"`` (gradient through delta)
=================  =============================  ======================================

Both modes min-max scale each unit to [-1, 0] with the fitting set's statistics before
fitting (the released code's ``(x - max) / (max - min + 1e-6)``, one max and min per unit
over all its points and dimensions), so ``psi = 0.5`` means the same in both; ``paper``
stores those statistics and reuses them at alignment. Both modes use the robust EM of
``hddc.py`` (variance floor, empty components re-seeded, correct split bookkeeping).

The anchor count. Algorithm 2 splits a Gaussian whose cluster is denser than psi and others
at random; the paper gives no rule that ends the random splits or joins Gaussians sharing
one attribute, and with the released schedule every unit climbs to ``max_components``
whatever its data. ``merge="valley"`` (``modes.py``; our addition, paper mode's default
because without it the count follows the random draws rather than the data) keeps a random
split only when its two children are two modes of the data, draws each Gaussian for a
random split at most once, and merges neighbouring Gaussians that are one mode and not
denser than psi together. A unit whose features hold k well-separated attributes then ends
with k to 2k + 2 anchors (tested for k = 2 to 8), and a continuous attribute keeps about one
anchor per psi of its extent. ``merge="none"`` is Algorithm 2 alone; its random splits still
come at most once per Gaussian of the initial EM or of a dense split.

Degenerate units degrade gracefully rather than raise: a unit whose features are constant
fits Gaussians that all sit on that point (variance = the floor); a unit with fewer points
than ``n_init`` starts with one Gaussian per point; the filter always keeps at least one
Gaussian per unit. Empty input, NaN or infinite features raise ``DyGAInputError``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from einops import einsum, rearrange
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from torch import Tensor

from dydis.errors import ConfigError, DataError
from dydis.dyga.align import align_features, alignment_delta, choose_anchor_weights
from dydis.dyga.anchors import EMSettings
from dydis.dyga.hddc import RESP_EPS, Mixture, Points, density_terms, log_density
from dydis.dyga.parallel import default_n_jobs, select_anchors_in_groups
from dydis.dyga.streams import UnitStreams

#: Format of ``DyGA.state_dict()``; bump when its keys or meanings change. Format 1 predates
#: the ``merge`` and ``delta_grad`` settings: its fits had no merge, and its alignment
#: differentiated through delta.
STATE_FORMAT = 2
FORMAT_1_SETTINGS = {"merge": "none", "delta_grad": "full"}

#: The released code's guard in (x - max) / (max - min + eps).
SCALE_EPS = 1e-6

MODES: dict[str, dict[str, Any]] = {
    "paper": dict(covariance="hddc", init_scale="data", child_init="spread", split_rule="paper", merge="valley",
                  child_weights="parent", align_stats="fit", hard=False, delta_scope="sample", anchor_space="raw",
                  delta_grad="detach"),
    "official": dict(covariance="full", init_scale="identity", child_init="random", split_rule="official",
                     merge="none", child_weights="half", align_stats="batch", hard=True, delta_scope="batch",
                     anchor_space="normalized", delta_grad="full"),
}

CHOICES = dict(covariance=("hddc", "full"), init_scale=("data", "identity"), child_init=("spread", "random"),
               split_rule=("paper", "official"), merge=("valley", "none"), child_weights=("parent", "half"),
               align_stats=("fit", "batch"), hard=(False, True), delta_scope=("sample", "batch"),
               anchor_space=("raw", "normalized"), delta_grad=("detach", "full"))

_FITTED = ("means_", "weights_", "component_mask_", "n_components_", "basis_", "scales_", "noise_variances_",
           "intrinsic_dims_", "log_dets_", "norm_max_", "norm_scale_", "center_", "log_likelihood_", "n_iter_",
           "converged_", "n_splits_", "n_filtered_")


class Alignment(NamedTuple):
    """What ``DyGA.alignment`` returns."""

    features: Tensor  # [B, U, D] aligned features c~
    delta: Tensor  # [B, U, 1] the multiplier of eq. (6) of every (sample, unit) pair


class DyGAParameterError(ConfigError, ValueError):
    """A DyGA parameter is unknown or out of range."""


class DyGAInputError(DataError, ValueError):
    """Features given to DyGA have the wrong shape, type or values."""


class DyGA(BaseEstimator):
    """Dynamic Gaussian Anchoring for U latent units at once.

    Parameters
    ----------
    mode : ``"paper"`` or ``"official"``; sets the defaults of the options below that are
        ``None`` (see the module docstring's table).
    n_init : number of Gaussians each unit starts with (K0 = 8 in the paper).
    max_components : cap on the number of Gaussians per unit (32).
    max_iter : EM iterations per fit (30, the authors' value), for the initial fit, each
        split's children and the final fit.
    tol : EM stops early once the mean log-likelihood per point changes by less than this.
    covariance, split_rule, child_weights : see the table in the module docstring.
    merge : ``"valley"`` (paper mode) or ``"none"`` (official): see "The anchor count" in
        the module docstring.
    init_scale : covariance of the starting Gaussians (initial ones and split children):
        ``"identity"`` is the released code's I; ``"data"`` an isotropic variance matched to
        the points' distance to their nearest starting mean (the paper does not say).
    child_init : where a split's two children start: ``"random"``, two uniform random points
        of the cluster (released code); ``"spread"``, the second drawn with probability
        proportional to the squared distance from the first (k-means++ seeding).
    phi : responsibility above which a point belongs to a Gaussian's cluster (>= 0.5, so
        clusters are disjoint).
    psi : cluster density (eq. 5, in the [-1, 0]-scaled space) above which a Gaussian splits.
    random_split : probability that any other Gaussian with a cluster splits in a round
        (paper rule: among those not split at random before).
    min_cluster_size : Gaussians with a smaller soft count are removed before the final EM.
    reg_covar : variance floor added to every covariance eigenvalue (the authors' 1e-6).
    dim_threshold : Cattell scree-test threshold for HDDC's d_k (0.2, Bouveyron et al. 2007).
    n_dims : fixed HDDC intrinsic dimension instead of the scree test.
    normalize : min-max scale each unit to [-1, 0] before fitting (both modes do).
    align_stats, hard, delta_scope, anchor_space : alignment options (module docstring).
    delta_grad : ``"detach"``: eq. (6)'s delta is a coefficient without gradient (paper mode;
        its 1/c would let a ReLU extractor's tiny features blow up the gradient, ``align.py``);
        ``"full"``: gradients flow through delta too (official mode, as the released code).
    gumbel_logits : ``"log"`` (sample the posterior) or ``"prob"`` (Algorithm 3 literally);
        see ``align.choose_anchor_weights``.
    means_init : optional [U, K0, D] starting means in raw feature space, instead of
        ``n_init`` random points per unit (as scikit-learn's ``means_init``).
    random_state : seed of the random draws (starting points, random splits, the children's
        starting points). Each unit draws from its own stream derived from it
        (``streams.py``), so a unit's anchors do not depend on the units fitted beside it,
        up to floating-point rounding (which, as with a different thread count, can still
        move a unit's fit: see ``parallel.py``).
    n_jobs : groups of units fitted at once on CPU threads (``parallel.py``); ``None``:
        torch's intra-op thread count on a CPU, 1 on a GPU. Unlike scikit-learn's ``None``
        (one job), the default uses the cores torch would use anyway; the result depends on
        it through rounding only.

    Attributes
    ----------
    Everything is padded to K = max(n_components_) slots per unit; ``component_mask_`` marks
    the real ones (a prefix of each unit's slots) and padded slots have weight 0.

    means_ : [U, K, D] the anchors in the [-1, 0]-scaled space the mixture was fitted in.
    anchors_ : [U, K, D] the same anchors in raw feature space.
    weights_, component_mask_, n_components_ : [U, K], [U, K] bool, [U].
    covariances_ : [U, K, D, D] dense covariances (scaled space), for inspection.
    basis_, scales_, noise_variances_, intrinsic_dims_, log_dets_ : the covariance model.
        ``hddc``: Q_k (leading eigenvectors, [U, K, D, m]), a_kj ([U, K, m], b_k beyond
        d_k), b_k, d_k and log|Sigma_k|. ``full``: ``basis_`` is L_k^-T for the Cholesky
        factor Sigma_k = L_k L_k^T, ``noise_variances_`` is 0 and ``intrinsic_dims_`` is D.
    norm_max_, norm_scale_ : [U] the scaling z = (x - norm_max_) / norm_scale_.
    center_ : [U, D] the scaled data's mean (an internal shift kept for accuracy).
    log_likelihood_ : [U] mean log-likelihood per point of the final mixture (scaled space).
    n_iter_, converged_ : [U] iterations and convergence of the final EM.
    n_splits_, n_merged_, n_filtered_ : [U] splits kept, merges and removals per unit.
    n_split_rounds_ : split rounds.
    settings_ : the resolved mode options.
    """

    def __init__(self, mode: str = "paper", *, n_init: int = 8, max_components: int = 32, max_iter: int = 30,
                 tol: float = 1e-4, covariance: str | None = None, init_scale: str | None = None,
                 child_init: str | None = None, phi: float = 0.5, psi: float = 0.5,
                 random_split: float = 0.5, min_cluster_size: float = 10, reg_covar: float = 1e-6,
                 dim_threshold: float = 0.2, n_dims: int | None = None, split_rule: str | None = None,
                 merge: str | None = None, child_weights: str | None = None, normalize: bool = True, align_stats: str | None = None,
                 hard: bool | None = None, delta_scope: str | None = None, anchor_space: str | None = None,
                 delta_grad: str | None = None,
                 gumbel_logits: str = "log", means_init: Tensor | None = None, random_state: int | None = 0,
                 n_jobs: int | None = None):
        self.mode = mode
        self.n_init = n_init
        self.max_components = max_components
        self.max_iter = max_iter
        self.tol = tol
        self.covariance = covariance
        self.init_scale = init_scale
        self.child_init = child_init
        self.phi = phi
        self.psi = psi
        self.random_split = random_split
        self.min_cluster_size = min_cluster_size
        self.reg_covar = reg_covar
        self.dim_threshold = dim_threshold
        self.n_dims = n_dims
        self.split_rule = split_rule
        self.merge = merge
        self.child_weights = child_weights
        self.normalize = normalize
        self.align_stats = align_stats
        self.hard = hard
        self.delta_scope = delta_scope
        self.delta_grad = delta_grad
        self.anchor_space = anchor_space
        self.gumbel_logits = gumbel_logits
        self.means_init = means_init
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------------------
    # validation

    def _resolved(self) -> dict[str, Any]:
        """The mode's defaults with every explicitly given option applied, validated."""
        if self.mode not in MODES:
            raise DyGAParameterError(f"mode must be 'paper' or 'official', got {self.mode!r}")
        out = dict(MODES[self.mode])
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if value not in allowed:
                raise DyGAParameterError(f"{name} must be one of {allowed} or None, got {value!r}")
            out[name] = value
        checks = [
            (isinstance(self.n_init, int) and self.n_init >= 1, "n_init must be an integer >= 1"),
            (isinstance(self.max_components, int) and self.max_components >= 1,
             "max_components must be an integer >= 1"),
            (isinstance(self.max_iter, int) and self.max_iter >= 1, "max_iter must be an integer >= 1"),
            (self.tol >= 0, "tol must be >= 0"),
            (0.5 <= self.phi < 1, "phi must be in [0.5, 1) so that clusters are disjoint"),
            (self.psi >= 0, "psi must be >= 0"),
            (0 <= self.random_split <= 1, "random_split must be a probability in [0, 1]"),
            (self.min_cluster_size >= 0, "min_cluster_size must be >= 0"),
            (self.reg_covar > 0, "reg_covar must be > 0 (it is the variance floor)"),
            (0 < self.dim_threshold < 1, "dim_threshold must be in (0, 1)"),
            (self.n_dims is None or (isinstance(self.n_dims, int) and self.n_dims >= 1),
             "n_dims must be None or an integer >= 1"),
            (self.gumbel_logits in ("log", "prob"), "gumbel_logits must be 'log' or 'prob'"),
            (isinstance(self.normalize, bool), "normalize must be True or False"),
            (self.random_state is None or isinstance(self.random_state, int), "random_state must be None or an int"),
            (self.n_jobs is None or (isinstance(self.n_jobs, int) and self.n_jobs >= 1),
             "n_jobs must be None or an integer >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise DyGAParameterError(message)
        out["gumbel_logits"] = self.gumbel_logits
        return out

    @staticmethod
    def _check_features(features, name: str) -> Tensor:
        x = torch.as_tensor(features)
        if x.dim() != 3:
            raise DyGAInputError(f"{name} must be a [points, units, dims] tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DyGAInputError(f"{name} must be floating point, got {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise DyGAInputError(f"{name} is empty: shape {tuple(x.shape)}")
        if x.shape[1] > x.shape[0]:
            # fewer points than units cannot be fitted usefully: almost surely [units, points, dims]
            raise DyGAInputError(f"{name} must be [points, units, dims] (the layout of align and of the feature "
                                 f"extractor's output), got shape {tuple(x.shape)} with more units ({x.shape[1]}) "
                                 f"than points ({x.shape[0]}); transpose [units, points, dims] with "
                                 f".transpose(0, 1)")
        if not bool(torch.isfinite(x).all()):
            raise DyGAInputError(f"{name} contains NaN or infinite values; drop or repair those points first")
        return x if x.dtype == torch.float64 else x.float()

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("This DyGA instance is not fitted yet; call fit(features) or load_state_dict first.")

    # ------------------------------------------------------------------------------------------
    # fitting

    def fit(self, features: Tensor, y=None, units: list[int] | None = None) -> "DyGA":
        """Select anchors for every unit.

        Parameters
        ----------
        features : [n, U, D] raw feature-extractor outputs (n points, U units, D dims; the
            layout of ``align`` and of the extractor's output, with at least as many points
            as units), on any device; fitting runs there.
        y : ignored (scikit-learn convention).
        units : the indices of these U units in a larger set (default 0 to U - 1). Each unit
            draws from the random stream of its index, so processes that fit disjoint groups
            of units get the anchors of one fit of all units.

        Returns
        -------
        self
        """
        settings = self._resolved()
        x = self._check_features(features, "features").detach()
        x = x.transpose(0, 1).contiguous()  # [U, n, D]: anchor selection works unit by unit
        U, n, D = x.shape
        if units is not None and (len(units) != U or len(set(units)) != U or min(units) < 0):
            raise DyGAInputError(f"units must be {U} distinct indices >= 0, one per unit of features, got {units}")
        if self.normalize:
            # one max and one min per unit, over all its points and dims (as the released code)
            hi = x.amax((1, 2))
            scale = hi - x.amin((1, 2)) + SCALE_EPS
        else:
            hi, scale = torch.zeros(U, dtype=x.dtype, device=x.device), torch.ones(U, dtype=x.dtype, device=x.device)
        z = (x - hi[:, None, None]) / scale[:, None, None]
        # Centre each unit so float32 projections stay accurate; covariances do not change.
        center = z.mean(1)
        streams = UnitStreams.seeded(self.random_state, U if units is None else units, x.device)
        init = None
        if self.means_init is not None:
            init = torch.as_tensor(self.means_init, dtype=x.dtype, device=x.device)
            if (init.dim() != 3 or init.shape[0] != U or init.shape[2] != D
                    or not 1 <= init.shape[1] <= self.max_components):
                raise DyGAParameterError(f"means_init must be [{U}, K0, {D}] with 1 <= K0 <= max_components, "
                                         f"got shape {tuple(init.shape)}")
            init = (init - hi[:, None, None]) / scale[:, None, None] - center[:, None]
        em = EMSettings(model=settings["covariance"], max_iter=self.max_iter, tol=self.tol, reg=self.reg_covar,
                        dim_threshold=self.dim_threshold, n_dims=self.n_dims, resp_eps=RESP_EPS,
                        init_scale=settings["init_scale"])
        n_jobs = self.n_jobs if self.n_jobs is not None else default_n_jobs(x.device)
        mix, report = select_anchors_in_groups(
            z - center[:, None], em, n_jobs=n_jobs, streams=streams, n_init=self.n_init,
            max_components=self.max_components, phi=self.phi, psi=self.psi, random_split=self.random_split,
            min_cluster_size=self.min_cluster_size, split_rule=settings["split_rule"], merge=settings["merge"],
            child_weights=settings["child_weights"], child_init=settings["child_init"], init_means=init)
        self.settings_ = settings
        self._set_fitted(
            means_=mix.means + center[:, None] * mix.valid[..., None],
            weights_=mix.weights * mix.valid,
            component_mask_=mix.valid,
            n_components_=mix.valid.sum(1),
            basis_=mix.basis,
            scales_=mix.scales,
            noise_variances_=mix.noise,
            intrinsic_dims_=mix.n_dims,
            log_dets_=mix.log_det,
            norm_max_=hi,
            norm_scale_=scale,
            center_=center,
            log_likelihood_=report.log_likelihood,
            n_iter_=report.final.n_iter,
            converged_=report.final.converged,
            n_splits_=report.n_splits,
            n_filtered_=report.n_filtered,
        )
        self.n_split_rounds_ = report.n_rounds
        self.n_merged_ = report.n_merged
        if not bool(report.final.converged.all()):
            bad = int((~report.final.converged).sum())
            warnings.warn(f"DyGA: the final EM of {bad} of {U} units did not reach tol={self.tol} in "
                          f"max_iter={self.max_iter} iterations; raise max_iter or tol.", ConvergenceWarning,
                          stacklevel=2)
        return self

    def _set_fitted(self, **fitted: Tensor) -> None:
        for name, value in fitted.items():
            setattr(self, name, value)
        self._terms = {}  # E-step terms per (device, dtype), built on first use by align
        self.n_units_, self.n_features_in_ = int(self.means_.shape[0]), int(self.means_.shape[2])
        # derived, kept for convenience: dense covariances and the anchors in raw feature space
        self.covariances_ = self._mixture(center=False).covariances().to(self.means_.dtype)
        self.anchors_ = (self.means_ * self.norm_scale_[:, None, None] + self.norm_max_[:, None, None]) \
            * self.component_mask_[..., None]

    def _mixture(self, center: bool = True) -> Mixture:
        shift = self.center_[:, None] if center else 0.0
        return Mixture(self.means_ - shift, self.basis_, self.scales_, self.noise_variances_, self.intrinsic_dims_,
                       self.log_dets_, self.weights_, self.component_mask_)

    # ------------------------------------------------------------------------------------------
    # using a fitted model

    def _scaled(self, c: Tensor, stats: str) -> tuple[Tensor, Tensor, Tensor]:
        """c [B, U, D] in the fitted [-1, 0] space, with the max and scale used ([U] each)."""
        if stats == "batch" and self.normalize:
            hi = c.amax((0, 2))
            scale = hi - c.amin((0, 2)) + SCALE_EPS
        else:
            hi, scale = self.norm_max_.to(c.dtype), self.norm_scale_.to(c.dtype)
        return (c - hi[:, None]) / scale[:, None], hi, scale

    def _check_batch(self, c: Tensor) -> Tensor:
        self._check_is_fitted()
        c = torch.as_tensor(c)
        if c.dim() != 3 or c.shape[1] != self.n_units_ or c.shape[2] != self.n_features_in_:
            raise DyGAInputError(f"expected features [batch, {self.n_units_}, {self.n_features_in_}], "
                                 f"got shape {tuple(c.shape)}")
        return c

    def _log_responsibilities(self, z: Tensor) -> Tensor:
        """log r [B, U, K] of scaled features z [B, U, D] (differentiable in z)."""
        key = (z.device, z.dtype)
        if key not in self._terms:  # once per device and dtype: a training loop calls this every step
            mix = self._mixture().map(lambda t: t.to(z.device))
            self._terms[key] = density_terms(mix.map(lambda t: t.to(z.dtype) if t.is_floating_point() else t),
                                             z.dtype)
        points = Points.of(rearrange(z - self.center_.to(z), "b u d -> u b d"))
        logp = log_density(points, self._terms[key])  # [U, K, B], log weights included
        return rearrange(torch.log_softmax(logp, 1), "u k b -> b u k")

    def responsibilities(self, c: Tensor) -> Tensor:
        """Posterior probability of every Gaussian for features ``c``.

        Parameters
        ----------
        c : [B, U, D] raw features (scaled with the statistics ``align`` would use).

        Returns
        -------
        [B, U, K] with K = ``max(n_components_)``; zero on padded slots, sums to one.
        """
        c = self._check_batch(c)
        z, _, _ = self._scaled(c.float() if c.dtype != torch.float64 else c, self.settings_["align_stats"])
        return self._log_responsibilities(z).exp()

    def predict(self, c: Tensor) -> Tensor:
        """Index of the most responsible Gaussian, [B, U] long."""
        return self.responsibilities(c).argmax(-1)

    def align(self, c: Tensor, lam: float = 0.1, tau: float = 1e-4, hard: bool | None = None,
              generator: torch.Generator | None = None, delta_grad: str | None = None) -> Tensor:
        """Feature alignment, eq. (6) with Algorithm 3's anchor choice: ``alignment(...).features``."""
        return self.alignment(c, lam, tau, hard, generator, delta_grad).features

    def alignment(self, c: Tensor, lam: float = 0.1, tau: float = 1e-4, hard: bool | None = None,
                  generator: torch.Generator | None = None, delta_grad: str | None = None) -> Alignment:
        """Feature alignment, eq. (6) with Algorithm 3's anchor choice, and the delta it used.

        Parameters
        ----------
        c : [B, U, D] feature-extractor outputs of a training batch; gradients flow to it.
        lam : the scale factor lambda (0.1 in the paper).
        tau : Gumbel-softmax temperature (1e-4 in the paper).
        hard : argmax instead of Gumbel-softmax; ``None`` takes the fitted setting (``hard``
            parameter, else the mode's: ``paper`` Gumbel, ``official`` argmax).
        generator : source of the Gumbel noise (torch's default generator when ``None``).
        delta_grad : ``"detach"`` or ``"full"`` (``align.py``); ``None`` takes the fitted setting.

        Returns
        -------
        ``Alignment``: the aligned features [B, U, D] in ``c``'s dtype and delta [B, U, 1]
        (the released code's one scalar per batch is expanded to every pair).
        """
        if delta_grad not in (None, *CHOICES["delta_grad"]):
            raise DyGAParameterError(f"delta_grad must be one of {CHOICES['delta_grad']} or None, got {delta_grad!r}")
        c = self._check_batch(c)
        s = self.settings_
        work = c if c.dtype == torch.float64 else c.float()  # distances and softmax in float32 at least
        z, hi, scale = self._scaled(work, s["align_stats"])
        log_r = self._log_responsibilities(z)
        valid = self.component_mask_.to(c.device)
        pick = choose_anchor_weights(log_r, valid, hard=s["hard"] if hard is None else hard, tau=tau,
                                     logits=s["gumbel_logits"], generator=generator)
        mu = einsum(pick, self.means_.to(work), "b u k, u k d -> b u d")
        if s["anchor_space"] == "raw":  # back to the features' own scale (paper)
            mu = mu * scale[:, None] + hi[:, None]
        delta = alignment_delta(work, mu, lam, scope=s["delta_scope"],
                                grad=s["delta_grad"] if delta_grad is None else delta_grad)
        return Alignment(align_features(work, mu, delta).to(c.dtype), delta.expand(*c.shape[:2], 1))

    # ------------------------------------------------------------------------------------------
    # persistence

    def state_dict(self) -> dict[str, Any]:
        """Parameters and fitted state as plain Python values and CPU tensors (``torch.save``-able)."""
        self._check_is_fitted()
        state: dict[str, Any] = {"format": STATE_FORMAT, "params": self.get_params(), "settings": dict(self.settings_),
                                 "n_split_rounds": self.n_split_rounds_, "n_merged": self.n_merged_.detach().cpu()}
        state.update({name: getattr(self, name).detach().cpu() for name in _FITTED})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> "DyGA":
        """Restore a fitted model from ``state_dict()``; returns self."""
        if state.get("format") not in (1, STATE_FORMAT):
            raise DyGAInputError(f"unknown DyGA state format {state.get('format')!r} (this version reads 1 to "
                                 f"{STATE_FORMAT})")
        missing = [name for name in _FITTED if name not in state]
        if missing:
            raise DyGAInputError(f"DyGA state lacks {', '.join(missing)}")
        self.set_params(**state["params"])
        self.settings_ = {**(FORMAT_1_SETTINGS if state["format"] == 1 else {}), **state["settings"]}
        self.n_split_rounds_ = int(state.get("n_split_rounds", 0))
        self.n_merged_ = torch.as_tensor(state.get("n_merged", torch.zeros_like(torch.as_tensor(state["n_splits_"]))))
        self._set_fitted(**{name: torch.as_tensor(state[name]) for name in _FITTED})
        return self

    def to(self, device: torch.device | str) -> "DyGA":
        """Move the fitted tensors to ``device`` (e.g. the training GPU); returns self."""
        self._check_is_fitted()
        self._set_fitted(**{name: getattr(self, name).to(device) for name in _FITTED})
        return self
