"""`eval-metrics`: the metric suite on representations of a dataset's rows.

Several representation files (one per trained model or seed) give the mean and standard
deviation of each metric across them, as the paper's tables report.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dydis.artifacts import Artifact, ArtifactStore, sha256_file
from dydis.config import EvalMetricsConfig, to_dict
from dydis.data.standard import DatasetFile
from dydis.distributed import pick_device
from dydis.errors import DataError
from dydis.metrics import GroundTruth, evaluate, summarize
from dydis.metrics.evaluate import Scores
from dydis.metrics.fid import compute_features
from dydis.metrics.fid_reference import cached_reference, reference_key
from dydis.models.inception import find_fid_weights, load_fid_inception
from dydis.plots import importance_heatmap
from dydis.progress import Progress, SilentProgress
from dydis.stages.representations import load_latents, representations, sampler_for
from dydis.training import ldm
from dydis.training.conditioning import GAIN, PROBE_ROWS, ConditioningProbe, FactorGrid

STAGE = "eval-metrics"
FID_CACHE = Path(".cache") / "fid"  # in the store root: reference statistics, kept across evaluations
log = logging.getLogger("dydis.eval_metrics")


def run(cfg: EvalMetricsConfig, store: ArtifactStore, *, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    progress = progress or SilentProgress()
    with representations(store, models=cfg.models, reps=cfg.reps, data=cfg.data, reduce=cfg.reduce, gpus=cfg.gpus,
                         batch_size=cfg.batch_size, progress=progress) as found:
        data_artifact, models, data = found.data_artifact, found.models, found.data
        ground_truth = GroundTruth(data.factors, data.factor_sizes) if data.factor_sizes else None
        fid_reference, fid_sets = fid_feature_sets(cfg, store, models, data_artifact, data, progress) \
            if _wants_fid(cfg) else (None, [None] * len(found.codes))
        # by default for models; resolve_models has checked that the data is their training data,
        # whose VQ latents the probe needs
        probed = bool(models) and (cfg.metrics is None or "conditioning" in cfg.metrics)
        scored_here = None if cfg.metrics is None else tuple(m for m in cfg.metrics if m != "conditioning")
        runs = []
        with progress.task("eval-metrics", total=len(found.codes), unit="rep") as task:
            for index, (representation, fid_features) in enumerate(zip(found.codes, fid_sets)):
                scores = Scores() if scored_here == () else evaluate(
                    representation, ground_truth, metrics=scored_here, seed=cfg.seed, n_jobs=cfg.n_jobs,
                    reduce=cfg.reduce, attributes=data.attributes, tad_protocol=cfg.tad_protocol,
                    infomec_active=cfg.infomec_active, options={"dci": {"backend": cfg.gbt_backend}},
                    fid_features=fid_features,
                    progress=lambda metric: task.update(description=f"eval-metrics: {metric}"))
                if probed:
                    task.update(description="eval-metrics: conditioning")
                    started = time.perf_counter()
                    scores.update(conditioning_scores(store, models[index], data, cfg.gpus, cfg.seed))
                    scores.timings["conditioning"] = time.perf_counter() - started
                runs.append(scores)
                task.advance(1)
        summary = summarize([dict(r) for r in runs])
        inputs = {"data": data_artifact, **{f"model_{i}": m for i, m in enumerate(models)}}
        with store.create(stage=STAGE, name=name or data_artifact.name, kind="metrics", config=to_dict(cfg),
                          inputs=inputs, seed=cfg.seed) as writer:
            names = data_artifact.results.get("factor_names") or []
            per_run = []
            for index, (path, scores) in enumerate(zip(found.paths, runs)):
                # DCI's accuracy says which factors the codes hold; FactorVAE's votes, which share a code
                per_factor = {key: _by_factor(scores.arrays[key].tolist(), names)
                              for key in ("dci_test_accuracy", "factor_vae_votes") if key in scores.arrays}
                copy = f"reps_{index}.npz" if len(found.paths) > 1 else "reps.npz"
                shutil.copy(path, writer.dir / copy)
                stored = {"codes_dtype": found.stored_dtypes[index]} if found.models else {}
                per_run.append({**found.source(index), "sha256": sha256_file(path), "file": copy, **stored,
                                "metrics": {k: float(v) for k, v in scores.items()}, **per_factor,
                                "seconds": {k: round(v, 2) for k, v in scores.timings.items()}})
            _write_tables(writer.dir, summary, per_run)
            if "dci_importance" in runs[0].arrays:
                importance_heatmap(runs[0].arrays["dci_importance"], names, writer.dir / "dci_importance.png",
                                   accuracy=runs[0].arrays["dci_test_accuracy"])
            writer.results.update({"metrics": summary, "runs": len(runs)})
            if fid_reference is not None:
                writer.results["fid_reference"] = fid_reference
    return writer.artifact


def _by_factor(values: list, names: list[str]) -> dict[str, Any]:
    """One value per factor, keyed by the dataset's factor names (their indices when it has none)."""
    return {(names[i] if i < len(names) else str(i)): v for i, v in enumerate(values)}


def _write_tables(directory: Path, summary: dict, per_run: list[dict]) -> None:
    (directory / "metrics.json").write_text(json.dumps({"summary": summary, "runs": per_run}, indent=2))
    with open(directory / "metrics.csv", "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(["metric", "mean", "std", *[f"run_{i}" for i in range(len(per_run))]])
        for metric, stats in summary.items():
            table.writerow([metric, stats["mean"], stats["std"], *[r["metrics"][metric] for r in per_run]])


def conditioning_scores(store: ArtifactStore, model: Artifact, data: DatasetFile, gpus: int,
                        seed: int) -> dict[str, float]:
    """How much the model's U-Net reads its units (``dydis.training.conditioning``):
    ``conditioning_gain`` on ``PROBE_ROWS`` rows of its training data drawn with RandomState(seed),
    each paired with another of them, and on a full grid ``conditioning_gain_<factor>``, each
    image paired with the one that differs from it in that factor only."""
    trained = ldm.load_model(model.file("model.pt"))
    rows = np.sort(np.random.RandomState(seed).choice(len(data), min(len(data), PROBE_ROWS), replace=False))
    latents, _ = load_latents(store.input_of(model, "vqgan", "vqgan"), len(data), trained.model.unet.cfg, rows)
    grid = (FactorGrid(data.read_images, data.factors, tuple(data.factor_sizes), data.factor_names, rows)
            if data.factor_sizes else None)
    probe = ConditioningProbe(data.read_images(rows), latents, seed, grid)
    device = pick_device(gpus)
    measured = probe.measure(trained.model.to(device), device)
    return {key: value for key, value in measured.items() if key.startswith(GAIN)}


def _wants_fid(cfg: EvalMetricsConfig) -> bool:
    """FID when asked for; by default when there are models and the Inception weights are here."""
    if cfg.metrics is not None:
        return "fid" in cfg.metrics
    if not cfg.models:
        return False
    try:
        find_fid_weights(cfg.fid_weights)
    except DataError:
        log.warning("FID skipped: no Inception weights here (--fid-weights PATH)")
        return False
    return True


def fid_feature_sets(cfg: EvalMetricsConfig, store: ArtifactStore, models: list[Artifact], data_artifact: Artifact,
                     data: DatasetFile, progress: Progress) -> tuple[dict, list[tuple[dict, np.ndarray]]]:
    """Which real statistics were used (for the manifest) and, per model, (those statistics,
    generated Inception features), by the authors' protocol (DESIGN 9 row 14): DDIM
    (``fid_steps``, eta 0, EMA U-Net) from seeded noise, each sample conditioned on the units of
    a training image drawn at random; the dataset's images are the reference set, whose
    statistics come from the store's ``.cache/fid`` when an earlier evaluation computed them
    (``fid_cache``)."""
    device = pick_device(cfg.gpus)
    weights = find_fid_weights(cfg.fid_weights)
    net = load_fid_inception(weights).to(device)
    n = len(data)
    rng = np.random.RandomState(cfg.seed)
    real_rows = np.arange(n) if cfg.fid_reference is None or cfg.fid_reference >= n else \
        np.sort(rng.choice(n, cfg.fid_reference, replace=False))
    key = reference_key(dataset=data_artifact.manifest_sha256(), weights=sha256_file(weights), rows=real_rows)

    def real_features() -> np.ndarray:
        with progress.task("FID: real images", total=len(real_rows), unit="img") as task:
            return _features(net, data.read_images, real_rows, cfg.batch_size, device, task.advance)

    reference = cached_reference(store.root / FID_CACHE if cfg.fid_cache else None, key, real_features)
    sets = []
    for model_artifact in models:
        sampler = sampler_for(store, model_artifact, device, steps=cfg.fid_steps, batch_size=cfg.batch_size)
        conditions = np.random.RandomState(cfg.seed + 1).randint(0, n, size=cfg.fid_samples)

        batches = itertools.count()

        def generate(rows: np.ndarray) -> np.ndarray:
            return sampler.sample(sampler.units(data.read_images(rows)),
                                  sampler.noise(len(rows), cfg.seed * 1_000_003 + next(batches)))

        with progress.task(f"FID: generating with {model_artifact.ref}", total=len(conditions), unit="img") as task:
            generated = _features(net, generate, conditions, cfg.batch_size, device, task.advance)
        sets.append((reference.statistics, generated))
    return {"key": key, "sha256": reference.sha256, "images": len(real_rows), "source": reference.source}, sets


def _features(net, read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, batch_size: int,
              device: torch.device, on_rows: Callable[[int], None]) -> np.ndarray:
    """Inception features of the images ``read`` gives for each batch of ``rows``."""
    out = []
    for start in range(0, len(rows), batch_size):
        images = read(rows[start: start + batch_size])
        out.append(compute_features(images, net, batch_size=batch_size, device=device))
        on_rows(len(images))
    return np.concatenate(out)
