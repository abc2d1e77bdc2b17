"""Batched EM for Gaussian mixtures, full covariance or HDDC [a_kj b_k Q_k d_k].

One call fits many independent mixtures ("segments") at once: the mixtures of all latent
units, or the two children of every cluster split in a round. Points come in *chunks*, each
owned by one segment; a unit's n points are one chunk, a split cluster's points are a few
chunks of equal length. Parameters are padded to ``[G, K]`` (segments x component slots)
with a validity mask, responsibilities are stored component-major ``[C, K, L]`` (chunks x
slots x points) so that reductions over components run across contiguous points, and the
E- and M-steps are a handful of batched matmuls over chunks and components. Python only
loops over EM iterations and over blocks of points that bound memory. On a CPU those blocks
are small on purpose: a temporary the size of all points (2M x 32 for 20 units of 100,000)
is fresh memory from the kernel and pays a page fault per 4 kB, which costs more than the
arithmetic on it (removing such temporaries made the 20 x 100,000 benchmark about 1.7x
faster, old and new code timed alternately on one machine).

Both covariance models are stored as one quadratic form per component,

    (x - mu)^T Sigma^-1 (x - mu) = alpha ||x - mu||^2 + sign * sum_j (w_j . (x - mu))^2,

so the E-step is the same batched matmul for both:

* ``hddc`` -- the model [a_kj b_k Q_k d_k] of Bouveyron, Girard & Schmid (2007),
  "High-dimensional data clustering", Comput. Stat. Data Anal. 52(1): the ``d_k`` leading
  eigenvalues ``a_kj`` of the covariance are free, the other ``D - d_k`` are tied to their
  mean ``b_k``; ``alpha = 1/b``, ``sign = -1`` and ``w_j = sqrt(1/b - 1/a_j) q_j`` for the
  leading eigenvectors ``q_j``. ``d_k`` comes from Cattell's scree test (the last eigenvalue
  gap above ``threshold`` times the largest gap; threshold 0.2 as in that paper) or is
  fixed. A point costs O(D d_k) per component instead of O(D^2).
* ``full`` -- ordinary full-covariance EM: ``alpha = 0``, ``sign = +1`` and ``w_j`` the rows
  of ``W = L^-1`` for the Cholesky factor ``Sigma = L L^T``.

The M-step factorises K small D x D matrices per segment: one batched ``eigh`` for ``hddc``
(all eigenvalues for the scree test and b_k, the leading eigenvectors for Q_k), Cholesky for
``full``. On a CPU they run on one intra-op thread. LAPACK gains nothing from threads on
such a batch, and a threaded call can stall while another process holds a core: on 2 cores
with one core busy, ``eigh`` of 320 matrices of 32 x 32 took a median 48 ms on two threads,
with one call taking 14 s, against 17-20 ms on one thread. On a GPU the same ``eigh`` is
cuSOLVER's batched Jacobi.

Numerics. Eigen-decompositions and scatter accumulations run in float64. The variance floor
``reg`` is added to every eigenvalue (for ``full`` this is ``Sigma + reg I``, the authors'
``1e-6 I``; for ``hddc`` it is the HDDC model of ``Sigma + reg I``). Features of real latent
units lie near a one-dimensional curve, so most eigenvalues sit at that floor, far below the
features' squared norm: squared distances are therefore computed in float64 (one matmul with
the points lifted to (x, 1, ||x||^2), see ``Points``), and the M-step centres every point on
the component it contributes to before forming outer products, never through
``E[x x^T] - mu mu^T`` (which cancels catastrophically in float32).

The M-step ignores responsibilities below ``resp_eps`` (default 1e-8): each point then feeds
the one to three components that explain it rather than all K, so the covariance update
costs O(n D^2) instead of O(n K D^2). The responsibility mass dropped per component is at
most ``n * resp_eps`` (1e-3 points for n = 100,000); ``resp_eps=0`` gives exact EM.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

#: Default responsibility threshold of the sparse M-step (see the module docstring).
RESP_EPS = 1e-8
#: Soft count below which a component is "empty" and re-seeded: less than one point.
EMPTY_COUNT = 1.0
# Work-space bound, in tensor elements, of one block of points in the E- and M-steps. On a
# CPU small enough (4 MB of float32) that temporaries come from the allocator's cached heap:
# fresh tensors of tens of MB are mmap-ed and pay a page fault per 4 kB on first touch,
# which costs more than the arithmetic on them. On a GPU large, so that a block is a few big
# kernels rather than many launches.
_BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
#: Lower clamp of log-responsibilities before exp (see ``e_step``).
EXP_FLOOR = -80.0


def block_elements(device: torch.device) -> int:
    """Elements of a block of temporaries on ``device`` (see ``_BLOCK_ELEMENTS``)."""
    return _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cuda"])


class Mixture(NamedTuple):
    """Gaussian mixtures of G segments in a padded ``[G, K]`` layout.

    Valid components occupy a prefix of their segment's K slots; weights sum to one over
    the valid slots of a segment. Covariances are stored as quadratic forms (module
    docstring): ``hddc`` keeps Q_k (``basis``), a_kj (``scales``), b_k (``noise``) and d_k;
    ``full`` keeps W^T = L^-T (``basis``) with ``noise = 0``.
    """

    means: Tensor  # [G, K, D]
    basis: Tensor  # [G, K, D, m]  hddc: leading eigenvectors (columns); full: L^-T (m = D)
    scales: Tensor  # [G, K, m]  hddc: a_kj for j < d_k (b_k beyond); full: 1
    noise: Tensor  # [G, K]  hddc: b_k; full: 0
    n_dims: Tensor  # [G, K] long  hddc: d_k; full: D
    log_det: Tensor  # [G, K]  log |Sigma_k|
    weights: Tensor  # [G, K]  mixing weights, 0 on invalid slots
    valid: Tensor  # [G, K] bool

    @property
    def n_slots(self) -> int:
        return self.means.shape[1]

    def map(self, fn) -> "Mixture":
        return Mixture(*(fn(t) for t in self))

    def take(self, rows: Tensor) -> "Mixture":
        """The mixtures of segments ``rows`` [C] (one per chunk)."""
        return self.map(lambda t: t.index_select(0, rows))

    def select(self, index: Tensor) -> "Mixture":
        """Gather slots per segment: ``index`` is [G, K'] (slot numbers)."""
        def take(t: Tensor) -> Tensor:
            idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
            return t.gather(1, idx)
        return self.map(take)

    def where(self, keep: Tensor, other: "Mixture") -> "Mixture":
        """Per segment: this mixture where ``keep`` [G] is true, else ``other``."""
        return Mixture(*(torch.where(keep.reshape(-1, *([1] * (a.dim() - 1))), a, b) for a, b in zip(self, other)))

    def trimmed(self) -> "Mixture":
        """Drop trailing slots that are invalid in every segment (so E-steps skip them)."""
        last = (self.valid * torch.arange(1, self.n_slots + 1, device=self.valid.device)).amax(1)  # holes allowed
        used = int(last.max().clamp(min=1))  # sync: sizes the next kernels
        return self.map(lambda t: t[:, :used]) if used < self.n_slots else self

    def padded(self, n_slots: int) -> "Mixture":
        """Append invalid slots up to ``n_slots``."""
        extra = n_slots - self.n_slots
        if extra <= 0:
            return self
        G, _, D = self.means.shape
        blank = isotropic(G, extra, D, 1.0, full=False, dtype=self.means.dtype, device=self.means.device)
        blank = blank.with_width(self.width)
        return Mixture(*(torch.cat([a, b.to(a.dtype)], 1) for a, b in zip(self, blank)))

    @property
    def width(self) -> int:
        return self.basis.shape[-1]

    def with_width(self, m: int) -> "Mixture":
        """The same mixtures with ``m`` basis columns (zero columns / scales b_k appended, or dropped)."""
        have = self.width
        if m == have:
            return self
        if m < have:
            return self._replace(basis=self.basis[..., :m], scales=self.scales[..., :m])
        G, K, D, _ = self.basis.shape
        basis = torch.cat([self.basis, self.basis.new_zeros(G, K, D, m - have)], -1)
        scales = torch.cat([self.scales, self.noise.unsqueeze(-1).expand(G, K, m - have)], -1)
        return self._replace(basis=basis, scales=scales)

    def covariances(self) -> Tensor:
        """Dense covariances [G, K, D, D] in float64."""
        D = self.means.shape[-1]
        basis = self.basis.double()
        eye = torch.eye(D, dtype=torch.float64, device=basis.device)
        full = self.noise <= 0
        # hddc: b I + sum_j (a_j - b) q_j q_j^T over j < d_k
        lead = (torch.arange(self.width, device=basis.device) < self.n_dims.unsqueeze(-1))
        excess = (self.scales.double() - self.noise.double().unsqueeze(-1)) * lead
        hddc = self.noise.double()[..., None, None] * eye + torch.einsum("gkij,gkj,gklj->gkil", basis, excess, basis)
        # full: (W^T W)^-1 with W^T = basis
        precision = basis @ basis.transpose(-1, -2)
        precision = torch.where(full[..., None, None], precision, eye)
        return torch.where(full[..., None, None], torch.linalg.inv(precision), hddc)


class EMResult(NamedTuple):
    """What ``fit_em`` reports besides the fitted mixtures (per segment)."""

    n_iter: Tensor  # [G] long  M-steps taken
    converged: Tensor  # [G] bool  the change of mean log-likelihood fell below ``tol``
    history: list[Tensor]  # one [G] float64 tensor per E-step: mean log-likelihood per point


def isotropic(n_segments: int, n_slots: int, dim: int, variance: float, *, full: bool, dtype, device,
              n_dims: int = 1) -> Mixture:
    """Invalid placeholder components: zero means, covariance ``variance * I``."""
    if full:
        basis = torch.eye(dim, dtype=dtype, device=device) / math.sqrt(variance)
        scales, noise, d = torch.ones(dim, dtype=dtype, device=device), 0.0, dim
    else:
        m = max(1, min(n_dims, max(dim - 1, 1)))
        basis = torch.eye(dim, dtype=dtype, device=device)[:, :m]
        scales, noise = torch.full((m,), variance, dtype=dtype, device=device), variance
        d = min(n_dims, max(dim - 1, 0))
    return Mixture(
        means=torch.zeros(n_segments, n_slots, dim, dtype=dtype, device=device),
        basis=basis.expand(n_segments, n_slots, *basis.shape).clone(),
        scales=scales.expand(n_segments, n_slots, -1).clone(),
        noise=torch.full((n_segments, n_slots), noise, dtype=dtype, device=device),
        n_dims=torch.full((n_segments, n_slots), d, dtype=torch.long, device=device),
        log_det=torch.full((n_segments, n_slots), dim * math.log(variance), dtype=dtype, device=device),
        weights=torch.zeros(n_segments, n_slots, dtype=dtype, device=device),
        valid=torch.zeros(n_segments, n_slots, dtype=torch.bool, device=device),
    )


class Points(NamedTuple):
    """Points in chunks, prepared once per EM run.

    ``owner[c]`` is the segment (mixture) of chunk c, ``None`` when chunk c is segment c.
    ``mask`` marks real points (``None``: all are real); padded points take no part.
    ``lifted`` holds each point as the float64 row (x, 1, ||x||^2): one matmul with the rows
    of ``distance_rows`` then gives ``c - a ||x - mu||^2 / 2`` for every point and
    component, exact in float64 where the covariance floor (1e-6) is far below the
    features' squared norm. Matmuls that want points as columns take transposed views:
    BLAS reads them as fast as a transposed copy, and a copy of 100,000 points x 20 units
    costs more than the matmuls it would serve.
    """

    x: Tensor  # [C, L, D]  compute dtype (float32, or float64 when given float64)
    lifted: Tensor  # [C, L, D + 2]  float64 (x, 1, ||x||^2)
    owner: Tensor | None = None  # [C] long
    mask: Tensor | None = None  # [C, L] bool

    @classmethod
    def of(cls, x: Tensor, owner: Tensor | None = None, mask: Tensor | None = None) -> "Points":
        x = x.contiguous()
        if x.requires_grad:
            x64 = x.double()
            lifted = torch.cat([x64, torch.ones_like(x64[..., :1]), x64.square().sum(-1, keepdim=True)], -1)
        else:  # filled in place, without float64 temporaries the size of the points
            C, L, D = x.shape
            lifted = torch.empty(C, L, D + 2, dtype=torch.float64, device=x.device)
            lifted[..., :D] = x
            lifted[..., D] = 1.0
            lifted[..., D + 1] = torch.linalg.vector_norm(lifted[..., :D], dim=-1).square_()
        return cls(x, lifted, owner, mask)

    @property
    def n_segments(self) -> int:
        return self.x.shape[0] if self.owner is None else int(self.owner.max()) + 1

    def per_segment(self, values: Tensor) -> Tensor:
        """Sum per-chunk values [C, ...] into per-segment values [G, ...]."""
        if self.owner is None:
            return values
        out = torch.zeros(self.n_segments, *values.shape[1:], dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.owner, values)

    def segment_mixture(self, mix: Mixture) -> Mixture:
        """The mixture of each chunk's segment."""
        return mix if self.owner is None else mix.take(self.owner)

    def restrict(self, segments: Tensor) -> "Points":
        """Only the chunks of ``segments`` [G'] (sorted), renumbered 0..G'-1 in that order."""
        if self.owner is None:
            chunks, owner = segments, None
        else:
            keep = torch.zeros(self.n_segments, dtype=torch.bool, device=self.owner.device)
            keep[segments] = True
            chunks = keep[self.owner].nonzero().squeeze(1)
            renumber = torch.cumsum(keep.long(), 0) - 1
            owner = renumber[self.owner[chunks]]
        mask = None if self.mask is None else self.mask[chunks]
        return Points(self.x[chunks], self.lifted[chunks], owner, mask)

    def per_chunk(self, values: Tensor) -> Tensor:
        """Per-segment values [G, ...] repeated for each chunk: [C, ...]."""
        return values if self.owner is None else values.index_select(0, self.owner)


def distance_rows(means: Tensor, alpha: Tensor, const: Tensor) -> Tensor:
    """Rows r_k [..., K, D + 2] (float64) with ``lifted_x . r_k = const_k - alpha_k ||x - mu_k||^2 / 2``.

    ``means`` [..., K, D], ``alpha`` and ``const`` [..., K]; see ``Points.lifted``.
    """
    means = means.double()
    alpha = alpha.double().unsqueeze(-1)
    const = const.double().unsqueeze(-1)
    return torch.cat([alpha * means, const - 0.5 * alpha * means.square().sum(-1, keepdim=True), -0.5 * alpha], -1)


def squared_distances(points: Points, means: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """||x_i - mu_k||^2 in float64 for points ``start:stop`` of every chunk and ``means``
    [C, K, D] (one set per chunk): [C, K, L']."""
    rows = distance_rows(means, means.new_full(means.shape[:-1], -2.0), means.new_zeros(means.shape[:-1]))
    return torch.bmm(rows, points.lifted[:, start:stop].transpose(1, 2)).clamp_(min=0)


# ----------------------------------------------------------------------------------------------
# Covariance model: eigen-decomposition, Cattell's scree test, the HDDC tie.


def cattell_dims(eigvals: Tensor, threshold: float) -> Tensor:
    """Intrinsic dimension by Cattell's scree test (Bouveyron et al. 2007, section 4.1).

    ``eigvals`` [..., D] in decreasing order. The dimension is the last ``j`` whose gap
    ``lambda_j - lambda_{j+1}`` exceeds ``threshold`` times the largest gap; it is clipped
    to ``[1, D - 1]`` so that at least one direction is free and one is tied (an isotropic
    cluster, all gaps zero, gets d = 1, which describes the same Gaussian).
    """
    D = eigvals.shape[-1]
    if D < 2:
        return torch.zeros(eigvals.shape[:-1], dtype=torch.long, device=eigvals.device)
    gaps = eigvals[..., :-1] - eigvals[..., 1:]  # [..., D-1]
    big = gaps > threshold * gaps.amax(-1, keepdim=True)
    order = torch.arange(1, D, device=eigvals.device)
    return (big * order).amax(-1).clamp(1, D - 1)


def _regularised(cov: Tensor, reg: float) -> Tensor:
    D = cov.shape[-1]
    sym = 0.5 * (cov + cov.transpose(-1, -2)) + reg * torch.eye(D, dtype=cov.dtype, device=cov.device)
    # Entries far below the floor only move eigenvalues far below it, but as subnormal
    # numbers they can slow LAPACK down by orders of magnitude: flush them.
    return torch.where(sym.abs() < 1e-9 * reg, torch.zeros_like(sym), sym)


def full_model(cov: Tensor, *, reg: float) -> tuple[Tensor, Tensor]:
    """Full covariance ``cov + reg I`` as (W^T = L^-T [..., D, D], log|Sigma| [...]), float64."""
    D = cov.shape[-1]
    sym = _regularised(cov, reg)
    with _one_thread_on_cpu(sym.device):
        chol, info = torch.linalg.cholesky_ex(sym)
        jitter = reg
        while bool((info > 0).any()):  # rounding made a matrix indefinite: raise its floor
            jitter *= 10
            sym = torch.where((info > 0)[..., None, None], sym + jitter * torch.eye(D, dtype=sym.dtype,
                                                                                    device=sym.device), sym)
            chol, info = torch.linalg.cholesky_ex(sym)
        eye = torch.eye(D, dtype=sym.dtype, device=sym.device).expand_as(sym)
        inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # W = L^-1
    return inv.transpose(-1, -2), 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def hddc_model(cov: Tensor, valid: Tensor, *, reg: float, dim_threshold: float = 0.2,
               n_dims: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """HDDC parameters of ``cov + reg I`` (float64).

    Parameters
    ----------
    cov : [..., D, D] sample covariances.
    valid : [...] bool, the matrices whose d_k sets the subspace size.

    Returns
    -------
    basis Q [..., D, m] (leading eigenvectors, m = max d_k), scales [..., m] (a_kj for
    j < d_k, b_k beyond), noise b_k [...], d_k [...] long, log|Sigma| [...].
    """
    D = cov.shape[-1]
    sym = _regularised(cov, reg)
    with _one_thread_on_cpu(sym.device):
        lam, vec = torch.linalg.eigh(sym)
    lam, vec = lam.flip(-1).clamp(min=reg), vec.flip(-1)  # decreasing
    if n_dims is None:
        d = cattell_dims(lam, dim_threshold)  # the floor shifts every eigenvalue alike: gaps unchanged
    else:
        d = torch.full(lam.shape[:-1], min(int(n_dims), max(D - 1, 0)), dtype=torch.long, device=lam.device)
    m = max(1, int(d.masked_fill(~valid, 0).max()))  # sync: subspace size
    lead = torch.arange(m, device=lam.device) < d.unsqueeze(-1)
    tail = torch.arange(D, device=lam.device) >= d.unsqueeze(-1)
    b = ((lam * tail).sum(-1) / tail.sum(-1).clamp(min=1)).clamp(min=reg)
    a = torch.where(lead, lam[..., :m], b.unsqueeze(-1))
    log_det = (a.log() * lead).sum(-1) + (D - d) * b.log()
    return vec[..., :m], a, b, d, log_det


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """Run the block on one intra-op thread when on a CPU (module docstring: a threaded
    factorisation of many small matrices can stall while another process holds a core)."""
    if device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # this thread's OpenMP and MKL settings, as in ``parallel.py``
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# ----------------------------------------------------------------------------------------------
# E-step


class _Terms(NamedTuple):
    """Point-independent parts of the log-density, per chunk (see ``density_terms``)."""

    rows: Tensor  # [C, K, D + 2] float64: const_k - alpha_k ||x - mu_k||^2 / 2 (``distance_rows``)
    proj: Tensor  # [C, shared*K + E, D]  the w_kj: j-major rows for j < shared, then the extra rows
    offset: Tensor  # [C, shared*K + E, 1]  w_kj . mu_k
    extra_slot: Tensor  # [C, E] long  the component of each extra row (padding rows are zero)
    half_sign: Tensor  # [C, K, 1]  -sign / 2: +1/2 (hddc) or -1/2 (full)
    shared: int  # projections that every valid component has
    need_dist: bool  # some valid component has alpha > 0 (hddc); else ``rows`` only carries const
    layers: tuple[tuple[int, int, int], ...]  # (j0, j1, cols): shared layers j0:j1 read x[:cols]

    @property
    def width(self) -> int:
        """Projection rows per component, on average (sizes the E-step's blocks)."""
        K = self.rows.shape[1]
        return self.proj.shape[1] // max(1, K)


def density_terms(mix: Mixture, dtype: torch.dtype, with_weights: bool = True) -> _Terms:
    """Point-independent quantities of

    log w_k N(x | mu_k, Sigma_k) = const_k - 1/2 [ alpha_k ||x - mu_k||^2 + sign_k sum_j (w_kj . (x - mu_k))^2 ]

    hddc: alpha = 1/b, sign = -1, w_j = sqrt(1/b - 1/a_j) q_j for j < d_k, because
    Sigma^-1 = I/b - sum_j (1/b - 1/a_j) q_j q_j^T; full: alpha = 0, sign = +1, w_j = rows of L^-1.
    const_k is -inf on invalid slots (the matmul with ``Points.lifted`` carries it through).

    The projections j < ``shared`` (the smallest d_k of a valid component) are laid out for
    every component; the few beyond go to *extra rows*, each tagged with its component.
    HDDC fits mostly have d_k = 1 with a rare d_k = 2, and a full [K, max d_k] layout would
    then double the E-step's projection work for one component.

    The shared layers come in up to four groups that each read only the leading coordinates
    where some w_kj of the group is nonzero. For ``full``, W = L^-1 is lower triangular
    (row j is zero beyond column j), so the groups skip about 3/8 of the projection
    arithmetic, which is most of a full-covariance E-step; HDDC bases are dense and form
    one group.
    """
    C, K, D = mix.means.shape
    noise = mix.noise.double()
    hddc = noise > 0
    m = mix.width
    used = torch.where(hddc, mix.n_dims.clamp(max=m), torch.full_like(mix.n_dims, m)).masked_fill(~mix.valid, 0)
    if K and bool(mix.valid.any()):
        dm, shared = torch.stack([used.max(), used.masked_fill(~mix.valid, m).min()]).tolist()  # sync: layout
    else:
        dm = shared = 0
    need_dist = bool((hddc & mix.valid).any())
    scales = mix.scales.double()[..., :dm]
    inv_b = 1.0 / noise.clamp(min=1e-300)
    coef = torch.where(hddc.unsqueeze(-1), (inv_b.unsqueeze(-1) - 1.0 / scales).clamp(min=0).sqrt(),
                       torch.ones_like(scales))
    scaled = mix.basis[..., :dm].double() * coef.unsqueeze(-2)  # [C, K, D, dm]
    offsets = torch.einsum("ckd,ckdj->ckj", mix.means.double(), scaled)  # [C, K, dm]
    extra, extra_offset, extra_slot = _extra_rows(scaled, offsets, used, shared)
    proj = torch.cat([rearrange(scaled[..., :shared], "c k d j -> c (j k) d"), extra], 1)
    # per shared layer j: 1 + the last coordinate where some w_kj is nonzero
    touched = scaled[..., :shared].ne(0).any(0).any(0)  # [D, shared]
    reach = ((torch.arange(1, D + 1, device=noise.device).unsqueeze(1) * touched).amax(0)
             if shared else noise.new_zeros(0, dtype=torch.long))
    layers = _layer_groups(reach.tolist(), D)  # sync: layout
    offset = torch.cat([rearrange(offsets[..., :shared], "c k j -> c (j k)"), extra_offset], 1).unsqueeze(-1)
    const = -0.5 * (D * math.log(2 * math.pi) + mix.log_det.double())
    if with_weights:
        const = const + torch.log(mix.weights.double())
    const = const.masked_fill(~mix.valid, float("-inf"))
    alpha = torch.where(hddc & mix.valid, inv_b, 0.0)
    return _Terms(distance_rows(mix.means, alpha, const), proj.to(dtype), offset.to(dtype), extra_slot,
                  torch.where(hddc, 0.5, -0.5).unsqueeze(-1).to(dtype), shared, need_dist, layers)


def _extra_rows(scaled: Tensor, offsets: Tensor, used: Tensor, shared: int) -> tuple[Tensor, Tensor, Tensor]:
    """The projections (chunk, slot, j) with ``shared <= j < used`` packed per chunk: rows
    [C, E, D], their offsets [C, E] and slots [C, E] (zero rows pad chunks with fewer)."""
    C, _, D, dm = scaled.shape
    j_range = torch.arange(dm, device=used.device)
    c, k, j = ((j_range >= shared) & (j_range < used.unsqueeze(-1))).nonzero(as_tuple=True)
    per_chunk = torch.bincount(c, minlength=C)
    n_extra = int(per_chunk.max()) if len(c) else 0  # sync: layout
    place = torch.arange(len(c), device=c.device) - (torch.cumsum(per_chunk, 0) - per_chunk)[c]
    rows = scaled.new_zeros(C, n_extra, D)
    rows[c, place] = scaled[c, k, :, j]
    row_offsets = offsets.new_zeros(C, n_extra)
    row_offsets[c, place] = offsets[c, k, j]
    slots = torch.zeros(C, n_extra, dtype=torch.long, device=c.device)
    slots[c, place] = k
    return rows, row_offsets, slots


def _layer_groups(reach: list[int], dim: int, n_groups: int = 4) -> tuple[tuple[int, int, int], ...]:
    """Runs (j0, j1, cols) of about ``len(reach) / n_groups`` layers, each reading x[:cols]
    with cols the largest ``reach`` in the run; once a run needs every coordinate, it takes
    all remaining layers."""
    n, groups, j0 = len(reach), [], 0
    size = max(1, -(-n // n_groups))
    while j0 < n:
        j1 = min(n, j0 + size)
        cols = max(1, max(reach[j0:j1]))
        if cols >= dim:
            j1, cols = n, dim
        groups.append((j0, j1, cols))
        j0 = j1
    return tuple(groups)


def log_density(points: Points, terms: _Terms, start: int = 0, stop: int | None = None) -> Tensor:
    """log w_k N(x_i | mu_k, Sigma_k) for points ``start:stop`` of every chunk: [C, K, L'].

    ``terms`` must be per chunk (``density_terms(points.segment_mixture(mix), ...)``).
    Differentiable in the points when gradients are enabled.
    """
    xt = points.x[:, start:stop].transpose(1, 2)
    C, D, nb = xt.shape
    K = terms.rows.shape[1]
    if terms.need_dist:  # const - alpha ||x - mu||^2 / 2, in float64
        logp = torch.bmm(terms.rows, points.lifted[:, start:stop].transpose(1, 2)).to(xt.dtype)
    else:
        logp = terms.rows[..., D].unsqueeze(-1).to(xt.dtype).expand(C, K, nb)
    if not terms.proj.shape[1]:
        return logp if terms.need_dist else logp.clone()
    grad = torch.is_grad_enabled() and (xt.requires_grad or points.lifted.requires_grad)
    total = None
    for j0, j1, cols in terms.layers:  # sum_j (w_kj . x - w_kj . mu_k)^2 over the shared layers
        rows = slice(j0 * K, j1 * K)
        p = torch.bmm(terms.proj[:, rows, :cols], xt[:, :cols])
        p = (p - terms.offset[:, rows]).square() if grad else p.sub_(terms.offset[:, rows]).square_()
        part = p if j1 - j0 == 1 else p.view(C, j1 - j0, K, nb).sum(1)
        total = part if total is None else (total + part if grad else total.add_(part))
    n_shared, n_extra = terms.shared * K, terms.extra_slot.shape[1]
    if n_extra:
        p = torch.bmm(terms.proj[:, n_shared:], xt)
        p = (p - terms.offset[:, n_shared:]).square() if grad else p.sub_(terms.offset[:, n_shared:]).square_()
        slot = terms.extra_slot.unsqueeze(-1).expand(C, n_extra, nb)
        if total is None:
            total = p.new_zeros(C, K, nb)
        total = total.scatter_add(1, slot, p) if grad else total.scatter_add_(1, slot, p)
    if grad:
        return logp + terms.half_sign * total
    if not terms.need_dist:
        return torch.addcmul(logp, total, terms.half_sign)
    return logp.addcmul_(total, terms.half_sign)


def e_step(points: Points, mix: Mixture, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Responsibilities and per-point log-likelihoods.

    ``out`` is an optional [C, >=K, L] buffer for the responsibilities (EM reuses one across
    iterations, for the same page-fault reason as ``block_elements``).

    Returns
    -------
    resp : [C, K, L] component-major responsibilities (0 on invalid slots and masked points).
    log_lik : [C, L] log p(x_i) under its segment's mixture (0 for masked points).
    """
    x = points.x
    C, L, D = x.shape
    terms = density_terms(points.segment_mixture(mix), x.dtype)
    K = terms.rows.shape[1]
    if out is not None and out.shape[0] == C and out.shape[1] >= K and out.shape[2] == L and out.dtype == x.dtype:
        resp = out[:, :K]
    else:
        resp = torch.empty(C, K, L, dtype=x.dtype, device=x.device)
    log_lik = torch.empty(C, L, dtype=x.dtype, device=x.device)
    live = terms.rows[..., D:D + 1].isfinite()  # [C, K, 1]: false on invalid slots (const -inf)
    live = None if bool(live.all()) else live.to(x.dtype)  # sync
    block = max(1, min(L, block_elements(x.device) // max(1, C * K * (terms.width + 2))))
    for start in range(0, L, block):
        stop = min(L, start + block)
        logp = log_density(points, terms, start, stop)  # [C, K, nb]
        top = logp.amax(1, keepdim=True)  # reductions over K run across contiguous points
        top = top.masked_fill_(~torch.isfinite(top), 0.0)
        # exp(-80) = 2e-35 is still a normal float: clamping there keeps exp off its slow
        # paths for huge negative arguments and subnormal results, and changes nothing
        # that any sum here can see.
        e = torch.exp(logp.sub_(top).clamp_(min=EXP_FLOOR), out=resp[:, :, start:stop])
        if live is not None:
            e.mul_(live)
        total = e.sum(1, keepdim=True)
        e.div_(total)
        log_lik[:, start:stop] = (total.log_() + top).squeeze(1)
    if points.mask is not None:
        resp.masked_fill_(~points.mask.unsqueeze(1), 0.0)
        log_lik.masked_fill_(~points.mask, 0.0)
    return resp, log_lik


# ----------------------------------------------------------------------------------------------
# M-step


def scatter_matrices(points: Points, resp: Tensor, means: Tensor, resp_eps: float = RESP_EPS) -> Tensor:
    """Weighted scatter sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T of every segment and slot.

    Only pairs with ``r_ik > resp_eps`` are used. ``nonzero`` lists them in (chunk, slot,
    point) order, so the pairs of one (chunk, slot) -- a *run* -- are contiguous and a
    binary search finds where each run ends. Whole runs are then taken about
    ``block_elements / D`` pairs at a time (``_add_runs``). With at most
    ``_DENSE_SCATTER_SLOTS`` slots every pair is taken in place instead (``_dense_scatter``).

    Parameters
    ----------
    resp : [C, K, L] responsibilities.
    means : [G, K, D] the new means.

    Returns
    -------
    [G, K, D, D] float64.
    """
    x = points.x
    C, L, D = x.shape
    K = resp.shape[1]
    G = means.shape[0]
    owner = torch.arange(C, device=x.device) if points.owner is None else points.owner
    out = torch.zeros(G * K, D, D, dtype=torch.float64, device=x.device)
    if K <= _DENSE_SCATTER_SLOTS:
        return _dense_scatter(out, points.x, owner, resp, means, resp_eps).view(G, K, D, D)
    flat_means = means.reshape(G * K, D)
    group = max(1, 8 * block_elements(x.device) // (K * L))  # chunks whose pairs are listed at once
    piece = max(1, block_elements(x.device) // D)  # pairs gathered at once
    work = x.new_empty(0)  # the gathered points, reused: fresh memory would page-fault
    for first in range(0, C, group):
        block = resp[first:first + group]
        flat = (block > resp_eps).view(-1).nonzero().squeeze(1)  # sorted by run, then point
        if not flat.numel():
            continue
        run = torch.arange(block.shape[0] * K, device=x.device)
        ends = torch.searchsorted(flat, (run + 1) * L)  # a run's pairs end here
        runs = _Runs(flat, ends, torch.diff(ends, prepend=ends.new_zeros(1)),
                     shift=(run - run // K) * L,  # pair index -> point row, per run
                     target=owner[first + run // K] * K + run % K)
        # pieces of whole runs, about ``piece`` pairs each (a longer run is a piece alone)
        budget = torch.arange(piece, flat.numel() + piece, piece, device=x.device)
        cuts = torch.cat([run.new_zeros(1), torch.searchsorted(ends, budget, right=True), run[-1:] + 1])
        cuts = torch.unique_consecutive(cuts).tolist()  # sync: once per group
        points_here = x[first:first + group].reshape(-1, D)
        for r0, r1 in zip(cuts[:-1], cuts[1:]):
            work = _add_runs(out, points_here, flat_means, block, runs, r0, r1, work)
    return out.view(G, K, D, D)


#: Up to this many slots (the two children of every split) ``scatter_matrices`` takes every
#: (point, slot) pair in place instead of listing the pairs above ``resp_eps``: most points
#: feed both children, and the listing and gathering then cost more than the arithmetic they
#: save (split rounds of the 20 x 100,000 benchmark: 10-46 ms against 17-63 ms per call).
_DENSE_SCATTER_SLOTS = 2


def _dense_scatter(out: Tensor, x: Tensor, owner: Tensor, resp: Tensor, means: Tensor, resp_eps: float) -> Tensor:
    """``scatter_matrices`` over all pairs of a few chunks at a time, weights at or below
    ``resp_eps`` set to zero (the same sums as the listed pairs give). ``out`` is [G*K, D, D]."""
    C, L, D = x.shape
    K = resp.shape[1]
    step = max(1, block_elements(x.device) // (K * L * D))  # chunks at once
    target = (owner.unsqueeze(1) * K + torch.arange(K, device=x.device)).view(-1)
    work = x.new_empty(min(C, step) * K * L * D)  # reused: fresh memory would page-fault
    for c0 in range(0, C, step):
        c1 = min(C, c0 + step)
        r = resp[c0:c1]
        root = torch.where(r > resp_eps, r, 0.0).sqrt_().unsqueeze(-1)  # [c, K, L, 1]
        rows = work[:(c1 - c0) * K * L * D].view(c1 - c0, K, L, D)
        torch.sub(x[c0:c1].unsqueeze(1), means[owner[c0:c1]].unsqueeze(2), out=rows).mul_(root)
        rows = rows.view(-1, L, D)
        out.index_add_(0, target[c0 * K:c1 * K], torch.bmm(rows.transpose(1, 2), rows).double())
    return out


class _Runs(NamedTuple):
    """The pairs of one group of chunks, by run (see ``scatter_matrices``)."""

    flat: Tensor  # [N] pair indices into the group's [c, K, L] responsibilities, sorted
    ends: Tensor  # [c*K] where each run's pairs end in ``flat``
    counts: Tensor  # [c*K] pairs per run
    shift: Tensor  # [c*K] flat index - point row, for every pair of the run
    target: Tensor  # [c*K] segment * K + slot


def _add_runs(out: Tensor, flat_x: Tensor, flat_means: Tensor, resp: Tensor, runs: _Runs, r0: int, r1: int,
              work: Tensor) -> Tensor:
    """Add sum r (x - mu)(x - mu)^T over the pairs of runs ``r0:r1`` to ``out``.

    Each run is cut into rows of equal length, padded at its end with weight zero; one
    gather puts every pair's point at its place in the rows, centring and scaling by
    sqrt(r) follow in place, and one batched matmul forms the outer-product sums of all
    rows. Returns the workspace (grown when it was too small).
    """
    D = flat_x.shape[1]
    counts = runs.counts[r0:r1]
    p0 = int(runs.ends[r0] - counts[0])  # sync: the pair range
    p1 = int(runs.ends[r1 - 1])
    if p1 == p0:
        return work
    flat = runs.flat[p0:p1]
    # rows of about half the mean run: padding then averages about a quarter of the pairs
    half_run = max(1, (p1 - p0) // (2 * max(1, int((counts > 0).sum()))))
    length = 1 << max(4, min(10, (half_run - 1).bit_length()))
    n_rows = (counts + length - 1) // length
    pair_first = torch.cumsum(counts, 0) - counts
    row_first = torch.cumsum(n_rows, 0) - n_rows
    per_pair = torch.repeat_interleave(torch.stack([row_first * length - pair_first, runs.shift[r0:r1]], 1),
                                       counts, dim=0)
    place = per_pair[:, 0] + torch.arange(p1 - p0, device=flat.device)
    size = int(n_rows.sum()) * length
    source = torch.zeros(size, dtype=torch.long, device=flat.device).index_copy_(0, place, flat - per_pair[:, 1])
    root = flat_x.new_zeros(size).index_copy_(0, place, torch.take(resp, flat).sqrt_())
    if work.numel() < size * D:
        work = flat_x.new_empty(size * D)
    packed = torch.index_select(flat_x, 0, source, out=work[:size * D].view(size, D)).view(-1, length, D)
    row_target = torch.repeat_interleave(runs.target[r0:r1], n_rows)
    packed.sub_(flat_means.index_select(0, row_target).unsqueeze(1)).mul_(root.view(-1, length, 1))
    out.index_add_(0, row_target, torch.bmm(packed.transpose(1, 2), packed).double())
    return work


def m_step(points: Points, resp: Tensor, log_lik: Tensor, mix: Mixture, *, model: str, reg: float,
           dim_threshold: float = 0.2, n_dims: int | None = None, resp_eps: float = RESP_EPS,
           frozen: Tensor | None = None) -> Mixture:
    """New means, covariance models and weights of every segment from responsibilities.

    ``resp`` and ``log_lik`` come from the E-step (``e_step``). A component whose soft
    count falls below one point is re-seeded with an isotropic covariance at the mean
    variance of the segment's other components, on the point of its segment that the
    mixture explains worst (lowest ``log_lik``; the j-th empty slot takes the j-th worst),
    as k-means implementations move an empty cluster to the farthest point. This keeps EM
    alive on degenerate data instead of producing NaNs. A random point would mostly land
    where other components already dominate, leave the component empty again, and keep its
    mixture from converging (seen: one re-seed in each of 29 iterations). Segments marked
    ``frozen`` [G] (their update is discarded) are never re-seeded.
    """
    x = points.x
    D = x.shape[-1]
    # summed in the compute dtype (torch sums blockwise, so 100,000 terms lose nothing that
    # matters); a float64 sum would first copy all responsibilities to float64
    nk = points.per_segment(resp.sum(-1).double())  # [G, K]
    sums = points.per_segment(torch.bmm(resp, x).double())  # [G, K, D]
    means = (sums / nk.clamp(min=1e-300).unsqueeze(-1)).to(x.dtype)
    scatter = scatter_matrices(points, resp, means, resp_eps)
    cov = scatter / nk.clamp(min=1e-300)[..., None, None]
    if model == "full":
        basis, log_det = full_model(cov, reg=reg)
        scales = torch.ones(*basis.shape[:-2], D, dtype=x.dtype, device=x.device)
        noise = torch.zeros_like(log_det)
        d = torch.full_like(nk, D, dtype=torch.long)
    else:
        basis, scales, noise, d, log_det = hddc_model(cov, mix.valid, reg=reg, dim_threshold=dim_threshold,
                                                      n_dims=n_dims)
    nk = nk * mix.valid
    weights = nk / nk.sum(1, keepdim=True).clamp(min=1e-300)
    new = Mixture(means, basis.to(x.dtype), scales.to(x.dtype), noise.to(x.dtype), d, log_det.to(x.dtype),
                  weights.to(x.dtype), mix.valid)
    empty = mix.valid & (nk < EMPTY_COUNT)
    if frozen is not None:
        empty &= ~frozen.unsqueeze(1)
    if bool(empty.any()):  # sync, rare: only degenerate fits reach this branch
        new = _reseed(points, new, empty, log_lik, model=model, n_dims=n_dims)
    return new


def _reseed(points: Points, mix: Mixture, empty: Tensor, log_lik: Tensor, *, model: str,
            n_dims: int | None) -> Mixture:
    x = points.x
    C, L, D = x.shape
    g, k = empty.nonzero(as_tuple=True)  # in (segment, slot) order
    owner = torch.arange(C, device=x.device) if points.owner is None else points.owner
    real = torch.ones(C, L, dtype=torch.bool, device=x.device) if points.mask is None else points.mask
    candidates = ((owner.unsqueeze(0) == g.unsqueeze(1)).unsqueeze(-1) & real.unsqueeze(0)).flatten(1)
    fit = log_lik.flatten().unsqueeze(0).masked_fill(~candidates, float("inf"))  # [E, C*L]
    rank = torch.arange(len(g), device=g.device) - torch.searchsorted(g, g)  # among the segment's empty slots
    rank = torch.minimum(rank, candidates.sum(1) - 1)  # fewer points than empty slots: share the last
    worst = fit.topk(int(rank.max()) + 1, dim=1, largest=False).indices  # sync, rare
    pick = worst.gather(1, rank.unsqueeze(1)).squeeze(1)  # [E] in C*L
    alive = (mix.valid & ~empty).double()
    # typical variance of the segment: geometric mean of its live components' eigenvalues
    spread = ((mix.log_det.double() / D) * alive).sum(1) / alive.sum(1).clamp(min=1)
    spread = torch.where(alive.sum(1) > 0, spread.exp(), torch.ones_like(spread))[g]
    fresh = isotropic(1, len(g), D, 1.0, full=model == "full", dtype=x.dtype, device=x.device,
                      n_dims=n_dims or 1).with_width(mix.width)
    root = spread.sqrt().to(x.dtype)
    basis = fresh.basis[0] / root[:, None, None] if model == "full" else fresh.basis[0]
    scales = fresh.scales[0] if model == "full" else spread.to(x.dtype)[:, None].expand(-1, mix.width)
    fields = dict(means=x.reshape(C * L, D)[pick], basis=basis, scales=scales,
                  noise=torch.zeros_like(root) if model == "full" else spread.to(x.dtype),
                  n_dims=fresh.n_dims[0], log_det=(D * spread.log()).to(x.dtype),
                  weights=1.0 / candidates.sum(1).clamp(min=1).to(x.dtype))  # one point's worth
    out = {}
    for name, value in mix._asdict().items():
        if name in fields:
            value = value.clone()
            value[g, k] = fields[name]
        out[name] = value
    weights = out["weights"] * mix.valid
    out["weights"] = weights / weights.sum(1, keepdim=True).clamp(min=1e-30)
    return Mixture(**out)


# ----------------------------------------------------------------------------------------------
# EM loop


def fit_em(points: Points, mix: Mixture, *, model: str, max_iter: int, tol: float, reg: float,
           dim_threshold: float = 0.2, n_dims: int | None = None,
           resp_eps: float = RESP_EPS) -> tuple[Mixture, EMResult]:
    """EM until every segment's mean log-likelihood per point changes by less than ``tol``.

    Each iteration is one E-step and one M-step; converged segments are frozen, so a
    segment's result does not depend on which others share it. Their points are dropped
    from the batch once they are at least a quarter of it: each such copy of the points
    shrinks the batch by a quarter, so copying costs at most about three more copies of all
    points, and frozen segments add at most a third to the work of the E- and M-steps (the
    child EMs of a split round, where many clusters converge in 2-3 iterations and others
    take 30, did about 2x their live work with a half-batch rule). At most
    ``max_iter`` M-steps are taken (the authors always take 30).

    Returns the fitted mixtures and an ``EMResult`` whose ``history`` holds, per E-step,
    each segment's mean log-likelihood per point; the last entry belongs to the returned
    parameters.
    """
    G = mix.means.shape[0]
    device = points.x.device
    counts = points.per_segment(points.mask.sum(1).double() if points.mask is not None else
                                torch.full((points.x.shape[0],), float(points.x.shape[1]), device=device,
                                           dtype=torch.float64))
    converged = ~mix.valid.any(1) | (counts == 0)
    steps = torch.zeros(G, dtype=torch.long, device=device)
    history: list[Tensor] = []
    ll = torch.zeros(G, dtype=torch.float64, device=device)
    batch = torch.arange(G, device=device)  # the segments whose points are in ``sub``
    sub, buffer = points, None
    for it in range(max_iter + 1):
        n_open = int((~converged).sum())  # sync once per iteration
        if n_open == 0:
            break
        if 4 * n_open <= 3 * len(batch):
            batch = (~converged).nonzero().squeeze(1)
            sub, buffer = points.restrict(batch), None
        moving = ~converged[batch]
        part = mix.take(batch) if len(batch) < G else mix
        resp, log_lik = e_step(sub, part, buffer)
        buffer = resp
        ll_now = torch.where(moving, sub.per_segment(log_lik.sum(1, dtype=torch.float64))
                             / counts[batch].clamp(min=1), ll[batch])
        if it > 0:
            converged[batch] |= moving & ((ll_now - ll[batch]).abs() < tol)
        ll = ll.index_copy(0, batch, ll_now)
        history.append(ll)
        if int(steps.max()) >= max_iter or bool(converged.all()):
            break
        moving = ~converged[batch]
        new = m_step(sub, resp, log_lik, part, model=model, reg=reg, dim_threshold=dim_threshold, n_dims=n_dims,
                     resp_eps=resp_eps, frozen=~moving)
        width = max(new.width, mix.width)
        new, mix = new.with_width(width), mix.with_width(width)
        new = new.where(moving, part.with_width(width))
        mix = Mixture(*(t.index_copy(0, batch, n) for t, n in zip(mix, new)))
        steps[batch] += moving.long()
    return mix, EMResult(steps, converged, history)
