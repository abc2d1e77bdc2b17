"""`dydis run`: the stages of a workflow.yaml in order, each fed the artifacts of earlier ones.

A workflow lists its steps in order under ``stages:`` (step id -> the stage it runs, its
``config`` and its ``inputs``: config keys that receive an earlier step's artifact), top-level
``vars`` that ``${var}`` in configs and names refers to, the artifact ``name`` (``${name}`` in a
step's own name) and named ``profiles`` that are deep-merged over all of it. Precedence, lowest first: the file, the
profile, the profile's entry for the ``dataset`` var under ``datasets``, ``--set``.

A sweep (``--sweep KEY=V1,V2``, ``--variant LABEL:KEY=V,...``; ``sweep_points``) runs the workflow
at several points: a step runs once per distinct value of the swept keys that reach it through
its own config or its inputs, its artifacts named ``<name>-<point slug>``; the steps above the
swept ones run once and are shared; a stage that compares points (``report``) runs once over
all of them.

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
import itertools
import json
import logging
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

from dydis.artifacts import Artifact, ArtifactStore
from dydis.config import build_config, comparable, load_yaml, merge, parse_overrides, parse_value, to_dict
from dydis.errors import ArtifactError, ConfigError
from dydis.progress import Progress
from dydis.training.runs import LENGTH_KEYS, RunFolder, at_least_as_long, length_of

log = logging.getLogger("dydis.workflow")

TOP_KEYS = ("description", "vars", "name", "profile", "profiles", "stages")
PROFILE_KEYS = ("description", "vars", "name", "stages", "datasets")
OVERLAY_KEYS = ("vars", "name", "stages")
STEP_KEYS = ("stage", "name", "inputs", "config", "seeded", "enabled")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FINISHED = "finished"  # the marker of a training step's run that published its artifact, before markers were JSON


@dataclass(frozen=True)
class StageSpec:
    """How the runner drives one stage: ``run(cfg, store, *, name, progress[, runs_dir, resume, restart])``."""

    config: type  # the stage's frozen config dataclass
    run: Callable[..., Artifact]
    kind: str  # the kind of artifact it publishes
    inputs: Mapping[str, str] = field(default_factory=dict)  # config key -> kind of the artifact(s) it names
    trains: bool = False  # keeps checkpoints in runs/: takes runs_dir, resume and restart
    compares_points: bool = False  # one job fed by every point of a sweep (report), never one per point

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
class Point:
    """One point of a sweep, or the part of one that a step depends on: a variant and grid values.

    A grid point of ``--sweep train-ldm.quantizer=none,dyga --sweep train-ldm.unet.skip_dropout=0,0.2``
    is labelled ``quantizer=none skip_dropout=0`` and names its artifacts
    ``<name>-quantizer-none-skip_dropout-0``: each key's last part (the whole key where two swept
    keys share it) and its value, joined by ``-`` because artifact names hold only letters,
    digits and ``. _ + -``. A ``--variant`` is its label in both, ahead of any grid values.
    """

    variant: str | None = None  # the --variant label
    variant_settings: tuple[tuple[str, Any], ...] = ()  # ("train-ldm.quantizer", "none"), ... (--set syntax)
    grid: tuple[tuple[str, str, Any], ...] = ()  # (key, key as shown, value) of each --sweep

    @property
    def settings(self) -> tuple[tuple[str, Any], ...]:
        return (*self.variant_settings, *((key, value) for key, _, value in self.grid))

    @property
    def label(self) -> str:
        """For people (the run's log, the report): ``dyga-sd``, ``quantizer=none skip_dropout=0``."""
        head = [self.variant] if self.variant else []
        return " ".join(head + [f"{shown}={_text(value)}" for _, shown, value in self.grid])

    @property
    def slug(self) -> str:
        """For artifact names: ``dyga-sd``, ``quantizer-none-skip_dropout-0``."""
        head = [self.variant] if self.variant else []
        return "-".join(head + [f"{shown}-{_safe(_text(value))}" for _, shown, value in self.grid])

    def overrides(self, step_id: str) -> dict[str, Any]:
        """The config keys this point sets on step ``step_id``, nested as in a config file."""
        nested: dict[str, Any] = {}
        for key, value in self.settings:
            step, _, rest = key.partition(".")
            if step == step_id:
                for part in reversed(rest.split(".")):
                    value = {part: value}
                nested = merge(nested, value)
        return nested

    def restrict(self, keys: set[str], keep_variant: bool) -> "Point | None":
        """The part of this point that sets ``keys`` (and its variant, if ``keep_variant``); None if nothing."""
        part = Point(self.variant if keep_variant else None,
                     tuple(item for item in self.variant_settings if item[0] in keys),
                     tuple(item for item in self.grid if item[0] in keys))
        return part if part.variant or part.settings else None


@dataclass(frozen=True)
class Outcome:
    """What one job of the run did: ``ran`` its stage, or found its artifact ``up to date``; in a
    dry run, what it would do: ``up to date``, or ``would run`` with its resolved config, or
    with none where an input is an artifact that an earlier job (``after``) would make."""

    step: str
    seed: int | None  # the --seeds value of a seeded step's job, else None
    artifact: Artifact | None  # None for a job that would run
    status: Literal["ran", "up to date", "would run"]
    seconds: float
    point: str | None = None  # the sweep point's label of a job that runs per point, else None
    config: dict[str, Any] | None = None  # a job that would run: its resolved config, once its inputs exist
    after: str | None = None  # a job that would run once the job of this step made its input


# ---- reading and checking workflow.yaml ---------------------------------------------------

# The default pipeline installed with dydis, so that `dydis run` works outside the repository: a
# link to the repository's top-level workflow.yaml, one file, whose content a build copies in.
PACKAGED = Path(__file__).with_name("workflow.yaml")


def find_workflow(path: str | Path | None) -> Path:
    """The workflow `dydis run` reads: the file given; else ``workflow.yaml`` in the working
    directory, as make reads the Makefile there; else the one installed with dydis (``PACKAGED``)."""
    if path is not None:
        return Path(path)
    if Path("workflow.yaml").is_file():
        return Path("workflow.yaml")
    log.info("no workflow.yaml in %s: running the one installed with dydis, %s", Path.cwd(), PACKAGED)
    return PACKAGED


def load_workflow(path: str | Path, specs: Mapping[str, StageSpec], *, profile: str | None = None,
                  overrides: list[str] | None = None, var_defaults: Mapping[str, Any] | None = None) -> Workflow:
    """Parse, merge and check a workflow; every step's config is built once to catch bad values early.

    ``var_defaults`` replace the file's top-level value of the vars it declares (the CLI passes
    ``data_dir`` from ``$DYDIS_DATA``); a profile's vars and ``--set`` still override them.

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
    file_vars = _mapping(doc.get("vars"), "vars", path)
    file_vars = {**file_vars, **{k: v for k, v in (var_defaults or {}).items() if k in file_vars}}
    variables = merge(merge(file_vars, body.get("vars") or {}), var_sets)
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
            resolve_config(step, specs[step.stage], _placeholders(step, steps), path)  # only to check it early
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


def _placeholders(step: Step, steps: Mapping[str, Step]) -> dict[str, tuple[str, ...]]:
    """Refs that stand for a step's inputs before they exist (``stage/name``), to check its config."""
    return {key: tuple(f"{steps[i].stage}/{steps[i].name}" for i in ids) for key, ids in step.inputs.items()}


def resolve_config(step: Step, spec: StageSpec, refs: dict[str, tuple[str, ...]], path: Path) -> Any:
    """The step's config dataclass with its inputs' refs filled in (a list for keys that take several)."""
    given = {key: refs[key] if spec.takes_several(key) else refs[key][0] for key in step.inputs}
    try:
        return build_config(spec.config, flags=merge(step.config, given))
    except ConfigError as err:
        raise ConfigError(f"stages.{step.id}.config: {err.message}", path) from None


# ---- sweeps: --sweep KEY=V1,V2 and --variant LABEL:KEY=V,... -------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a variant label goes into artifact names as it is


def sweep_points(workflow: Workflow, specs: Mapping[str, StageSpec], *, sweeps: list[str] | None = None,
                 variants: list[str] | None = None) -> tuple[Point, ...]:
    """The points of a sweep: every named variant times the grid of every ``--sweep``; () for neither.

    ``sweeps`` hold ``step.key.sub=V1,V2`` (values parsed as ``--set`` parses them; a comma
    inside brackets belongs to a list value), ``variants`` hold ``LABEL:step.key=V,step.key=V``.
    Each point's config is built for every step it touches, so a bad key or value fails here,
    before anything runs. Raises ``ConfigError`` naming the option.
    """
    grid = [_parse_sweep(text, workflow, specs) for text in sweeps or []]
    named = [_parse_variant(text, workflow, specs) for text in variants or []]
    if not grid and not named:
        return ()
    swept = [key for key, _ in grid]
    _check_distinct(swept, "--sweep", "key", workflow.path)
    _check_distinct([label for label, _ in named], "--variant", "label", workflow.path)
    for label, settings in named:
        for key, _ in settings:
            if key in swept:
                raise ConfigError(f"--variant {label}: {key} is also swept (--sweep {key}); set it in one place",
                                  workflow.path)
    short = _short_keys(swept)
    points = [Point(label, settings, tuple((key, short[key], value) for key, value in zip(swept, values)))
              for label, settings in named or [(None, ())]
              for values in itertools.product(*(values for _, values in grid))]
    _check_distinct([point.slug for point in points], "--sweep", "artifact name suffix", workflow.path)
    steps = {step.id: step for step in workflow.steps}
    for point in points:
        for step in workflow.steps:
            if point.overrides(step.id):
                changed = dataclasses.replace(step, config=merge(step.config, point.overrides(step.id)))
                try:
                    resolve_config(changed, specs[step.stage], _placeholders(step, steps), workflow.path)
                except ConfigError as err:
                    raise ConfigError(f"sweep point {point.label}: {err.message}", workflow.path) from None
    return tuple(points)


def _parse_sweep(text: str, workflow: Workflow, specs: Mapping[str, StageSpec]) -> tuple[str, list[Any]]:
    """``train-ldm.quantizer=none,dyga`` -> ("train-ldm.quantizer", ["none", "dyga"])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    values = [parse_value(part) for part in _split_commas(raw)]
    if not sep or not values:
        raise ConfigError(f"--sweep {text}: expected stage.key=value1,value2 (e.g. "
                          "train-ldm.unet.skip_dropout=0,0.2)", workflow.path)
    _check_swept_key(key, f"--sweep {key}", workflow, specs)
    _check_distinct([_text(value) for value in values], f"--sweep {key}", "value", workflow.path)
    return key, values


def _parse_variant(text: str, workflow: Workflow, specs: Mapping[str, StageSpec]) -> tuple[str, tuple]:
    """``baseline:train-ldm.quantizer=none,train-ldm.unet.skip_dropout=0`` -> (label, settings)."""
    label, sep, body = text.partition(":")
    if not sep or not _LABEL.match(label):
        raise ConfigError(f"--variant {text}: expected LABEL:stage.key=value,stage.key=value with a label of "
                          "letters, digits and . _ + - (e.g. baseline:train-ldm.quantizer=none)", workflow.path)
    settings = []
    for assignment in _split_commas(body):
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--variant {label}: expected stage.key=value, found {assignment!r}", workflow.path)
        _check_swept_key(key, f"--variant {label}", workflow, specs)
        settings.append((key, parse_value(raw)))
    _check_distinct([key for key, _ in settings], f"--variant {label}", "key", workflow.path)
    return label, tuple(settings)


def _check_swept_key(key: str, where: str, workflow: Workflow, specs: Mapping[str, StageSpec]) -> None:
    """A swept key names an enabled step's config key (``step.key.sub``), not an input or a var."""
    step_id, _, rest = key.partition(".")
    ids = [step.id for step in workflow.steps]
    if step_id not in ids or not rest:
        raise ConfigError(f"{where}: expected stage.key with a stage of this workflow ({', '.join(ids)}), found "
                          f"{key!r}", workflow.path)
    step = workflow.steps[ids.index(step_id)]
    if rest.split(".")[0] in step.inputs:
        raise ConfigError(f"{where}: {rest.split('.')[0]} is an input of {step_id}, fed by an earlier stage",
                          workflow.path)
    if specs[step.stage].compares_points:
        raise ConfigError(f"{where}: {step_id} compares the points of the sweep, so it cannot be swept itself",
                          workflow.path)


def _split_commas(text: str) -> list[str]:
    """``a,[1, 2],b`` -> ["a", "[1, 2]", "b"]: commas inside brackets or braces belong to a value."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [part for part in (*parts, current.strip()) if part]


def _check_distinct(items: list[str], where: str, what: str, path: Path) -> None:
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ConfigError(f"{where}: each {what} once, found {repeated[0]!r} more than once", path)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """A swept key as labels and names show it: its last part, or all of it where two keys share one."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: part if last.count(part) == 1 else key for key, part in zip(keys, last)}


def _text(value: Any) -> str:
    """A swept value as people write it: strings as they are, anything else as JSON (0.2, true, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def _safe(text: str) -> str:
    """``text`` with every run of characters an artifact name cannot hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")


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
            runs_dir: Path = Path("runs"), seeds: tuple[int, ...] = (), points: tuple[Point, ...] = (),
            start: str | None = None, until: str | None = None,
            progress: Progress | None = None, dry_run: bool = False) -> Iterator[Outcome]:
    """Run the workflow's steps in order, yielding each job's outcome as it finishes.

    ``seeds`` runs every seeded step once per seed; a later step's key that takes several
    artifacts gathers all of them. ``points`` (``sweep_points``) runs the steps they touch,
    and those fed by them, once per point; a stage that compares points gathers every point's.
    Steps before ``start`` are not run (their up-to-date artifacts feed the rest; none is an
    error), ``start`` and the steps after it run even when up to date, and nothing after
    ``until`` runs. A stage's error propagates and stops the run; running again skips what
    finished and resumes training steps from their checkpoints. ``dry_run`` runs nothing and
    writes nothing: each job says whether it is up to date or would run.
    """
    if seeds and not any(step.seeded for step in workflow.steps):
        raise ConfigError("--seeds: no stage is seeded (seeded: true)", workflow.path)
    for point in points:
        for key, _ in point.settings:
            step_id, _, rest = key.partition(".")
            if seeds and rest == "seed" and workflow.step(step_id, "--sweep").seeded:
                raise ConfigError(f"sweep point {point.label}: {key} is set by --seeds ({step_id} is seeded)",
                                  workflow.path)
    first = workflow.steps.index(workflow.step(start, "--from")) if start else 0
    last = workflow.steps.index(workflow.step(until, "--until")) if until else len(workflow.steps) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}", workflow.path)
    store = ArtifactStore(root)
    by_id = {step.id: step for step in workflow.steps}
    sweep = _Sweep(workflow, specs, points)
    # (step id, point slug, seed) -> its artifact, or in a dry run the step id of a job that would make it
    made: dict[tuple[str, str | None, int | None], Artifact | str] = {}
    for index, step in enumerate(workflow.steps[: last + 1]):
        # seed-major: an interrupted study has every variant of its first seeds, not every seed of a few variants
        for seed, point in itertools.product(seeds if step.seeded and seeds else (None,), sweep.jobs(step.id)):
            started = time.perf_counter()
            inputs = {key: [made[(ref, _slug(p), s)] for ref in ids for p in sweep.feeding(step.id, ref, point)
                            for s in _seed_jobs(by_id[ref], seed, seeds)]
                      for key, ids in step.inputs.items()}
            waiting = [found for found in itertools.chain(*inputs.values()) if isinstance(found, str)]
            if waiting:  # a dry run: this job's inputs are not made yet, nor is its fingerprint known
                made[(step.id, _slug(point), seed)] = step.id
                after = max(waiting, key=list(by_id).index)  # the last of the jobs it waits for
                yield Outcome(step.id, seed, None, "would run", 0.0, _label(point), after=after)
                continue
            job = _Job(workflow, step, specs[step.stage], seed, inputs, point)
            forced = start is not None and index >= first
            artifact = None if forced else find_up_to_date(store, step.stage, job.name, job.fingerprint)
            if artifact is None and index < first:
                raise ConfigError(f"--from {start}: {step.id} has no up-to-date artifact {step.stage}/{job.name}; "
                                  f"start from it (--from {step.id}) or drop --from", workflow.path)
            if artifact is None and dry_run:
                made[(step.id, _slug(point), seed)] = step.id
                yield Outcome(step.id, seed, None, "would run", 0.0, _label(point), config=to_dict(job.cfg))
                continue
            status = "ran" if artifact is None else "up to date"
            artifact = artifact or job.run(root, runs_dir, progress)
            made[(step.id, _slug(point), seed)] = artifact
            yield Outcome(step.id, seed, artifact, status, time.perf_counter() - started, _label(point))


class _Sweep:
    """Which job of each step serves which point of a sweep.

    A step depends on the keys the points set on it and on the keys its inputs depend on (a
    stage that compares points depends on none: it gathers them all). A step runs once per
    distinct part of the points on those keys, with the variant's label wherever some variant
    sets one of them, and once, shared, where it depends on no key: a sweep of train-ldm keys
    trains the VQ-GAN once, and a sweep of both train-ldm and eval-metrics keys trains each
    train-ldm value once for all the eval-metrics values.
    """

    def __init__(self, workflow: Workflow, specs: Mapping[str, StageSpec], points: tuple[Point, ...]):
        self.points = points
        swept = {key for point in points for key, _ in point.settings}
        self.keys: dict[str, set[str]] = {}
        self.compares: set[str] = set()
        for step in workflow.steps:
            if specs[step.stage].compares_points:
                self.compares.add(step.id)
                self.keys[step.id] = set()
            else:
                inherited = [self.keys[ref] for ids in step.inputs.values() for ref in ids]
                self.keys[step.id] = {key for key in swept if key.partition(".")[0] == step.id}.union(*inherited)

    def part(self, step_id: str, point: Point | None) -> Point | None:
        """The part of ``point`` that ``step_id``'s job depends on; None for the shared job."""
        keys = self.keys[step_id]
        if point is None or not keys:
            return None
        by_variant = any(key in keys for p in self.points for key, _ in p.variant_settings)
        return point.restrict(keys, keep_variant=by_variant)

    def jobs(self, step_id: str) -> list[Point | None]:
        """The points of ``step_id``'s jobs in sweep order: [None] for a shared step (or no sweep)."""
        parts = {_slug(part): part for part in (self.part(step_id, p) for p in self.points)}
        return list(parts.values()) or [None]

    def feeding(self, step_id: str, source_id: str, point: Point | None) -> list[Point | None]:
        """The jobs of input step ``source_id`` that feed ``step_id``'s job at ``point``: the one at
        the same point, or every one for a stage that compares points."""
        return self.jobs(source_id) if step_id in self.compares else [self.part(source_id, point)]


def _slug(point: Point | None) -> str | None:
    return None if point is None else point.slug


def _label(point: Point | None) -> str | None:
    return None if point is None else point.label


def _seed_jobs(source: Step, seed: int | None, seeds: tuple[int, ...]) -> tuple[int | None, ...]:
    """Which jobs of an input step feed a job: its only one, the same seed's, or every seed's
    (a step that is not seeded gathers them into a key that takes several)."""
    if not source.seeded or not seeds:
        return (None,)
    return (seed,) if seed is not None else seeds


class _Job:
    """One run of a step, given its input artifacts: the config, artifact name and fingerprint."""

    def __init__(self, workflow: Workflow, step: Step, spec: StageSpec, seed: int | None,
                 inputs: dict[str, list[Artifact]], point: Point | None = None):
        self.workflow, self.step, self.spec, self.point = workflow, step, spec, point
        if point is not None:  # the point's values on top of the step's, its slug in the name
            step = dataclasses.replace(step, name=f"{step.name}-{point.slug}",
                                       config=merge(step.config, point.overrides(step.id)))
        cfg = resolve_config(step, spec, {key: tuple(a.ref for a in found) for key, found in inputs.items()},
                             workflow.path)
        self.name = step.name
        if seed is not None:
            # the seed the config already names keeps the plain name, so --seeds reuses a single-seed run
            self.name = step.name if seed == cfg.seed else f"{step.name}-s{seed}"
            cfg = dataclasses.replace(cfg, seed=seed)
        self.cfg = cfg
        # keys a later release added, at their neutral value, leave the fingerprint as it was
        config = {k: v for k, v in comparable(cfg).items() if k not in step.inputs}
        hashes = {key: [a.manifest_sha256() for a in found] for key, found in inputs.items()}
        self.fingerprint = fingerprint(step.stage, config, hashes)
        # the same run but for its length: a checkpoint of it that is not longer continues into this one
        self.base = fingerprint(step.stage, {k: v for k, v in config.items() if k not in LENGTH_KEYS}, hashes)
        self.length = length_of(config)

    def run(self, root: str | Path | None, runs_dir: Path, progress: Progress | None) -> Artifact:
        """Run the stage into a store that stamps the fingerprint on what it publishes.

        A training stage's run folder follows the rule of every run folder (a checkpoint is
        continued or deleted only when asked, ``dydis.training.runs``); the runner asks for its
        own runs only, which a marker in ``runs/.workflow`` records (``RunMarker``). It resumes the
        checkpoint of an unfinished attempt at this very fingerprint, and one of the same run but
        for a length no longer than this one's (finished or not: a study trained on for longer
        continues its runs), restarts one that another config left, and refuses to touch a
        checkpoint it did not make.
        """
        stamp = {"fingerprint": self.fingerprint, "file": self.workflow.path.name, "profile": self.workflow.profile,
                 "step": self.step.id}
        if self.point is not None:  # what `dydis report` labels this job's models and scores with
            stamp["point"] = {"label": self.point.label, "settings": dict(self.point.settings)}
        store = ArtifactStore(root, workflow=stamp)
        log.info("%s: running %s/%s", self.step.id, self.step.stage, self.name)
        if not self.spec.trains:
            return self.spec.run(self.cfg, store, name=self.name, progress=progress)
        folder = RunFolder(runs_dir, self.step.stage, self.name)
        marker = runs_dir / ".workflow" / self.step.stage / f"{self.name}.fingerprint"
        made_by = RunMarker.read(marker)
        resume = folder.has_checkpoint() and made_by is not None and made_by.continues_into(self)
        restart = folder.has_checkpoint() and not resume
        if restart and made_by is None:
            raise ConfigError(f"this run folder holds a checkpoint that `dydis run` did not make; continue it with "
                              f"`dydis {self.step.stage} --resume --name {self.name}`, or delete the folder",
                              folder.path)
        if restart:
            log.info("%s: starting %s over (its checkpoint is from %s)", self.step.id, folder.path,
                     "a finished run" if made_by.finished else "another config")
        elif resume and made_by.fingerprint != self.fingerprint:
            log.info("%s: continuing %s from its checkpoint (the same run, to %s)", self.step.id, folder.path,
                     ", ".join(f"{k} {v}" for k, v in self.length.items() if v is not None))
        marker.parent.mkdir(parents=True, exist_ok=True)
        mark = RunMarker(self.fingerprint, self.base, self.length, finished=False)
        mark.write(marker)
        artifact = self.spec.run(self.cfg, store, name=self.name, runs_dir=runs_dir, resume=resume, restart=restart,
                                 progress=progress)
        dataclasses.replace(mark, finished=True).write(marker)
        return artifact


@dataclass(frozen=True)
class RunMarker:
    """``runs/.workflow/<stage>/<name>.fingerprint``: which run of a training step the runner
    started in that run folder, and whether it published. JSON; a marker written before that
    (the bare fingerprint, or "finished") reads with the fields it did not record as None."""

    fingerprint: str | None  # the step's fingerprint (``_Job.fingerprint``)
    base: str | None  # the same without the length keys (``_Job.base``)
    length: dict[str, Any] | None  # the config's LENGTH_KEYS
    finished: bool

    @classmethod
    def read(cls, path: Path) -> "RunMarker | None":
        if not path.is_file():
            return None
        text = path.read_text().strip()
        if not text.startswith("{"):
            return cls(None if text == FINISHED else text, None, None, text == FINISHED)
        try:
            data = json.loads(text)
        except ValueError:
            return None  # unreadable: as if the runner had not made the checkpoint, which it then leaves alone
        if not isinstance(data, dict):
            return None
        return cls(data.get("fingerprint"), data.get("base"), data.get("length"), bool(data.get("finished")))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), sort_keys=True))

    def continues_into(self, job: "_Job") -> bool:
        """Whether this marker's checkpoint is a prefix of ``job``'s run."""
        unfinished_attempt = self.fingerprint == job.fingerprint and not self.finished
        shorter_run = self.base == job.base and self.length is not None and at_least_as_long(job.length, self.length)
        return unfinished_attempt or shorter_run
