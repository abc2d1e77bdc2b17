"""Feature alignment (paper section 3.2.2, eq. 6, Algorithm 3).

Each latent unit ``c_i`` (D = 32 numbers) moves a little towards the anchor ``mu_k`` of the
Gaussian that claims it:

    c~_i = c_i + delta (mu_k - c_i),
    delta = lambda * exp(-(1/D) sum_j |(c_i^j - mu_k^j) / c_i^j|).

The anchor is chosen by a Gumbel-softmax over the responsibilities with a tiny temperature
(tau = 1e-4, Algorithm 3), which picks one anchor yet lets gradients reach ``c``, or by a
hard argmax (the released code's ``predict0``). Gradients always flow through ``c`` in both
the interpolation and ``delta``.

These are pure functions on tensors; ``DyGA.align`` wires them to a fitted model.
"""

from __future__ import annotations

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


def alignment_delta(c: Tensor, mu: Tensor, lam: float, *, scope: str = "sample") -> Tensor:
    """delta of eq. (6).

    Parameters
    ----------
    c : [B, U, D] features.
    mu : [B, U, D] chosen anchors.
    lam : the scale factor lambda (0.1 in the paper).
    scope : ``"sample"`` -- one delta per sample and unit, averaged over the D dimensions, as
        eq. (6) is written; ``"batch"`` -- one scalar averaged over the whole batch, units and
        dimensions, as the released code computes it.

    Returns
    -------
    [B, U, 1] (``sample``) or a scalar tensor (``batch``).
    """
    ratio = ((c - mu) / safe_denominator(c)).abs()
    mean = ratio.mean(-1, keepdim=True) if scope == "sample" else ratio.mean()
    return lam * torch.exp(-mean)


def align_features(c: Tensor, mu: Tensor, delta: Tensor) -> Tensor:
    """c~ = c + delta (mu - c): an interpolation, so delta <= lambda < 1 never overshoots."""
    return c + delta * (mu - c)
