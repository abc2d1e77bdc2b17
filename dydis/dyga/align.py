"""Feature alignment (paper section 3.2.2, eq. 6, Algorithm 3).

Each latent unit ``c_i`` (D = 32 numbers) moves a little towards the anchor ``mu_k`` of the
Gaussian that claims it:

    c~_i = c_i + delta (mu_k - c_i),
    delta = lambda * exp(-(1/D) sum_j |(c_i^j - mu_k^j) / c_i^j|).

The anchor is chosen by a Gumbel-softmax over the responsibilities with a tiny temperature
(tau = 1e-4, Algorithm 3), which picks one anchor yet lets gradients reach ``c``, or by a
hard argmax (the released code's ``predict0``). Gradients flow through ``c`` in the
interpolation; whether they also flow through ``delta`` the paper does not say
(``delta_grad``):

* ``"detach"`` (paper mode's default): delta is a coefficient. Its 1/c makes the gradient
  through it unbounded where a feature is tiny -- d|(c - mu)/c|/dc = mu/c^2 -- and a ReLU
  extractor's units are often 0 or nearly so: on such features the gradient reaching the
  extractor grew to about 24 times its norm without alignment, most of it from a few
  (sample, unit) pairs. Detached, the aligned features' gradient is (1 - delta) times the
  incoming one plus the anchor choice's, so alignment cannot blow it up.
* ``"full"``: differentiate through delta too, as the released code does (its autograd
  sees one scalar over the batch, which is 0 on such features anyway).

The anchor choice is a second, rarer source of large gradients that ``delta_grad`` leaves
alone (Algorithm 3 asks for it): the Gumbel-softmax's derivative is y (1 - y) / tau, so
when two anchors nearly tie for a (sample, unit) pair the gradient through mu is up to
1 / (4 tau) = 2,500 times its usual size. On features like those of the ReLU-layer test in
``tests/test_dyga_align.py`` (one coordinate per unit at the kink, batches of 256), 2 of 40
batches reached about 480 times the gradient norm without alignment that way, and none with
``hard=True``; the training log's extractor gradient norm shows such spikes.

These are pure functions on tensors; ``DyGA.align`` wires them to a fitted model, and
``DeltaStats`` keeps running statistics of delta for a training log.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

#: Floor on |c| in the denominator of delta. A ReLU feature extractor outputs exact zeros,
#: where eq. (6) divides by zero; with the floor such a sample gets delta ~ 0 (its relative
#: distance is huge), which is the limit of the formula, instead of NaN.
DENOMINATOR_FLOOR = 1e-6


def gumbel_softmax(logits: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """softmax((logits + g) / tau) with standard Gumbel noise g, over the last dimension.

    Runs in float32 at least: with tau = 1e-4 the scaled logits reach 1e5.
    """
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    u = torch.rand(work.shape, generator=generator, device=work.device, dtype=work.dtype)
    tiny = torch.finfo(work.dtype).tiny
    g = -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - torch.finfo(work.dtype).eps)))
    return torch.softmax((work + g) / tau, dim=-1)


def choose_anchor_weights(log_resp: Tensor, valid: Tensor, *, hard: bool, tau: float, logits: str = "log",
                          generator: torch.Generator | None = None) -> Tensor:
    """Weights over components that select one anchor per sample and unit.

    Parameters
    ----------
    log_resp : [..., K] log-responsibilities (-inf on padded components).
    valid : [..., K] or broadcastable bool, the real components.
    hard : one-hot argmax (no gradient through the choice) instead of Gumbel-softmax.
    tau : Gumbel-softmax temperature.
    logits : ``"log"`` feeds log-responsibilities to the Gumbel-softmax, so it samples the
        Gaussian from the posterior (the argmax for a confidently assigned point): the
        standard Gumbel-softmax (Jang et al. 2017). ``"prob"`` feeds the responsibilities
        themselves, as Algorithm 3 is written and as the released ``predict`` does; with
        values in [0, 1] the choice is then close to uniform over the K Gaussians.

    Returns
    -------
    [..., K] weights (one-hot, or nearly so).
    """
    if hard:
        arg = log_resp.masked_fill(~valid, float("-inf")).argmax(-1)
        return torch.nn.functional.one_hot(arg, log_resp.shape[-1]).to(log_resp.dtype)
    z = log_resp if logits == "log" else log_resp.exp()
    z = z.masked_fill(~valid, float("-inf"))
    return gumbel_softmax(z, tau, generator).to(log_resp.dtype)


def safe_denominator(c: Tensor, floor: float = DENOMINATOR_FLOOR) -> Tensor:
    """``c`` with its magnitude raised to at least ``floor`` (sign kept; 0 counts as positive)."""
    sign = torch.where(c < 0, -torch.ones_like(c), torch.ones_like(c))
    return sign * c.abs().clamp(min=floor)


def alignment_delta(c: Tensor, mu: Tensor, lam: float, *, scope: str = "sample", grad: str = "detach") -> Tensor:
    """delta of eq. (6).

    Parameters
    ----------
    c : [B, U, D] features.
    mu : [B, U, D] chosen anchors.
    lam : the scale factor lambda (0.1 in the paper).
    scope : ``"sample"`` -- one delta per sample and unit, averaged over the D dimensions, as
        eq. (6) is written; ``"batch"`` -- one scalar averaged over the whole batch, units and
        dimensions, as the released code computes it.
    grad : ``"detach"`` (a coefficient without gradient) or ``"full"`` (module docstring).

    Returns
    -------
    [B, U, 1] (``sample``) or a scalar tensor (``batch``).
    """
    with torch.no_grad() if grad == "detach" else contextlib.nullcontext():
        ratio = ((c - mu) / safe_denominator(c)).abs()
        mean = ratio.mean(-1, keepdim=True) if scope == "sample" else ratio.mean()
        return lam * torch.exp(-mean)


def align_features(c: Tensor, mu: Tensor, delta: Tensor) -> Tensor:
    """c~ = c + delta (mu - c): an interpolation, so delta <= lambda < 1 never overshoots."""
    return c + delta * (mu - c)


class DeltaStats:
    """Running statistics of delta over the (sample, unit) pairs of many alignments: the mean,
    and the share below ``SMALL`` (pairs that alignment leaves practically unchanged).

    The sums stay on the device, so adding costs no host sync; ``read`` syncs once.
    """

    SMALL = 1e-3

    def __init__(self) -> None:
        self._sums: Tensor | None = None  # [sum of delta, pairs below SMALL]
        self._count = 0

    def add(self, delta: Tensor) -> None:
        """delta [B, U, 1] of one alignment (any graph is ignored)."""
        d = delta.detach().float()
        sums = torch.stack([d.sum(), (d < self.SMALL).sum().float()])
        self._sums = sums if self._sums is None else self._sums + sums
        self._count += d.numel()

    def read(self) -> dict[str, float]:
        """``delta_mean`` and ``delta_below_1e-3`` since the last read (empty when nothing was
        added), then start afresh."""
        if self._sums is None:
            return {}
        total, small = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        return {"delta_mean": total, "delta_below_1e-3": small}
