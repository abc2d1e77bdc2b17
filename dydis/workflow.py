"""`dydis run`: the stages of a workflow.yaml in order, each fed the artifacts of earlier ones.

A workflow lists its steps in order under ``stages:`` (step id -> the stage it runs, its
``config`` and its ``inputs``: config keys that receive an earlier step's artifact), top-level
``vars`` that ``${var}`` in configs and names refers to, the artifact ``name`` (``${name}`` in a
step's own name) and named ``profiles`` that are deep-merged over all of it. Precedence, lowest first: the file, the
profile, the profile's entry for the ``dataset`` var under ``datasets``, ``--set``.

Like make or DVC, a step is not run again when an artifact of it exists whose resolved config
and input artifacts are the same. The stages fill resolved values into the config they store
(refs as ``stage/name@vN``, dataset defaults), so the runner does not compare stored configs:
each artifact it makes records the runner's own fingerprint of the step (hash of the resolved
config and the inputs' manifest sha256) in its manifest's ``workflow`` entry, and that is what
it looks for.

The library does not import the stages (STYLE rule 1): the caller passes the table of
``StageSpec`` that names each stage's config class and run function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import build_config, load_yaml, merge, parse_overrides, to_dict
from dydis.errors import ArtifactError, ConfigError
from dydis.progress import Progress
from dydis.training.runs import RunFolder

log = logging.getLogger("dydis.workflow")

TOP_KEYS = ("description", "vars", "name", "profile", "profiles", "stages")
PROFILE_KEYS = ("description", "vars", "name", "stages", "datasets")
OVERLAY_KEYS = ("vars", "name", "stages")
STEP_KEYS = ("stage", "name", "inputs", "config", "seeded", "enabled")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FINISHED = "finished"  # a training step's marker once its run published its artifact


@dataclass(frozen=True)
class StageSpec:
    """How the runner drives one stage: ``run(cfg, store, *, name, progress[, runs_dir, resume, restart])``."""

    config: type  # the stage's frozen config dataclass
    run: Callable[..., Artifact]
    kind: str  # the kind of artifact it publishes
    inputs: Mapping[str, str] = field(default_factory=dict)  # config key -> kind of the artifact(s) it names
    trains: bool = False  # keeps checkpoints in runs/: takes runs_dir, resume and restart

    def takes_several(self, key: str) -> bool:
        """Whether config key ``key`` holds a list of refs (eval-metrics' ``models``) or one."""
        return typing.get_origin(typing.get_type_hints(self.config)[key]) is tuple


@dataclass(frozen=True)
class Step:
    """One entry of ``stages:`` with everything merged and ``${var}`` filled in."""

    id: str
    stage: str
    name: str  # the artifact name
    config: dict[str, Any]  # the config keys the workflow sets, inputs excluded
    inputs: dict[str, tuple[str, ...]]  # config key -> ids of the earlier steps whose artifacts it names
    seeded: bool  # runs once per seed of --seeds


@dataclass(frozen=True)
class Workflow:
    path: Path
    profile: str | None
    steps: tuple[Step, ...]

    def step(self, step_id: str, option: str) -> Step:
        """The step ``step_id`` names (for --from / --until), or an error listing the ids."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise ConfigError(f"{option} {step_id}: no such stage (stages: {', '.join(s.id for s in self.steps)})",
                          self.path)


@dataclass(frozen=True)
class Outcome:
    """What one job of the run did: ``ran`` its stage, or found its artifact ``up to date``."""

    step: str
    seed: int | None  # the --seeds value of a seeded step's job, else None
    artifact: Artifact
    status: Literal["ran", "up to date"]
    seconds: float


# ---- reading and checking workflow.yaml ---------------------------------------------------

def load_workflow(path: str | Path, specs: Mapping[str, StageSpec], *, profile: str | None = None,
                  overrides: list[str] | None = None) -> Workflow:
    """Parse, merge and check a workflow; every step's config is built once to catch bad values early.

    Raises ``ConfigError`` naming the file and the key for an unknown stage, key, profile or
    var, an input that names no earlier step, or a config value its stage rejects.
    """
    path = Path(path)
    doc = load_yaml(path)
    _check_keys(doc, TOP_KEYS, "", path)
    stages = _mapping(doc.get("stages"), "stages", path)
    if not stages:
        raise ConfigError("stages: expected a mapping of step ids to stages, found none", path)
    profile = profile or doc.get("profile")
    body = _profile(doc, profile, path)
    var_sets, config_sets = _split_overrides(overrides, stages, doc, path)
    variables = merge(merge(_mapping(doc.get("vars"), "vars", path), body.get("vars") or {}), var_sets)
    overlay = _dataset_overlay(body, variables, profile, path)
    variables = merge(merge(variables, overlay.get("vars") or {}), var_sets)
    for layer, where in ((body, f"profiles.{profile}"), (overlay, f"profiles.{profile}.datasets")):
        stages = _merge_stages(stages, layer.get("stages"), where, path)
    stages = _merge_stages(stages, {k: {"config": v} for k, v in config_sets.items()}, "--set", path)
    name = _interpolate(overlay.get("name", body.get("name", doc.get("name"))), variables, "name", path)
    steps: dict[str, Step] = {}
    for step_id, entry in stages.items():
        step = _step(step_id, entry, name, variables, specs, path)
        if step is not None:
            _check_inputs(step, steps, list(stages), specs, path)
            placeholders = {key: tuple(f"{steps[i].stage}/{steps[i].name}" for i in ids)
                            for key, ids in step.inputs.items()}
            resolve_config(step, specs[step.stage], placeholders, path)  # only to check it early
            steps[step_id] = step
    return Workflow(path, profile, tuple(steps.values()))


def _check_keys(entry: dict, allowed: tuple[str, ...], where: str, path: Path) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(allowed)})", path)


def _mapping(value: Any, where: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, found {value!r}", path)
    return value


def _profile(doc: dict, profile: str | None, path: Path) -> dict:
    """The named profile's settings ({} without a profile)."""
    profiles = _mapping(doc.get("profiles"), "profiles", path)
    if profile is None:
        return {}
    if profile not in profiles:
        raise ConfigError(f"profiles: no profile {profile!r} (profiles: {', '.join(profiles) or 'none'})", path)
    body = _mapping(profiles[profile], f"profiles.{profile}", path)
    _check_keys(body, PROFILE_KEYS, f"profiles.{profile}.", path)
    return body


def _split_overrides(overrides: list[str] | None, stages: dict, doc: dict,
                     path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` as (top-level vars, step id -> config keys): ``dataset=x`` or ``train-ldm.lr=1e-4``."""
    try:
        nested = parse_overrides(overrides)
    except ConfigError as err:
        raise ConfigError(err.message, path) from None
    known_vars = set(_mapping(doc.get("vars"), "vars", path))
    for profile in _mapping(doc.get("profiles"), "profiles", path).values():
        known_vars |= set((profile or {}).get("vars") or {})
    var_sets, config_sets = {}, {}
    for key, value in nested.items():
        if key in stages:
            config_sets[key] = _mapping(value, f"--set {key}", path)
        elif key in known_vars:
            var_sets[key] = value
        else:
            raise ConfigError(f"--set {key}: neither a stage id ({', '.join(stages)}) nor a var "
                              f"({', '.join(sorted(known_vars)) or 'none'})", path)
    return var_sets, config_sets


def _dataset_overlay(body: dict, variables: dict, profile: str | None, path: Path) -> dict:
    """The profile's settings for the dataset the ``dataset`` var names (its source, its epochs)."""
    datasets = _mapping(body.get("datasets"), f"profiles.{profile}.datasets", path)
    if not datasets:
        return {}
    dataset = variables.get("dataset")
    if dataset not in datasets:
        raise ConfigError(f"profiles.{profile}.datasets: no entry for dataset {dataset!r} "
                          f"(datasets: {', '.join(datasets)})", path)
    overlay = _mapping(datasets[dataset], f"profiles.{profile}.datasets.{dataset}", path)
    _check_keys(overlay, OVERLAY_KEYS, f"profiles.{profile}.datasets.{dataset}.", path)
    return overlay


def _merge_stages(stages: dict, update: Any, where: str, path: Path) -> dict:
    """Deep-merge a profile's step settings; a profile refines steps, it cannot add them."""
    update = _mapping(update, f"{where}.stages", path)
    for step_id, entry in update.items():
        if step_id not in stages:
            raise ConfigError(f"{where}.stages.{step_id}: no such stage (stages: {', '.join(stages)})", path)
        _mapping(entry, f"{where}.stages.{step_id}", path)
    return merge(stages, update)


def _step(step_id: str, entry: Any, name: Any, variables: dict, specs: Mapping[str, StageSpec],
          path: Path) -> Step | None:
    """One merged ``stages:`` entry as a Step; None when it says ``enabled: false``."""
    where = f"stages.{step_id}"
    entry = _mapping(entry, where, path)
    _check_keys(entry, STEP_KEYS, f"{where}.", path)
    if entry.get("enabled", True) is False:
        return None
    stage = entry.get("stage", step_id)
    if stage not in specs:
        raise ConfigError(f"{where}.stage: unknown stage {stage!r} (stages: {', '.join(specs)})", path)
    if name is None and "name" not in entry:
        raise ConfigError(f"{where}.name: give the workflow (or this stage) an artifact name", path)
    name = _interpolate(entry.get("name", "${name}"), {**variables, "name": name}, f"{where}.name", path)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: expected an artifact name, found {name!r}", path)
    config = _interpolate(_mapping(entry.get("config"), f"{where}.config", path), variables, f"{where}.config", path)
    inputs = {}
    for key, ids in _mapping(entry.get("inputs"), f"{where}.inputs", path).items():
        inputs[key] = tuple(ids) if isinstance(ids, list) else (ids,)
        if key in config:
            raise ConfigError(f"{where}.config.{key}: also given as an input; name the artifact in one place", path)
    seeded = entry.get("seeded", False)
    if not isinstance(seeded, bool):
        raise ConfigError(f"{where}.seeded: expected true or false, found {seeded!r}", path)
    return Step(step_id, stage, name, config, inputs, seeded)


def _interpolate(value: Any, variables: dict, where: str, path: Path) -> Any:
    """``${var}`` replaced by the var's value; a string that is only ``${var}`` keeps its type."""
    if isinstance(value, dict):
        return {k: _interpolate(v, variables, f"{where}.{k}", path) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, variables, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    for var in _VAR.findall(value):
        if var not in variables:
            raise ConfigError(f"{where}: unknown var ${{{var}}} (vars: {', '.join(variables) or 'none'})", path)
    whole = _VAR.fullmatch(value)
    if whole:
        return variables[whole.group(1)]
    return _VAR.sub(lambda m: str(variables[m.group(1)]), value)


def _check_inputs(step: Step, earlier: dict[str, Step], all_ids: list[str], specs: Mapping[str, StageSpec],
                  path: Path) -> None:
    """Each input names earlier steps (no forward references, hence no cycles) of the right kind."""
    spec = specs[step.stage]
    for key, ids in step.inputs.items():
        where = f"stages.{step.id}.inputs.{key}"
        if key not in spec.inputs:
            raise ConfigError(f"{where}: {step.stage} takes no input {key} (inputs: "
                              f"{', '.join(spec.inputs) or 'none'})", path)
        if len(ids) != 1 and not spec.takes_several(key):
            raise ConfigError(f"{where}: takes one stage, found {list(ids)}", path)
        for ref in ids:
            source = earlier.get(ref)
            if source is None:
                raise ConfigError(f"{where}: {_not_earlier(ref, step.id, all_ids)}", path)
            if specs[source.stage].kind != spec.inputs[key]:
                raise ConfigError(f"{where}: expects a {spec.inputs[key]} artifact, and {ref} "
                                  f"({source.stage}) makes a {specs[source.stage].kind} artifact", path)
            if source.seeded and not step.seeded and not spec.takes_several(key):
                raise ConfigError(f"{where}: {ref} runs once per seed; make {step.id} seeded too or give it to a "
                                  "key that takes several artifacts", path)


def _not_earlier(ref: Any, step_id: str, all_ids: list[str]) -> str:
    """Why an input reference names no earlier step."""
    if ref == step_id:
        return f"{ref!r} is this stage itself (a cycle)"
    if ref not in all_ids:
        return f"{ref!r} is no stage id (stages: {', '.join(all_ids)})"
    if all_ids.index(ref) > all_ids.index(step_id):
        return f"{ref!r} comes later (a forward reference); inputs must come from earlier stages"
    return f"{ref!r} is disabled (enabled: false)"


def resolve_config(step: Step, spec: StageSpec, refs: dict[str, tuple[str, ...]], path: Path) -> Any:
    """The step's config dataclass with its inputs' refs filled in (a list for keys that take several)."""
    given = {key: refs[key] if spec.takes_several(key) else refs[key][0] for key in step.inputs}
    try:
        return build_config(spec.config, flags=merge(step.config, given))
    except ConfigError as err:
        raise ConfigError(f"stages.{step.id}.config: {err.message}", path) from None


# ---- running ------------------------------------------------------------------------------

def fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, list[str]]) -> str:
    """sha256 of what makes a step's artifact: the stage, its resolved config without the input
    refs, and each input's manifest sha256 (which pins the exact input version)."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_up_to_date(store: ArtifactStore, stage: str, name: str, wanted: str) -> Artifact | None:
    """The newest intact version of ``stage/name`` that the runner made with this fingerprint."""
    for version in reversed(store.versions(stage, name)):
        try:
            artifact = store.load(f"{stage}/{name}@v{version}", verify=False)
            if (artifact.manifest.get("workflow") or {}).get("fingerprint") == wanted:
                artifact.verify(hashes=False)  # sizes only: the next stage checks the hashes it reads
                return artifact
        except ArtifactError:
            continue
    return None


def execute(workflow: Workflow, specs: Mapping[str, StageSpec], *, root: str | Path | None = None,
            runs_dir: Path = Path("runs"), seeds: tuple[int, ...] = (), start: str | None = None,
            until: str | None = None, progress: Progress | None = None) -> Iterator[Outcome]:
    """Run the workflow's steps in order, yielding each job's outcome as it finishes.

    ``seeds`` runs every seeded step once per seed; a later step's key that takes several
    artifacts gathers all of them. Steps before ``start`` are not run (their up-to-date
    artifacts feed the rest; none is an error), ``start`` and the steps after it run even when
    up to date, and nothing after ``until`` runs. A stage's error propagates and stops the run;
    running again skips what finished and resumes training steps from their checkpoints.
    """
    if seeds and not any(step.seeded for step in workflow.steps):
        raise ConfigError("--seeds: no stage is seeded (seeded: true)", workflow.path)
    first = workflow.steps.index(workflow.step(start, "--from")) if start else 0
    last = workflow.steps.index(workflow.step(until, "--until")) if until else len(workflow.steps) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}", workflow.path)
    store = ArtifactStore(root)
    by_id = {step.id: step for step in workflow.steps}
    made: dict[tuple[str, int | None], Artifact] = {}
    for index, step in enumerate(workflow.steps[: last + 1]):
        for seed in (seeds if step.seeded and seeds else (None,)):
            started = time.perf_counter()
            inputs = {key: [made[(ref, variant)] for ref in ids for variant in _variants(by_id[ref], seed, seeds)]
                      for key, ids in step.inputs.items()}
            job = _Job(workflow, step, specs[step.stage], seed, inputs)
            forced = start is not None and index >= first
            artifact = None if forced else find_up_to_date(store, step.stage, job.name, job.fingerprint)
            if artifact is None and index < first:
                raise ConfigError(f"--from {start}: {step.id} has no up-to-date artifact {step.stage}/{job.name}; "
                                  f"start from it (--from {step.id}) or drop --from", workflow.path)
            status = "ran" if artifact is None else "up to date"
            artifact = artifact or job.run(root, runs_dir, progress)
            made[(step.id, seed)] = artifact
            yield Outcome(step.id, seed, artifact, status, time.perf_counter() - started)


def _variants(source: Step, seed: int | None, seeds: tuple[int, ...]) -> tuple[int | None, ...]:
    """Which jobs of an input step feed a job: its only one, the same seed's, or every seed's
    (a step that is not seeded gathers them into a key that takes several)."""
    if not source.seeded or not seeds:
        return (None,)
    return (seed,) if seed is not None else seeds


class _Job:
    """One run of a step, given its input artifacts: the config, artifact name and fingerprint."""

    def __init__(self, workflow: Workflow, step: Step, spec: StageSpec, seed: int | None,
                 inputs: dict[str, list[Artifact]]):
        self.workflow, self.step, self.spec = workflow, step, spec
        cfg = resolve_config(step, spec, {key: tuple(a.ref for a in found) for key, found in inputs.items()},
                             workflow.path)
        self.name = step.name
        if seed is not None:
            # the seed the config already names keeps the plain name, so --seeds reuses a single-seed run
            self.name = step.name if seed == cfg.seed else f"{step.name}-s{seed}"
            cfg = dataclasses.replace(cfg, seed=seed)
        self.cfg = cfg
        self.fingerprint = fingerprint(step.stage, {k: v for k, v in to_dict(cfg).items() if k not in step.inputs},
                                       {key: [a.manifest_sha256() for a in found] for key, found in inputs.items()})

    def run(self, root: str | Path | None, runs_dir: Path, progress: Progress | None) -> Artifact:
        """Run the stage into a store that stamps the fingerprint on what it publishes.

        A training stage's run folder follows the rule of every run folder (a checkpoint is
        continued or deleted only when asked, ``dydis.training.runs``); the runner asks for its
        own runs only, which a marker in ``runs/.workflow`` records: the fingerprint of the
        attempt in progress, "finished" once it published. It resumes the checkpoint of an
        unfinished attempt at this very fingerprint, restarts one that another config left or that
        finished (it is stale), and refuses to touch a checkpoint it did not make.
        """
        stamp = {"fingerprint": self.fingerprint, "file": self.workflow.path.name, "profile": self.workflow.profile,
                 "step": self.step.id}
        store = ArtifactStore(root, workflow=stamp)
        log.info("%s: running %s/%s", self.step.id, self.step.stage, self.name)
        if not self.spec.trains:
            return self.spec.run(self.cfg, store, name=self.name, progress=progress)
        folder = RunFolder(runs_dir, self.step.stage, self.name)
        marker = runs_dir / ".workflow" / self.step.stage / f"{self.name}.fingerprint"
        made_by = marker.read_text() if marker.is_file() else None
        resume = folder.has_checkpoint() and made_by == self.fingerprint
        restart = folder.has_checkpoint() and not resume
        if restart and made_by is None:
            raise ConfigError(f"this run folder holds a checkpoint that `dydis run` did not make; continue it with "
                              f"`dydis {self.step.stage} --resume --name {self.name}`, or delete the folder",
                              folder.path)
        if restart:
            log.info("%s: starting %s over (its checkpoint is from %s)", self.step.id, folder.path,
                     "a finished run" if made_by == FINISHED else "another config")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.fingerprint)
        artifact = self.spec.run(self.cfg, store, name=self.name, runs_dir=runs_dir, resume=resume, restart=restart,
                                 progress=progress)
        marker.write_text(FINISHED)
        return artifact
