"""Training curves of ldm runs (paper appendix, Fig. 7): the loss over epochs, the feature
extractor's gradient norm and what the alignment did (eq. 6's delta), how many anchors each
unit's DyGA round kept, and the disentanglement scores evaluated while training
(``--eval-every``), in all and per factor, from an ldm artifact's ``train_log.csv`` and
``dyga_rounds.csv`` rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dydis.training.conditioning import GAIN
from dydis.training.monitor import FACTOR_MEASURES, SCORES

# the scores in [0, 1] (factor_vae_active counts codes), and how much the U-Net reads the units
SCORE_COLUMNS = (*(key for keys in SCORES.values() for key in keys if key != "factor_vae_active"),
                 GAIN)


@dataclass(frozen=True)
class RunCurves:
    label: str
    epochs: np.ndarray  # (n_logs,) epoch of each logged loss
    loss: np.ndarray  # (n_logs,) mean training loss since the previous log line
    grad_norm: np.ndarray  # (n_logs,) the extractor's gradient norm at the log step; NaN where not logged
    delta_mean: np.ndarray  # (n_logs,) mean delta since the previous log line; NaN without alignment
    delta_small: np.ndarray  # (n_logs,) share of (sample, unit) pairs with delta < 1e-3; NaN likewise
    round_epochs: np.ndarray  # (n_rounds,) epoch after which each DyGA round ran
    anchors: np.ndarray  # (n_rounds, N) int, anchors per unit of each round; (0, 0) without DyGA
    score_epochs: np.ndarray  # (n_evals,) epoch of each disentanglement evaluation
    scores: dict[str, np.ndarray]  # SCORE_COLUMNS evaluated -> (n_evals,); empty without --eval-every
    factor_scores: dict[str, dict[str, np.ndarray]]  # FACTOR_MEASURES name -> factor -> (n_evals,)


def run_curves(label: str, log_rows: list[dict[str, str]], round_rows: list[dict[str, str]]) -> RunCurves:
    """Curves from the CSV rows (dicts of strings) of one run's training log and DyGA rounds.
    Logs written before a column existed, and steps without alignment, give NaN there."""
    rounds = [[int(k) for k in r["anchors"].split()] for r in round_rows]
    evaluated = [r for r in log_rows if r.get("eval_seconds")]
    names = [k for k in SCORE_COLUMNS if evaluated and evaluated[0].get(k)]
    return RunCurves(label=label,
                     epochs=np.array([float(r["epoch"]) for r in log_rows]),
                     loss=np.array([float(r["loss"]) for r in log_rows]),
                     grad_norm=_column(log_rows, "extractor_grad_norm"),
                     delta_mean=_column(log_rows, "delta_mean"),
                     delta_small=_column(log_rows, "delta_below_1e-3"),
                     round_epochs=np.array([float(r["epoch"]) for r in round_rows]),
                     anchors=np.array(rounds, dtype=np.int64) if rounds else np.zeros((0, 0), np.int64),
                     score_epochs=np.array([float(r["epoch"]) for r in evaluated]),
                     scores={k: np.array([float(r[k]) for r in evaluated]) for k in names},
                 factor_scores=_factor_scores(evaluated))


def _factor_scores(evaluated: list[dict[str, str]]) -> dict[str, dict[str, np.ndarray]]:
    """The per-factor columns with a value on some evaluated row, grouped by measure; a factor
    missing from a row (no single-factor partner there) is NaN."""
    found = {}
    for prefix, measure in FACTOR_MEASURES.items():
        columns = dict.fromkeys(k for r in evaluated for k, v in r.items() if v and k.startswith(prefix))
        if columns:
            found[measure] = {k[len(prefix):]: _column(evaluated, k) for k in columns}
    return found


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) else np.nan for r in rows])
