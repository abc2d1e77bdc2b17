"""`downstream-gbt`: the GBT sample-efficiency task (the paper's Table 5) on representations.

Each representation file is one model, scored over several evaluation seeds. Several files
give the mean and standard deviation across models, as eval-metrics does; one file gives them
over its seeds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dydis.artifacts import Artifact, ArtifactStore, sha256_file
from dydis.config import DownstreamGBTConfig, to_dict
from dydis.errors import DataError
from dydis.metrics import DownstreamResult, GroundTruth, downstream_gbt, summarize
from dydis.plots import ratio_bars
from dydis.progress import Progress, SilentProgress
from dydis.stages.representations import representations

STAGE = "downstream-gbt"


def run(cfg: DownstreamGBTConfig, store: ArtifactStore, *, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    """Score every representation file on the dataset's factors and publish one downstream artifact.

    Every input is read and checked before the first fit, so a bad file fails in seconds, not
    after the other models' minutes of boosting.
    """
    progress = progress or SilentProgress()
    with representations(store, models=cfg.models, reps=cfg.reps, data=cfg.data, reduce=cfg.reduce, gpus=cfg.gpus,
                         batch_size=cfg.batch_size, progress=progress) as found:
        data_artifact, data = found.data_artifact, found.data
        if not data.factor_sizes:
            raise DataError("the downstream task predicts ground-truth factors, and this dataset has none",
                            data_artifact.path)
        ground_truth = GroundTruth(data.factors, data.factor_sizes)
        factor_names = list(data.factor_names)
        sources = [{**found.source(i), "sha256": sha256_file(path)} for i, path in enumerate(found.paths)]
        codes, model_artifacts = found.codes, found.models
    models = []
    with progress.task(STAGE, total=len(codes) * len(cfg.seeds) * len(cfg.sizes), unit="fit") as task:
        for representation in codes:
            models.append(downstream_gbt(
                representation, ground_truth, reduce=cfg.reduce, sizes=cfg.sizes, test_size=cfg.test_size,
                seeds=cfg.seeds, backend=cfg.gbt_backend, n_jobs=cfg.n_jobs,
                progress=lambda seed, n: task.advance(1)))
    spread, summary = _headline(models)
    reference = models[0].reference
    with store.create(stage=STAGE, name=name or data_artifact.name, kind="downstream", config=to_dict(cfg),
                      inputs={"data": data_artifact, **{f"model_{i}": m for i, m in enumerate(model_artifacts)}},
                      seed=cfg.seeds[0]) as writer:
        report = {
            "sizes": list(cfg.sizes), "reference": reference, "seeds": list(models[0].seeds),
            "test_size": cfg.test_size, "factor_names": factor_names, "spread": spread, "summary": summary,
            "models": [{**source, "summary": model.summary,
                        "runs": [{"seed": seed, "scores": scores} for seed, scores in zip(model.seeds, model.runs)]}
                       for source, model in zip(sources, models)],
        }
        (writer.dir / "downstream.json").write_text(json.dumps(report, indent=2))
        _write_csv(writer.dir / "downstream.csv", summary, models)
        ratio_bars(_factor_ratios(summary, cfg.sizes, reference, len(factor_names)), factor_names,
                   writer.dir / "ratios.png", title=f"GBT sample efficiency (mean ± std over {spread})")
        headline_keys = [f"acc_{reference}", *(f"ratio_{n}" for n in cfg.sizes if n != reference)]
        writer.results.update({k: summary[k]["mean"] for k in headline_keys})
        writer.results.update({"models": len(models), "seeds": len(cfg.seeds)})
    return writer.artifact


def _headline(models: list[DownstreamResult]) -> tuple[str, dict[str, dict[str, float]]]:
    """What the tables report: ("seeds", one model's spread) or ("models", spread across models).

    With several models the spread that matters is between trained models, so each model
    enters with its mean over seeds; with one model the seeds are the only spread there is.
    """
    if len(models) == 1:
        return "seeds", models[0].summary
    return "models", summarize([{k: v["mean"] for k, v in model.summary.items()} for model in models])


def _factor_ratios(summary: dict[str, dict[str, float]], sizes: tuple[int, ...], reference: int,
                   n_factors: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per-factor ratio means and stds for the bar chart, labelled like the paper's Table 5."""
    return {f"Acc{n}/Acc{reference}": ([summary[f"ratio_{n}_factor_{j}"]["mean"] for j in range(n_factors)],
                                       [summary[f"ratio_{n}_factor_{j}"]["std"] for j in range(n_factors)])
            for n in sizes if n != reference}


def _write_csv(path: Path, summary: dict[str, dict[str, float]], models: list[DownstreamResult]) -> None:
    """One row per score: the headline mean and std, then each model's mean over seeds."""
    with open(path, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(["score", "mean", "std", *[f"reps_{i}" for i in range(len(models))]])
        for key, stats in summary.items():
            table.writerow([key, stats["mean"], stats["std"], *[model.summary[key]["mean"] for model in models]])
