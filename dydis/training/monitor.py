"""Disentanglement while training: FactorVAE, DCI and MIG of the live extractor every few steps.

The scores are eval-metrics' own (``dydis.metrics.evaluate``) on eval-metrics' representation
of a model (``ldm.represent``: raw units, eval-mode BatchNorm, no anchoring, no FSQ; float64;
PCA(1) per unit), so a curve ends where eval-metrics would start. Two things differ, on purpose,
for speed, and are recorded in the artifact (``describe``):

- the rows: a subsample of ``eval_rows`` dataset rows drawn once with ``RandomState(0)``, the
  same all run long and for every run on the dataset, so curves compare across steps and runs;
- the sample counts: disentanglement_lib's 10,000 points become the subsample's size and its
  5,000 half of it (``protocol_options``); the metrics draw from the subsample's rows.

The metrics get a fresh ``RandomState(0)`` each time, as in eval-metrics, so a curve moves only
when the model does. The units are computed without gradients in eval mode (BatchNorm keeps its
running statistics) and the metrics draw only from their own ``RandomState``, so the training
trajectory is the same with and without evaluation.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from dydis.errors import ConfigError
from dydis.metrics import GroundTruth, evaluate
from dydis.metrics.evaluate import FACTOR_ACCURACY, METRIC_KEYS
from dydis.models.ldm import LatentDiffusion
from dydis.progress import Progress, SilentProgress
from dydis.training.conditioning import GAIN as CONDITIONING_GAIN, ConditioningProbe, FactorGrid
from dydis.training.ldm import represent

# the metrics a run can follow while training, with the train_log.csv columns ``evaluate`` gives each
SCORES = {metric: METRIC_KEYS[metric] for metric in ("factor_vae", "dci", "mig")}
# the per-factor columns (0-1) by the prefix of their names, each with what it measures: which
# factors the units hold, and which of them the U-Net reads
FACTOR_MEASURES = {FACTOR_ACCURACY: "DCI test accuracy", f"{CONDITIONING_GAIN}_": "conditioning gain"}
SEED = 0  # eval-metrics' default: the metrics' RandomState, and here also the subsample's
BATCH_SIZE = 256  # eval-metrics' default representation batch, so the same kernels see the same images
log = logging.getLogger("dydis.train_ldm")


def protocol_options(n: int) -> dict[str, dict[str, int]]:
    """disentanglement_lib's sample counts scaled to ``n`` rows: each 10,000 becomes n, each 5,000 n // 2.

    Passed as ``evaluate``'s ``options``; FactorVAE keeps its batch of 64 and prune threshold,
    MIG its 20 bins, DCI its boosting defaults.
    """
    half = max(1, n // 2)
    return {"factor_vae": {"n_variance": n, "n_train": n, "n_eval": half},
            "dci": {"n_train": n, "n_test": half},
            "mig": {"n_samples": n}}


class DisentanglementMonitor:
    """The fixed subsample and protocol of one run; ``evaluate(model)`` scores the model now.

    Parameters
    ----------
    images : (n_rows, 64, 64, 3) uint8
        The dataset's images; only the subsample's are kept.
    factors : (n_rows, n_factors) int
    factor_sizes, factor_names : the dataset's factors; none (CelebA) is a ConfigError.
    every : int
        Steps between evaluations (>= 1); the last step is evaluated too.
    rows : int
        Subsample size; a smaller dataset is evaluated whole, in row order (for a full grid,
        then eval-metrics' exact-lookup sampling, with the scaled counts).
    metrics : names among ``SCORES``
    latents : (n_rows, c, h, w), scaled as for training, optional
        With them each evaluation also measures how much the U-Net reads the units
        (``ConditioningProbe``, on a seeded sample of the subsample's rows), in all and per
        factor (each image against the one that differs from it in that factor only).
    """

    def __init__(self, images: np.ndarray, factors: np.ndarray, factor_sizes: Sequence[int],
                 factor_names: Sequence[str], *, every: int, rows: int,
                 metrics: Sequence[str] = ("factor_vae", "dci", "mig"), latents: np.ndarray | None = None):
        if not factor_sizes:
            raise ConfigError("config key eval_every: FactorVAE, DCI and MIG need ground-truth factors and this "
                              "dataset has none (CelebA); train with eval_every 0")
        constant = [name for name, size in zip(factor_names, factor_sizes) if size < 2]
        if constant:
            raise ConfigError(f"config key eval_every: the factors {constant} take a single value and the grid "
                              "metrics need every factor to vary; train with eval_every 0")
        n = len(images)
        picked = np.arange(n) if rows >= n else np.sort(np.random.RandomState(SEED).choice(n, rows, replace=False))
        self.every = every
        self.metrics = tuple(metrics)
        self.factor_names = tuple(factor_names)
        self.rows = picked
        self.images = np.ascontiguousarray(images[picked])
        self.ground_truth = GroundTruth(np.asarray(factors)[picked], factor_sizes)
        self.options = {metric: counts for metric, counts in protocol_options(len(picked)).items() if metric in metrics}
        self.probe = None
        if latents is not None:
            grid = FactorGrid(lambda wanted: images[wanted], np.asarray(factors), tuple(factor_sizes),
                              self.factor_names, picked)
            self.probe = ConditioningProbe(self.images, latents[picked], SEED, grid)

    @property
    def columns(self) -> list[str]:
        """The score columns each evaluation adds to the log (``eval_seconds`` besides)."""
        probe = list(self.probe.columns) if self.probe is not None else []
        return [key for metric in self.metrics for key in SCORES[metric]] + self.factor_columns + probe

    @property
    def factor_columns(self) -> list[str]:
        """DCI's test accuracy of each factor, when DCI is followed: which factors the units hold
        at all, and in what order training finds them (the mean, informativeness, hides that)."""
        return [FACTOR_ACCURACY + name for name in self.factor_names] if "dci" in self.metrics else []

    @property
    def factor_panels(self) -> dict[str, dict[str, str]]:
        """The per-factor columns by what they measure, each as {factor name: column}: DCI's test
        accuracy (which factors the units hold) and the conditioning gain (which the U-Net reads)."""
        accuracy, gain = FACTOR_MEASURES.values()
        panels = {}
        if self.factor_columns:
            panels[accuracy] = dict(zip(self.factor_names, self.factor_columns))
        if self.probe is not None and self.probe.swaps:
            panels[gain] = dict(zip(self.probe.swaps, self.probe.factor_columns))
        return panels

    @property
    def plotted(self) -> tuple[str, ...]:
        """The columns on a 0-1 scale that the figure of the scores draws."""
        scores = (key for metric in self.metrics for key in SCORES[metric] if key != "factor_vae_active")
        return (*scores, *([CONDITIONING_GAIN] if self.probe is not None else []))

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def evaluate(self, model: LatentDiffusion, device: torch.device, step: int,
                 progress: Progress | None = None) -> dict[str, float]:
        """The scores (``columns``) of the model's extractor now, and ``eval_seconds``.

        ``represent`` switches the model to eval mode and back and draws no random numbers.
        """
        started = time.perf_counter()
        progress = progress or SilentProgress()
        with progress.task(f"disentanglement at step {step}", total=len(self.images), unit="img") as task:
            units, _ = represent(model, lambda part: self.images[part], len(self.images), device, BATCH_SIZE,
                                 on_rows=task.advance)
        # float64, as eval-metrics reads a representation file (its PCA then runs in float64)
        scores = evaluate(units.astype(np.float64), self.ground_truth, metrics=self.metrics, seed=SEED,
                          options=self.options)
        row = {key: float(value) for key, value in scores.items()}
        if self.factor_columns:
            row.update(zip(self.factor_columns, map(float, scores.arrays["dci_test_accuracy"])))
        if self.probe is not None:
            row.update(self.probe.measure(model, device))
        row["eval_seconds"] = round(time.perf_counter() - started, 2)
        log.info("step %d, %d rows: %s (%.1f s)", step, len(self.images),
                 ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "eval_seconds"), row["eval_seconds"])
        return row

    def describe(self) -> dict[str, Any]:
        """What the artifact records, so nobody mistakes these scores for the full protocol."""
        return {"every": self.every, "rows": len(self.rows), "rows_seed": SEED, "metric_seed": SEED,
                "metrics": list(self.metrics), "reduce": "pca", "options": self.options,
                "note": "subsample protocol while training; eval-metrics gives the full protocol"}
