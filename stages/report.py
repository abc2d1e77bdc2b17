"""`report`: eval-metrics and downstream-gbt artifacts of a sweep's variants -> one report artifact.

The report reads every model those artifacts scored, labels it with its variant and seed
(``dydis.report.scores``), tabulates mean ± std per variant and compares each variant with the
baseline (``dydis.report.stats``), plots the per-step evaluation columns of the models'
training logs, and copies in small each variant's interchange and units figures where the
store has a visualize artifact of one of its models.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

import numpy as np

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import ReportConfig, to_dict
from dydis.errors import ConfigError
from dydis.plots import band_curves
from dydis.progress import Progress
from dydis.report.curves import score_columns, variant_curve
from dydis.report.render import Figure, Report, Table, blocks, markdown, shrink_png, to_html, write_rows
from dydis.report.scores import (
    Model, add_scores, expand_refs, rows_of, scored_runs, shared_codes, variant_label,
)
from dydis.report.stats import compare_variants, in_order, summarize_rows
from dydis.training.csvlog import read_rows

STAGE = "report"
FIGURES = ("interchange", "units")  # the visualize figures a report shows per variant
# what the report's training table shows of each model's train-ldm results: (key, column, scale, digits)
TRAINING = (("steps", "steps", 1, 0), ("train_seconds", "training minutes", 1 / 60, 1),
            ("images_per_second", "images/s", 1, 1), ("final_loss", "final training loss", 1, 4))


def run(cfg: ReportConfig, store: ArtifactStore, *, name: str | None = None,
        progress: Progress | None = None) -> Artifact:
    """Write report.md, report.html, report.csv and the curves into a report artifact named
    ``name`` (default: what the inputs' names share, e.g. ``study`` for ``study-baseline``...)."""
    scoring = [store.load(ref, kind="metrics") for ref in expand_refs(store, cfg.metrics)]
    scoring += [store.load(ref, kind="downstream") for ref in expand_refs(store, cfg.downstream)]
    models = list(_models(store, scoring).values())
    rows = rows_of(models)
    variants = in_order([row.variant for row in rows])
    baseline = cfg.baseline or variants[0]
    if baseline not in variants:
        raise ConfigError(f"config key baseline: no variant {baseline!r} among the inputs' ({', '.join(variants)})")
    summary = summarize_rows(rows)
    comparisons = compare_variants(rows, baseline, resamples=cfg.bootstrap, seed=cfg.seed)
    figures = _figures(store, models, variants)
    resolved = dataclasses.replace(cfg, metrics=tuple(a.ref for a in scoring if a.kind == "metrics"),
                                   downstream=tuple(a.ref for a in scoring if a.kind == "downstream"))
    inputs = {f"{a.kind}_{i}": a for i, a in enumerate(scoring)}
    inputs.update({f"figure_{i}": viz for i, (_, _, viz) in enumerate(figures)})
    name = name or os.path.commonprefix([a.name for a in scoring]).rstrip("-_.+") or scoring[0].name
    with store.create(stage=STAGE, name=name, kind="report", config=to_dict(resolved), inputs=inputs,
                      seed=cfg.seed) as writer:
        write_rows(rows, writer.dir / "report.csv")
        curves, no_curves = _curves(models, variants, writer.dir)
        report = Report(name, [a.ref for a in scoring], rows, baseline, summary, comparisons,
                        _training(models, variants), _sharing(models, variants), curves, no_curves,
                        _copy_figures(figures, writer.dir))
        document = blocks(report)
        (writer.dir / "report.md").write_text(markdown(document))
        (writer.dir / "report.html").write_text(to_html(document, writer.dir))
        writer.results.update({
            "variants": variants, "baseline": baseline,
            "summary": {v: {m: dataclasses.asdict(s) for (variant, m), s in summary.items() if variant == v}
                        for v in variants},
            "comparisons": [dataclasses.asdict(c) for c in comparisons],
        })
    return writer.artifact


def _models(store: ArtifactStore, scoring: list[Artifact]) -> dict[tuple[str, str], Model]:
    """Every model the artifacts scored, by (variant, identity), its scores from all of them."""
    models: dict[tuple[str, str], Model] = {}
    for artifact in scoring:
        for index, (source, scores, votes) in enumerate(scored_runs(artifact)):
            ldm = store.input_of(artifact, f"model_{index}", "ldm") if "model" in source else None
            key = ldm.manifest_sha256() if ldm is not None else source.get("sha256", f"{artifact.ref}#{index}")
            seed = ldm.manifest.get("seed") if ldm is not None else None
            shared = shared_codes(votes) if votes else None
            add_scores(models, Model(key, variant_label(artifact, ldm), seed, ldm, scores, shared), artifact)
    return models


def _training(models: list[Model], variants: list[str]) -> Table | None:
    """Mean ± std over each variant's models of what their train-ldm manifests record (``TRAINING``),
    with the count where some model lacks the value; None when no model has any of it
    (representation files)."""
    found = [(key, column, scale, digits) for key, column, scale, digits in TRAINING
             if any(m.artifact and m.artifact.results.get(key) is not None for m in models)]
    if not found:
        return None
    rows = []
    for variant in variants:
        mine = [m.artifact.results for m in models if m.variant == variant and m.artifact]
        cells = []
        for key, _, scale, digits in found:
            values = [float(r[key]) * scale for r in mine if r.get(key) is not None]
            cells.append(_mean_std(values, digits) + (f" (n={len(values)})" if 0 < len(values) < len(mine) else ""))
        rows.append([variant, str(len(mine)), *cells])
    return Table(["variant", "models", *(column for _, column, _, _ in found)], rows)


def _sharing(models: list[Model], variants: list[str]) -> Table | None:
    """Per variant, the groups of factors that share FactorVAE's code and in how many of its models;
    None when no model has FactorVAE's votes."""
    if all(m.shared is None for m in models):
        return None
    rows = []
    for variant in variants:
        mine = [m.shared for m in models if m.variant == variant and m.shared is not None]
        groups = Counter(group for shared in mine for group in shared)
        cells = "; ".join(f"{' + '.join(group)} ({count} of {len(mine)})" for group, count in sorted(groups.items()))
        rows.append([variant, str(len(mine)), cells or "none"])
    return Table(["variant", "models", "factors sharing a code (models)"], rows)


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return ""
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"  # ddof 0, as the score table


def _curves(models: list[Model], variants: list[str], directory: Path) -> tuple[list[Figure], str]:
    """One PNG per evaluated metric, one line per variant; or none, and why."""
    logs = {v: [read_rows(m.artifact.file("train_log.csv")) for m in models if m.variant == v and m.artifact]
            for v in variants}
    if not any(logs.values()):
        return [], "No curves: the scores come from representation files, not from trained models."
    columns = score_columns([rows for found in logs.values() for rows in found])
    if not columns:
        return [], ("No curves: the models' train_log.csv have no evaluation columns (factor_vae, "
                    "dci_disentanglement, mig, ...): their training did not evaluate the model as it went.")
    figures = []
    for metric in columns:
        curves = [c for c in (variant_curve(v, logs[v], metric) for v in variants) if c is not None]
        band_curves([(c.variant, c.steps, c.mean, c.std) for c in curves], directory / f"curve_{metric}.png",
                    f"{metric} during training (mean ± std over seeds)", metric)
        figures.append(Figure(f"{metric} during training", f"curve_{metric}.png"))
    return figures, ""


def _figures(store: ArtifactStore, models: list[Model], variants: list[str]) -> list[tuple[str, str, Artifact]]:
    """(variant, figure, viz artifact): per variant and figure, the newest one drawn from one of the
    variant's models, the lowest seed first."""
    drawn: dict[tuple[str, str], Artifact] = {}
    for artifact in sorted(store.list(), key=lambda a: a.manifest["created"]):  # so the newest wins, whatever its name
        if artifact.kind == "viz" and artifact.config.get("what") in FIGURES:
            for entry in artifact.inputs("model"):
                drawn[(entry.get("manifest_sha256"), artifact.config["what"])] = artifact
    found = []
    for variant in variants:
        mine = sorted((m for m in models if m.variant == variant and m.artifact), key=lambda m: m.seed or 0)
        for what in FIGURES:
            viz = next((drawn[(m.key, what)] for m in mine if (m.key, what) in drawn), None)
            if viz is not None:
                found.append((variant, what, viz))
    return found


def _copy_figures(figures: list[tuple[str, str, Artifact]], directory: Path) -> list[Figure]:
    """The figures, checked against their artifact's hashes and shrunk into ``figures/``."""
    if figures:
        (directory / "figures").mkdir()
    copied = []
    for index, (variant, what, viz) in enumerate(figures):
        viz.verify()
        target = f"figures/{index}-{what}.png"
        shrink_png(viz.file(f"{what}.png"), directory / target)
        copied.append(Figure(f"{variant}: {what} ({viz.ref})", target))
    return copied
