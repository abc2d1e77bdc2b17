"""FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising", Section 4).

Definition and defaults of disentanglement_lib (``evaluation/metrics/factor_vae.py``, the
settings of the paper's authors' ``evaluate_renew.py``):

1. global variance of every code over 10,000 sampled points, ``np.var(..., ddof=1)``;
2. codes with ``sqrt(variance) < 0.05`` are pruned (collapsed to the prior);
3. a vote: draw a factor ``k`` uniformly, draw 64 points that share one value of ``k``; the
   vote is ``(k, argmin over kept codes of batch variance / global variance)``;
4. 10,000 training votes give a majority-vote classifier (code -> factor), 5,000 more
   evaluation votes give the score: the share of evaluation votes it gets right.

Differences from disentanglement_lib, on purpose:

- ``factor_vae_active`` is the number of kept codes. disentanglement_lib reports
  ``len(active_dims)`` of a boolean mask, i.e. always the total number of codes.
- The votes are drawn in exactly the reference's random order (one ``randint`` for the
  factor, then the factor vectors, vote after vote), but the variances of all batches are
  computed at once afterwards; the Python loop only draws random numbers.
"""

from __future__ import annotations

import numpy as np

from dydis.metrics._common import check_codes
from dydis.metrics.ground_truth import GroundTruth

# why: bounds the (votes, batch, codes) block of gathered codes to ~16 MB in float64.
_VOTES_PER_CHUNK = 2048


def factor_vae(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    n_variance: int = 10_000,
    prune_threshold: float = 0.05,
) -> dict[str, float]:
    """FactorVAE score of a representation.

    Parameters
    ----------
    codes : (n_rows, n_codes) float
        Representation of every dataset row, aligned with ``ground_truth``.
    ground_truth : GroundTruth
    seed : int
        Seed of the metric's own ``RandomState``.
    batch_size, n_train, n_eval, n_variance, prune_threshold
        disentanglement_lib's ``factor_vae_score`` settings (64, 10000, 5000, 10000, 0.05).

    Returns
    -------
    dict
        ``factor_vae`` (evaluation accuracy) and ``factor_vae_active`` (kept codes).
    """
    details = factor_vae_details(codes, ground_truth, seed=seed, batch_size=batch_size, n_train=n_train,
                                 n_eval=n_eval, n_variance=n_variance, prune_threshold=prune_threshold)
    return {key: details[key] for key in ("factor_vae", "factor_vae_active")}


def factor_vae_details(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    seed: int = 0,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    n_variance: int = 10_000,
    prune_threshold: float = 0.05,
) -> dict:
    """The FactorVAE score plus ``votes`` (n_factors, n_codes): how many evaluation votes of each
    factor each code won (a pruned code's column is zero). It shows why a score falls short: two
    factors whose votes go to the same code share that code, and the majority vote gives it to one
    of them, so with one such pair out of six factors the score cannot pass about 5/6."""
    codes = check_codes(codes, ground_truth)
    rs = np.random.RandomState(seed)
    _, rows = ground_truth.sample(n_variance, rs)
    global_var = np.var(codes[rows], axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    votes = np.zeros((ground_truth.n_factors, codes.shape[1]), dtype=np.int64)
    if not active.any():
        return {"factor_vae": 0.0, "factor_vae_active": 0.0, "votes": votes}

    train_votes = _votes(codes, ground_truth, rs, batch_size, n_train, global_var, active)
    classifier = np.argmax(train_votes, axis=0)  # code (among kept) -> factor
    eval_votes = _votes(codes, ground_truth, rs, batch_size, n_eval, global_var, active)
    correct = eval_votes[classifier, np.arange(eval_votes.shape[1])].sum()
    votes[:, active] = eval_votes
    return {
        "factor_vae": float(correct / eval_votes.sum()),
        "factor_vae_active": float(active.sum()),
        "votes": votes,
    }


def _votes(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    rs: np.random.RandomState,
    batch_size: int,
    n_votes: int,
    global_var: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """Vote counts (n_factors, n_kept_codes) of ``n_votes`` fixed-factor batches."""
    fixed = np.empty(n_votes, dtype=np.int64)
    rows = np.empty((n_votes, batch_size), dtype=np.int64)
    for v in range(n_votes):  # only random draws here, in the reference's order
        fixed[v] = rs.randint(ground_truth.n_factors)
        _, rows[v] = ground_truth.sample_with_fixed_factor(batch_size, fixed[v], rs)

    kept = np.flatnonzero(active)
    winners = np.empty(n_votes, dtype=np.int64)
    for start in range(0, n_votes, _VOTES_PER_CHUNK):
        batch = codes[rows[start : start + _VOTES_PER_CHUNK]]  # (v, batch, codes)
        local_var = np.var(batch, axis=1, ddof=1)
        winners[start : start + len(batch)] = np.argmin(
            local_var[:, kept] / global_var[kept], axis=1
        )
    votes = np.zeros((ground_truth.n_factors, kept.size), dtype=np.int64)
    np.add.at(votes, (fixed, winners), 1)
    return votes
