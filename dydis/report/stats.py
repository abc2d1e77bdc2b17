"""Mean ± std per variant and metric, and each variant against the baseline.

A variant's models differ only in their seed, so the spread that matters is between seeds:
the table shows the mean and the standard deviation over the variant's models (ddof 0, as
eval-metrics and downstream-gbt summarise theirs). A comparison pairs the models by seed when
both variants have the same seeds, because a seed fixes the initialisation and the data order
shared by both variants, which removes that variation from the difference: the paired t-test
(scipy's ``ttest_rel``) gives the p-value, and a percentile bootstrap of the mean difference
over the pairs the 95% interval. Without matching seeds there is no pairing: the bootstrap
resamples each variant on its own and no p-value is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Row:
    """One score of one model: the report's long table (report.csv) has exactly these columns."""

    variant: str
    seed: int | None  # the model's training seed; None for a representation file
    metric: str
    value: float


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # ddof 0; 0 for one model
    n: int


@dataclass(frozen=True)
class Comparison:
    """A variant's mean minus the baseline's on one metric."""

    variant: str
    metric: str
    difference: float
    low: float  # the bootstrap's 95% interval of the difference
    high: float
    p_value: float | None  # paired t-test; None without pairs (or with one)
    pairs: int  # models paired by seed; 0 when the seeds do not match


def in_order(items: list[str]) -> list[str]:
    """The distinct items in the order they first appear."""
    return list(dict.fromkeys(items))


def summarize_rows(rows: list[Row]) -> dict[tuple[str, str], Summary]:
    """(variant, metric) -> mean, std and count of the variant's models' values."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row.variant, row.metric), []).append(row.value)
    return {key: Summary(float(np.mean(values)), float(np.std(values)), len(values)) for key, values in groups.items()}


def compare_variants(rows: list[Row], baseline: str, *, resamples: int = 10_000,
                     seed: int = 0) -> list[Comparison]:
    """Every other variant against ``baseline`` on every metric both have, variant by variant."""
    values: dict[tuple[str, str], dict[int | None, float]] = {}
    for row in rows:
        values.setdefault((row.variant, row.metric), {})[row.seed] = row.value
    found = []
    for variant in in_order([row.variant for row in rows]):
        for metric in in_order([row.metric for row in rows]):
            if variant != baseline and (variant, metric) in values and (baseline, metric) in values:
                found.append(compare(values[(baseline, metric)], values[(variant, metric)], variant, metric,
                                     resamples=resamples, seed=seed))
    return found


def compare(base: dict[int | None, float], other: dict[int | None, float], variant: str, metric: str, *,
            resamples: int, seed: int) -> Comparison:
    """``other`` minus ``base`` (seed -> value each), paired when both have the same known seeds."""
    paired = None not in base and set(base) == set(other)
    seeds = sorted(base) if paired else None
    a = np.array([base[s] for s in seeds] if paired else list(base.values()), dtype=np.float64)
    b = np.array([other[s] for s in seeds] if paired else list(other.values()), dtype=np.float64)
    low, high = bootstrap_interval(a, b, paired=paired, resamples=resamples, seed=seed)
    return Comparison(variant, metric, float(b.mean() - a.mean()), low, high,
                      paired_p_value(a, b) if paired else None, len(a) if paired else 0)


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p-value of the paired t-test of ``b - a``; None for fewer than two pairs.

    Differences that are all zero give 1 (no evidence of a difference) where the t statistic
    is 0/0; differences that are all equal and not zero give scipy's 0.
    """
    differences = b - a
    if len(differences) < 2:
        return None
    if not differences.any():
        return 1.0
    return float(stats.ttest_rel(b, a).pvalue)


def bootstrap_interval(a: np.ndarray, b: np.ndarray, *, paired: bool, resamples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(b) - mean(a)``.

    Paired, it resamples the pairs' differences; unpaired, each sample on its own. One
    ``default_rng(seed)`` per interval, so an interval does not depend on which others were
    computed before it.
    """
    rng = np.random.default_rng(seed)
    if paired:
        differences = b - a
        means = differences[rng.integers(0, len(differences), size=(resamples, len(differences)))].mean(axis=1)
    else:
        means = (b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
                 - a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
