"""The scores of eval-metrics and downstream-gbt artifacts, one labelled model at a time.

Each representation an artifact scored is one model: an ldm artifact (its seed from its
manifest) or a representation file (no seed). A model's variant label is, first found: the
sweep point that `dydis run` recorded in the scoring artifact's manifest, the one recorded in
the model's, the model's name without the ``-s<seed>`` that ``--seeds`` appends, and for a
representation file the scoring artifact's name. A variant is the models that share a label;
they should differ only in their seed, and a warning says where they do not.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import TrainLDMConfig, changed_keys, neutral_values, without_neutral
from dydis.errors import ArtifactError, DataError
from dydis.metrics.evaluate import FACTOR_ACCURACY
from dydis.report.stats import Row

log = logging.getLogger("dydis.report")

_SEED_SUFFIX = re.compile(r"-s[0-9]+$")


@dataclass
class Model:
    """One scored representation and everything the report knows of it."""

    key: str  # the same model in several artifacts: the ldm manifest's sha256, or the representation file's
    variant: str
    seed: int | None
    artifact: Artifact | None  # the ldm artifact; None for a representation file
    scores: dict[str, float] = field(default_factory=dict)
    shared: list[tuple[str, ...]] | None = None  # factors whose FactorVAE votes go to one code; None: no votes


def shared_codes(votes: dict[str, list[int]]) -> list[tuple[str, ...]]:
    """The groups of factors (two or more) whose FactorVAE evaluation votes go mostly to the same
    code, from eval-metrics' ``factor_vae_votes`` ({factor: votes per code}). FactorVAE's majority
    vote gives such a code to one factor of the group, so the others' votes count as errors. A factor
    without votes (every code pruned) is in no group."""
    by_code: dict[int, list[str]] = {}
    for factor, row in votes.items():
        if not any(row):
            continue
        by_code.setdefault(max(range(len(row)), key=row.__getitem__), []).append(factor)
    return sorted(tuple(group) for group in by_code.values() if len(group) > 1)


def expand_refs(store: ArtifactStore, refs: tuple[str, ...]) -> list[str]:
    """Refs with a glob in the name (``eval-metrics/study-*``) replaced by every name that matches
    (latest version each, sorted by name); other refs as they are."""
    found = []
    for ref in refs:
        stage, _, pattern = ref.partition("/")
        if not any(char in pattern for char in "*?["):
            found.append(ref)
            continue
        folder = store.root / stage
        names = sorted(p.name for p in folder.iterdir() if fnmatch.fnmatchcase(p.name, pattern)
                       and store.versions(stage, p.name)) if folder.is_dir() else []
        if not names:
            raise ArtifactError(f"no artifact in the store {store.root} matches {pattern!r}", ref)
        found += [f"{stage}/{name}" for name in names]
    return found


def scored_runs(artifact: Artifact) -> list[tuple[dict, dict[str, float], dict[str, list[int]] | None]]:
    """(source, scores, votes) of each representation a metrics or downstream artifact scored, in
    order; the source is its entry in the artifact's json (``model`` ref or ``reps`` path, ``sha256``).

    eval-metrics: every metric of ``metrics.json``'s runs, DCI's test accuracy per factor as
    ``dci_accuracy_<factor>`` (which factors a variant holds at all), and FactorVAE's evaluation
    votes ({factor: votes per code}; None when FactorVAE was not run). downstream-gbt: the headline
    scores (``acc_<largest size>``, ``ratio_<size>``) of each model, as its mean over evaluation
    seeds, and no votes. Everything is checked here, so a hand-edited file fails with one line.
    """
    try:
        if artifact.kind == "metrics":
            runs = json.loads(artifact.file("metrics.json").read_text())["runs"]
            return [(run, {**{k: float(v) for k, v in run["metrics"].items()},
                           **{FACTOR_ACCURACY + factor: float(v)
                              for factor, v in run.get("dci_test_accuracy", {}).items()}},
                     _votes(run.get("factor_vae_votes"))) for run in runs]
        headline = [key for key in artifact.results if key.startswith(("acc_", "ratio_"))]
        models = json.loads(artifact.file("downstream.json").read_text())["models"]
        return [(model, {key: float(model["summary"][key]["mean"]) for key in headline}, None) for model in models]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"expected the scores {artifact.stage} writes, found a file without them "
                        f"({err.__class__.__name__}: {err})", artifact.path) from None


def _votes(found) -> dict[str, list[int]] | None:
    """FactorVAE's votes as {factor: [count per code]}; a TypeError or ValueError when they are not."""
    if found is None:
        return None
    votes = {str(factor): [int(count) for count in row] for factor, row in found.items()}
    if len({len(row) for row in votes.values()}) > 1:
        raise ValueError("factor_vae_votes: every factor needs one count per code")
    return votes


def variant_label(scoring: Artifact, model: Artifact | None) -> str:
    """The label of the variant a model belongs to (see the module docstring)."""
    for source in (scoring, model):
        point = (source.manifest.get("workflow") or {}).get("point") if source is not None else None
        if point:
            return str(point["label"])
    return _SEED_SUFFIX.sub("", model.name) if model is not None else scoring.name


def add_scores(models: dict[tuple[str, str], Model], model: Model, scored_by: Artifact) -> None:
    """Merge ``model``'s scores into the one already seen under the same label and key (an
    eval-metrics and a downstream-gbt artifact score the same models); a score given twice
    is an error, because the report would have to pick one."""
    seen = models.setdefault((model.variant, model.key), Model(model.key, model.variant, model.seed, model.artifact))
    if model.shared is not None:
        seen.shared = model.shared
    twice = sorted(set(seen.scores) & set(model.scores))
    if twice:
        raise DataError(f"{twice[0]} of this model ({model.variant}, seed {model.seed}) is also in another input; "
                        "give each model's scores once", scored_by.path)
    seen.scores.update(model.scores)


def rows_of(models: list[Model]) -> list[Row]:
    """The long table: one row per model and score, variants in the order first seen, seeds ascending."""
    order = {variant: i for i, variant in enumerate(dict.fromkeys(m.variant for m in models))}
    ranked = sorted(models, key=lambda m: (order[m.variant], m.seed is None, m.seed or 0))
    _warn_on_other_differences(ranked)
    return [Row(m.variant, m.seed, metric, value) for m in ranked for metric, value in m.scores.items()]


def _warn_on_other_differences(models: list[Model]) -> None:
    """A variant is models that differ only in their seed: say where two differ in more (a key
    a later release added, at its neutral value, is no difference)."""
    neutral = neutral_values(TrainLDMConfig)  # the models are ldm artifacts
    first: dict[str, Model] = {}
    for model in models:
        if model.artifact is None:
            continue
        other = first.setdefault(model.variant, model)
        differ = [key for key in changed_keys(without_neutral(other.artifact.config, neutral),
                                              without_neutral(model.artifact.config, neutral)) if key != "seed"]
        if differ:
            log.warning("variant %s: %s and %s differ in more than the seed (%s)", model.variant,
                        other.artifact.ref, model.artifact.ref, ", ".join(differ))
