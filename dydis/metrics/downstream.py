"""GBT downstream task: how well a representation supports learning from few samples.

The paper's Table 5 (section 4.6) and its authors' evaluation, which runs disentanglement_lib's
``evaluation/metrics/downstream_task.py`` (Locatello et al. 2019):

- one ``numpy.random.RandomState(seed)`` per seed; for each training size n in turn
  (10,000, 1,000, 100), n training points and a fresh 5,000-point test set, drawn 16 at a
  time from the ground-truth sampler, training set first;
- per factor, one ``GradientBoostingClassifier()`` with scikit-learn's defaults on the codes,
  scored by its test accuracy; a size's accuracy is the mean over factors;
- the sample efficiency of size n is ``Acc_n / Acc_ref``, ref the largest size (10,000).

We report every ratio as the mean and standard deviation over seeds (0..4 by default), per
factor as well as for the mean over factors.

Differences from disentanglement_lib:

- a test point whose dataset row is also in the training set is redrawn, so a classifier is
  never scored on a row it was trained on. disentanglement_lib draws both sets independently;
  on Shapes3D about 100 of the 5,000 test points of the 10,000-point size repeat a training
  row. A draw without such repeats is the reference's draw; each repeat redrawn shifts the
  random stream for the sizes after it;
- the boosting gets ``random_state=seed`` and runs on DCI's fast backend by default
  (``dydis.metrics.dci`` explains both), and the factors are fitted in parallel.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from dydis.errors import ConfigError, DataError
from dydis.metrics._common import check_codes, summarize
from dydis.metrics.dci import fit_factor_classifiers
from dydis.metrics.ground_truth import GroundTruth
from dydis.metrics.reduce import reduce_codes

SIZES = (10_000, 1_000, 100)


class Split(NamedTuple):
    """One training set and the test set it is scored on; rows index the dataset."""

    train_factors: np.ndarray  # (n, n_factors)
    train_rows: np.ndarray  # (n,)
    test_factors: np.ndarray  # (test_size, n_factors)
    test_rows: np.ndarray  # (test_size,), none of them in train_rows


class DownstreamResult(NamedTuple):
    """Test accuracies of every seed, and their ratios, mean and spread.

    ``runs[i]`` holds the scores of ``seeds[i]``: ``acc_{n}`` (mean over factors) for every
    size n, ``ratio_{n} = acc_{n} / acc_{ref}`` for every size but the reference (the largest),
    and the same per factor j as ``acc_{n}_factor_{j}`` and ``ratio_{n}_factor_{j}``.
    ``summary`` maps each of these keys to ``{"mean", "std"}`` over the seeds.
    """

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    runs: list[dict[str, float]]
    summary: dict[str, dict[str, float]]

    @property
    def reference(self) -> int:
        """The training size every accuracy is divided by: the largest."""
        return max(self.sizes)


def downstream_gbt(
    codes: np.ndarray,
    ground_truth: GroundTruth,
    *,
    reduce: str = "pca",
    sizes: Sequence[int] = SIZES,
    test_size: int = 5_000,
    seeds: Iterable[int] = range(5),
    batch_size: int = 16,
    backend: str = "fast",
    n_jobs: int = -1,
    progress: Callable[[int, int], None] | None = None,
) -> DownstreamResult:
    """GBT test accuracy after training on few and many samples, over several seeds.

    Parameters
    ----------
    codes : (n_rows, n_codes) or (n_rows, N, D) float
        Representation of every dataset row, in the ground truth's row order.
    ground_truth : GroundTruth
    reduce : {"pca", "scalar", "none"}
        How vector units become codes, as in ``evaluate`` (see ``reduce_codes``).
    sizes : sequence of int
        Training-set sizes, drawn in this order; the largest is the ratios' reference.
    test_size : int
        Test points drawn after each training set (disentanglement_lib: 5,000).
    seeds : iterable of int
        One ``RandomState(seed)`` each; the seed is also the boosting's ``random_state``.
    batch_size : int
        Points drawn at a time, as disentanglement_lib's ``generate_batch_factor_code`` (16).
    backend : {"fast", "sklearn"}
        The boosted trees, as in ``dci``.
    n_jobs : int
        Factors fitted in parallel (joblib threads; -1 = all cores).
    progress : callable, optional
        Called with ``(seed, n)`` after the classifiers of one seed and size are fitted.

    Returns
    -------
    DownstreamResult
    """
    sizes = tuple(int(n) for n in sizes)
    seeds = tuple(int(s) for s in seeds)
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ConfigError(f"sizes must be distinct positive training-set sizes, got {list(sizes)}")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    if test_size < 1:
        raise ConfigError(f"test_size must be at least 1, got {test_size}")
    codes = check_codes(reduce_codes(codes, reduce), ground_truth)
    runs = []
    for seed in seeds:
        accuracy = {}
        for n, split in zip(sizes, draw_splits(ground_truth, sizes=sizes, test_size=test_size, seed=seed,
                                               batch_size=batch_size)):
            fit = fit_factor_classifiers(codes[split.train_rows], split.train_factors, codes[split.test_rows],
                                         split.test_factors, seed=seed, n_jobs=n_jobs, backend=backend)
            accuracy[n] = fit.test_accuracy
            if progress is not None:
                progress(seed, n)
        runs.append(_scores(accuracy, max(sizes)))
    return DownstreamResult(sizes, seeds, runs, summarize(runs))


def draw_splits(
    ground_truth: GroundTruth,
    *,
    sizes: Sequence[int] = SIZES,
    test_size: int = 5_000,
    seed: int = 0,
    batch_size: int = 16,
) -> list[Split]:
    """The training and test sets of one seed, one per size, in drawing order.

    ``downstream_gbt`` fits on exactly these; they are public so that what the classifiers
    see can be checked (no test row is a training row) without fitting anything.
    """
    rs = np.random.RandomState(seed)
    splits = []
    for n in sizes:
        train_factors, train_rows = ground_truth.sample(n, rs, batch_size=batch_size)
        test_factors, test_rows = _sample_outside(ground_truth, test_size, rs, train_rows, batch_size)
        splits.append(Split(train_factors, train_rows, test_factors, test_rows))
    return splits


def _sample_outside(
    ground_truth: GroundTruth, n: int, rs: np.random.RandomState, excluded: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` points as ``GroundTruth.sample`` does, redrawing those whose row is excluded.

    Rejection keeps each kept point distributed as the sampler's (uniform over the rows left)
    and leaves the draw untouched when nothing collides. Loops run over redraw rounds, whose
    number stays small unless the excluded rows cover almost the whole dataset.
    """
    if np.unique(excluded).size >= ground_truth.n_rows:
        raise DataError(f"the {excluded.size} training points cover all {ground_truth.n_rows} rows of the dataset, "
                        "so no test row is left: use smaller training sizes")
    factor_parts, row_parts, kept = [], [], 0
    while kept < n:
        factors, rows = ground_truth.sample(n - kept, rs, batch_size=batch_size)
        fresh = ~np.isin(rows, excluded)
        factor_parts.append(factors[fresh])
        row_parts.append(rows[fresh])
        kept += int(fresh.sum())
    return np.concatenate(factor_parts), np.concatenate(row_parts)


def _scores(accuracy: dict[int, np.ndarray], reference: int) -> dict[str, float]:
    """One seed's flat scores from its per-factor test accuracies, (n_factors,) per size."""
    others = [n for n in accuracy if n != reference]
    scores = {f"acc_{n}": float(np.mean(acc)) for n, acc in accuracy.items()}
    scores.update({f"ratio_{n}": float(np.mean(accuracy[n]) / np.mean(accuracy[reference])) for n in others})
    for n, acc in accuracy.items():
        scores.update({f"acc_{n}_factor_{j}": float(a) for j, a in enumerate(acc)})
    for n in others:
        ratio = accuracy[n] / accuracy[reference]
        scores.update({f"ratio_{n}_factor_{j}": float(r) for j, r in enumerate(ratio)})
    return scores
