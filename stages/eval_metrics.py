"""`eval-metrics`: the metric suite on representations of a dataset's rows.

Several representation files (one per trained model or seed) give the mean and standard
deviation of each metric across them, as the paper's tables report.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from dydis.artifacts import Artifact, ArtifactStore, sha256_file
from dydis.config import EvalMetricsConfig, to_dict
from dydis.data.standard import DatasetFile
from dydis.errors import DataError
from dydis.metrics import GroundTruth, evaluate, summarize
from dydis.plots import importance_heatmap
from dydis.progress import Progress, SilentProgress

STAGE = "eval-metrics"


def load_codes(path: str | Path, n_rows: int) -> np.ndarray:
    """The ``codes`` array of a reps .npz: (n_rows, n_codes) or (n_rows, N, D), finite."""
    path = Path(path)
    if not path.is_file():
        raise DataError("representation file not found", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "codes" not in npz:
                raise DataError(f"expected an array 'codes' in the npz, found keys {sorted(npz.files)}", path)
            codes = npz["codes"]
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable .npz file ({err.__class__.__name__})", path) from None
    if codes.ndim not in (2, 3) or codes.shape[0] != n_rows or codes.dtype.kind not in "fiu":
        raise DataError(f"codes: expected numbers of shape ({n_rows}, n_codes) or ({n_rows}, N, D) to match the "
                        f"dataset's rows, found {codes.dtype} {codes.shape}", path)
    if not np.isfinite(codes).all():
        raise DataError("codes contain NaN or infinite values", path)
    return codes.astype(np.float64)


def run(cfg: EvalMetricsConfig, store: ArtifactStore, *, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    progress = progress or SilentProgress()
    data_artifact = store.load(cfg.data, kind="dataset")
    with DatasetFile(data_artifact.file("data.h5")) as data:
        ground_truth = GroundTruth(data.factors, data.factor_sizes) if data.factor_sizes else None
        attributes = data.attributes
        codes = [load_codes(path, len(data)) for path in cfg.reps]
    runs = []
    with progress.task("eval-metrics", total=len(codes), unit="rep") as task:
        for path, representation in zip(cfg.reps, codes):
            runs.append(evaluate(representation, ground_truth, metrics=cfg.metrics, seed=cfg.seed, n_jobs=cfg.n_jobs,
                                 reduce=cfg.reduce, attributes=attributes, tad_protocol=cfg.tad_protocol,
                                 infomec_active=cfg.infomec_active, options={"dci": {"backend": cfg.dci_backend}},
                                 progress=lambda metric: task.update(description=f"eval-metrics: {metric}")))
            task.advance(1)
    summary = summarize([dict(r) for r in runs])
    with store.create(stage=STAGE, name=name or data_artifact.name, kind="metrics", config=to_dict(cfg),
                      inputs={"data": data_artifact}, seed=cfg.seed) as writer:
        per_run = []
        for index, (path, scores) in enumerate(zip(cfg.reps, runs)):
            copy = f"reps_{index}.npz" if len(cfg.reps) > 1 else "reps.npz"
            shutil.copy(path, writer.dir / copy)
            per_run.append({"reps": str(Path(path).resolve()), "sha256": sha256_file(Path(path)), "file": copy,
                            "metrics": {k: float(v) for k, v in scores.items()},
                            "seconds": {k: round(v, 2) for k, v in scores.timings.items()}})
        (writer.dir / "metrics.json").write_text(json.dumps({"summary": summary, "runs": per_run}, indent=2))
        with open(writer.dir / "metrics.csv", "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(["metric", "mean", "std", *[f"run_{i}" for i in range(len(runs))]])
            for metric, stats in summary.items():
                table.writerow([metric, stats["mean"], stats["std"], *[r["metrics"][metric] for r in per_run]])
        if "dci_importance" in runs[0].arrays:
            names = data_artifact.results.get("factor_names") or []
            importance_heatmap(runs[0].arrays["dci_importance"], names, writer.dir / "dci_importance.png")
        writer.results.update({"metrics": summary, "runs": len(runs)})
    return writer.artifact

