"""Disentanglement over training: the per-step evaluation columns of the models' train_log.csv.

The training loop writes, on the rows where it evaluates the model, one column per score of
``dydis.metrics.evaluate`` named exactly as its key (``factor_vae``, ``dci_disentanglement``,
``mig``, ...), DCI's test accuracy per factor (``dci_accuracy_<factor>``) and the conditioning
probe's gain, in all and per factor (``conditioning_gain_<factor>``), with blank cells on the other rows. A variant's curve is, at each evaluated
step, the mean and the standard deviation (ddof 0) over its models that evaluated that step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dydis.metrics.evaluate import FACTOR_ACCURACY, SCORE_KEYS
from dydis.training.conditioning import GAIN


@dataclass(frozen=True)
class Curve:
    variant: str
    steps: np.ndarray  # (n_steps,) int, ascending
    mean: np.ndarray  # (n_steps,)
    std: np.ndarray  # (n_steps,)


def score_columns(logs: list[list[dict[str, str]]]) -> list[str]:
    """The score columns that some log has a value for: ``SCORE_KEYS`` in their order, then the
    per-factor accuracies in the logs' order, then the conditioning gain and its per-factor gains."""
    found = {key for rows in logs for row in rows for key, value in row.items() if value}

    def per_factor(prefix: str) -> dict[str, None]:
        return dict.fromkeys(key for rows in logs for row in rows for key in row if key.startswith(prefix))

    return [key for key in (*SCORE_KEYS, *per_factor(FACTOR_ACCURACY), GAIN, *per_factor(f"{GAIN}_")) if key in found]


def variant_curve(variant: str, logs: list[list[dict[str, str]]], metric: str) -> Curve | None:
    """The curve of ``metric`` over the logs (rows of train_log.csv) of one variant's models;
    None when none of them evaluated it."""
    by_step: dict[int, list[float]] = {}
    for rows in logs:
        for row in rows:
            if row.get(metric):
                by_step.setdefault(int(float(row["step"])), []).append(float(row[metric]))
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return Curve(variant, steps, np.array([np.mean(by_step[s]) for s in steps]),
                 np.array([np.std(by_step[s]) for s in steps]))
