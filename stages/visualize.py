"""`visualize`: the paper's figures from an ldm artifact, as PNGs in a viz artifact.

``interchange``, ``attention`` and ``interpolate`` generate images with the artifact's EMA
U-Net and the VQ-GAN it was trained with; ``units`` embeds the raw units of dataset images
next to the DyGA anchors; ``curves`` reads the training logs of one or several ldm artifacts.
Images come from the model's training dataset unless ``data`` names another one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import VisualizeConfig, to_dict
from dydis.data.standard import DatasetFile
from dydis.distributed import pick_device
from dydis.errors import ConfigError, DataError
from dydis.progress import Progress, SilentProgress
from dydis.stages.representations import sampler_for
from dydis.training.csvlog import read_rows
from dydis.training.ldm import extract_features, load_model
from dydis.viz import figures
from dydis.viz.attention import normalize_maps, unit_attention
from dydis.viz.curves import run_curves
from dydis.viz.interchange import latent_interchange
from dydis.viz.interpolate import latent_interpolation
from dydis.viz.sampler import Sampler
from dydis.viz.units import embedding_method, unit_panels

STAGE = "visualize"


def run(cfg: VisualizeConfig, store: ArtifactStore, *, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    """Draw ``cfg.what`` into ``<what>.png`` of a new viz artifact named ``<model name>-<what>``
    unless ``name`` is given; the picked rows (and for ``units`` the NMI matrix) go to its results."""
    progress = progress or SilentProgress()
    models = [store.load(ref, kind="ldm") for ref in cfg.models]
    inputs = {f"model_{i}" if i else "model": model for i, model in enumerate(models)}
    data = None
    if cfg.what != "curves":
        data = store.load(cfg.data, kind="dataset") if cfg.data else store.input_of(models[0], "data", "dataset")
        inputs["data"] = data
    started = time.perf_counter()
    with store.create(stage=STAGE, name=name or f"{models[0].name}-{cfg.what}", kind="viz", config=to_dict(cfg),
                      inputs=inputs, seed=cfg.seed, device=str(pick_device(cfg.gpus))) as writer:
        path = writer.dir / f"{cfg.what}.png"
        if cfg.what == "curves":
            writer.results.update(_curves(models, path))
        else:
            with DatasetFile(data.file("data.h5")) as dataset:
                writer.results.update(_FIGURES[cfg.what](cfg, store, models[0], dataset, path, progress))
        writer.results.update({"figure": path.name, "seconds": round(time.perf_counter() - started, 1)})
    return writer.artifact


def _sampler(cfg: VisualizeConfig, store: ArtifactStore, model_artifact: Artifact) -> Sampler:
    """The model (EMA U-Net) and its VQ-GAN on the configured device."""
    return sampler_for(store, model_artifact, pick_device(cfg.gpus), steps=cfg.ddim_steps, batch_size=cfg.batch_size)


def _pick_rows(dataset: DatasetFile, count: int, seed: int) -> np.ndarray:
    """``count`` distinct rows, seeded, in the order drawn."""
    if count > len(dataset):
        raise ConfigError(f"the figure needs {count} distinct images, the dataset has {len(dataset)}; ask for "
                          "fewer (--pairs / --images)")
    return np.random.default_rng(seed).choice(len(dataset), size=count, replace=False)


def _pairs(dataset: DatasetFile, cfg: VisualizeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cfg.pairs`` seeded pairs of distinct images: the rows (2 x pairs,), the first images of the
    pairs and the second ones, (pairs, 64, 64, 3) uint8 each."""
    rows = _pick_rows(dataset, 2 * cfg.pairs, cfg.seed)
    return rows, dataset.read_images(rows[: cfg.pairs]), dataset.read_images(rows[cfg.pairs:])


def _title(model_artifact: Artifact, what: str, cfg: VisualizeConfig) -> str:
    return f"{what}\n{model_artifact.ref}, DDIM {cfg.ddim_steps} steps, seed {cfg.seed}"


def _interchange(cfg: VisualizeConfig, store: ArtifactStore, model_artifact: Artifact, dataset: DatasetFile,
                 path: Path, progress: Progress) -> dict:
    rows, sources, targets = _pairs(dataset, cfg)
    sampler = _sampler(cfg, store, model_artifact)
    n_units = sampler.model.feature_extractor.cfg.latent_units
    with progress.task("interchange: DDIM", total=cfg.pairs * (n_units + 1), unit="img") as task:
        sampler.on_images = task.advance
        cells = latent_interchange(sampler, sources, targets, cfg.seed)
    figures.interchange_table(sources, targets, cells, path, _title(model_artifact, "latent interchange", cfg))
    return {"sources": rows[: cfg.pairs], "targets": rows[cfg.pairs:]}


def _attention(cfg: VisualizeConfig, store: ArtifactStore, model_artifact: Artifact, dataset: DatasetFile,
               path: Path, progress: Progress) -> dict:
    rows = _pick_rows(dataset, cfg.images, cfg.seed)
    images = dataset.read_images(rows)
    sampler = _sampler(cfg, store, model_artifact)
    with progress.task("attention: DDIM inversion and sampling", total=cfg.images, unit="img") as task:
        sampler.on_images = task.advance
        attention = unit_attention(sampler, images)
    figures.attention_table(images, attention.regenerated, normalize_maps(attention.maps), path,
                            _title(model_artifact, "cross-attention per unit", cfg))
    return {"rows": rows}


def _interpolate(cfg: VisualizeConfig, store: ArtifactStore, model_artifact: Artifact, dataset: DatasetFile,
                 path: Path, progress: Progress) -> dict:
    rows, starts, ends = _pairs(dataset, cfg)
    sampler = _sampler(cfg, store, model_artifact)
    with progress.task("interpolate: DDIM", total=cfg.pairs * cfg.frames, unit="img") as task:
        sampler.on_images = task.advance
        cells = latent_interpolation(sampler, starts, ends, cfg.frames, cfg.seed)
    figures.interpolation_table(starts, ends, cells, path, _title(model_artifact, "latent interpolation", cfg))
    return {"starts": rows[: cfg.pairs], "ends": rows[cfg.pairs:]}


def _units(cfg: VisualizeConfig, store: ArtifactStore, model_artifact: Artifact, dataset: DatasetFile,
           path: Path, progress: Progress) -> dict:
    if not dataset.factor_sizes:
        raise DataError("the units plot colours units by ground-truth factors, and this dataset has none; use a "
                        "dataset with factors (--data)", dataset.path)
    rows = np.sort(_pick_rows(dataset, min(cfg.points, len(dataset)), cfg.seed))
    model, anchors, _ = load_model(model_artifact.file("model.pt"))
    device = pick_device(cfg.gpus)
    with progress.task("units: features", total=len(rows), unit="img") as task:
        units, _ = extract_features(model.to(device), torch.from_numpy(dataset.read_images(rows)),
                                    torch.arange(len(rows)), cfg.batch_size, device, on_rows=task.advance)
    method = embedding_method(cfg.embedding)
    panels, nmi = unit_panels(units.cpu().numpy(), dataset.factors[rows], dataset.factor_names, anchors, method,
                              cfg.seed)
    figures.unit_scatter(panels, path, method=method,
                         title=f"per factor, the unit with the highest NMI: {model_artifact.ref}, {len(rows)} images")
    return {"embedding": method, "points": len(rows), "nmi": nmi.round(4),
            "best_units": {p.factor: {"unit": p.unit, "nmi": round(p.nmi, 4)} for p in panels}}


def _curves(models: list[Artifact], path: Path) -> dict:
    runs = []
    for artifact in models:
        has_rounds = "dyga_rounds.csv" in artifact.manifest["files"]  # train-ldm writes it only with DyGA
        rounds = read_rows(artifact.file("dyga_rounds.csv")) if has_rounds else []
        runs.append(run_curves(_run_label(artifact), read_rows(artifact.file("train_log.csv")), rounds))
    figures.training_curves(runs, path, "training curves")
    return {"runs": [r.label for r in runs]}


def _run_label(artifact: Artifact) -> str:
    """The ref and what Fig. 7 varies: lambda (feature alignment) and the Skip Dropout rate."""
    cfg = artifact.config
    quantizer = cfg.get("quantizer", "dyga")
    detail = f"λ={cfg.get('dyga', {}).get('lam')}" if quantizer == "dyga" else quantizer
    return f"{artifact.ref} ({detail}, skip dropout {cfg.get('unet', {}).get('skip_dropout')})"


_FIGURES = {"interchange": _interchange, "attention": _attention, "interpolate": _interpolate, "units": _units}
