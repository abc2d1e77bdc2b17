"""`dydis run`: a workflow.yaml's stages in order, with caching, partial runs, seeds and resume."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import artifact_dirs
from dydis.artifacts import ArtifactStore
from dydis.cli.main import app
from dydis.config import neutral_values, to_dict
from dydis.errors import ConfigError, DataError
from dydis.stages import workflow as stage_table
from dydis.stages.workflow import STAGES
from dydis.training.checkpoint import load_checkpoint
from dydis.training.runs import RunFolder
from dydis.workflow import PACKAGED, Point, RunMarker, StageSpec, execute, load_workflow, sweep_points

runner = CliRunner()
SHIPPED = Path(__file__).resolve().parent.parent / "workflow.yaml"

# The real first three stages at the smallest sizes they accept (ids differ from stage names on purpose).
TINY = """
name: tiny
vars: {dataset: synthetic}
stages:
  data:
    stage: prepare-data
    config: {dataset: "${dataset}", grid: [2, 2, 2, 2, 2, 2]}
  vqgan:
    stage: train-vqgan
    inputs: {data: data}
    config: {preset: tiny, max_steps: 1, batch_size: 8, accumulate: 1, holdout: 4,
             model: {ch: 8, norm_groups: 4, n_embed: 32}, loss: {disc_width: 8}}
  ldm:
    stage: train-ldm
    inputs: {data: data, vqgan: vqgan}
    config: {preset: tiny, max_steps: 2, batch_size: 8, sample_images: 2, diffusion: {ddim_steps: 2},
             feature_extractor: {latent_units: 2}, dyga: {subsample: 64, max_components: 2, max_iter: 3}}
"""


def invoke(workflow: Path, root: Path, *args: str):
    return runner.invoke(app, ["run", str(workflow), "--root", str(root), "--runs", str(root.parent / "runs"), *args])


def statuses(result) -> dict[str, str]:
    """Stage id -> "up to date" or "wrote", from the lines the run prints as it goes."""
    found = {}
    for line in result.stderr.splitlines():
        step, _, rest = line.partition(": ")
        if rest.startswith(("up to date", "wrote")):
            found[step] = "up to date" if rest.startswith("up to date") else "wrote"
    return found


def plan_lines(result) -> dict[str, str]:
    """Stage label -> what a dry run says of it ("up to date (...)", "would run with", ...); log
    records (``INFO ...``, their wrapped lines indented like the configs) are left out."""
    return dict(line.split(": ", 1) for line in result.stderr.splitlines() if not line.startswith((" ", "INFO ")))


def dry_runs_after_a_run(workflow: Path, root: Path, refs: dict[str, str], setting: str):
    """A chain of stages, each fed by the one before, has run: a dry run finds all of them up to
    date (``refs``: their artifacts), and one with ``--set STAGE.KEY=VALUE`` would run that stage
    and (after it) the later ones. Returns that second dry run's result."""
    done = invoke(workflow, root, "--dry-run")
    assert plan_lines(done) == {step: f"up to date ({ref})" for step, ref in refs.items()}, done.output
    changed = invoke(workflow, root, "--dry-run", "--set", setting)
    steps, first = list(refs), list(refs).index(setting.partition(".")[0])
    assert plan_lines(changed) == {**{step: f"up to date ({refs[step]})" for step in steps[:first]},
                                   steps[first]: "would run with",
                                   **{step: f"would run (after {steps[i - 1]})" for i, step in enumerate(steps)
                                      if i > first}}, changed.output
    return changed


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_thread):
    """TINY run once: (workflow file, store root, the run's result)."""
    base = tmp_path_factory.mktemp("built")
    workflow = base / "workflow.yaml"
    workflow.write_text(TINY)
    result = invoke(workflow, base / "store")
    assert result.exit_code == 0, result.output
    return workflow, base / "store", result


@pytest.fixture
def copy_of(built, tmp_path):
    """A private copy of the built store and runs, for tests that add versions."""
    workflow, root, _ = built
    shutil.copytree(root, tmp_path / "store")
    shutil.copytree(root.parent / "runs", tmp_path / "runs")
    return workflow, tmp_path / "store"


# ---- the shipped workflow -------------------------------------------------------------------

@pytest.mark.parametrize("profile, sets", [("smoke", []), ("cpu-study", []), ("cpu-ablation", []),
                                           *[("paper", [f"dataset={d}"]) for d in ("shapes3d", "mpi3d-toy",
                                                                                   "cars3d", "celeba")]])
def test_shipped_workflow_resolves_for_every_profile(profile, sets):
    workflow = load_workflow(SHIPPED, STAGES, profile=profile, overrides=[*sets, "data_dir=/data"])
    ids = [step.id for step in workflow.steps]
    assert ids[:4] == ["prepare-data", "train-vqgan", "train-ldm", "eval-metrics"]
    first = workflow.steps[0].config
    if profile == "paper":
        dataset = sets[0].split("=")[1]
        assert first["dataset"] == dataset and first["source"].startswith("/data/")
        assert ("downstream-gbt" in ids) == (dataset != "celeba")  # CelebA has no factors to predict
    else:
        assert first["dataset"] == "synthetic" and "grid" in first


def test_the_download_folder_from_the_environment_feeds_the_data_dir_var(tmp_path, monkeypatch):
    """`dydis run` reads the originals where `dydis download` put them: $DYDIS_DATA replaces the
    file's data_dir, --set still wins, and a workflow without that var is left alone."""
    sources = {}
    monkeypatch.setenv("DYDIS_DATA", "/env/downloads")
    for label, extra in (("env", []), ("set", ["--set", "data_dir=/mine"])):
        result = runner.invoke(app, ["run", str(SHIPPED), "--profile", "paper", "--set", "dataset=shapes3d", *extra,
                                     "--root", str(tmp_path / "store"), "--dry-run"])
        assert result.exit_code == 0, result.output
        sources[label] = [line.split(": ", 1)[1] for line in result.stderr.splitlines()
                          if line.strip().startswith("source:")]
    assert sources == {"env": ["/env/downloads/3dshapes.h5"], "set": ["/mine/3dshapes.h5"]}
    monkeypatch.delenv("DYDIS_DATA")
    default = load_workflow(SHIPPED, STAGES, profile="paper", overrides=["dataset=shapes3d"])
    assert default.steps[0].config["source"] == "downloads/3dshapes.h5"
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    assert load_workflow(tiny, STAGES, var_defaults={"data_dir": "/env"}).steps[0].config["dataset"] == "synthetic"


def test_shipped_workflow_has_a_profile_per_scale():
    assert set(yaml.safe_load(SHIPPED.read_text())["profiles"]) == {"smoke", "cpu-study", "cpu-ablation", "paper"}


def test_the_installed_workflow_is_the_top_level_file():
    """One file: the package's workflow.yaml links to the top-level one (a checkout that turned the
    link into a plain file, or a copy that drifted, fails here)."""
    assert PACKAGED.read_bytes() == SHIPPED.read_bytes()


def test_run_without_a_file_uses_workflow_yaml_here_else_the_installed_one(tmp_path, monkeypatch):
    """Outside the repository `dydis run` needs no file: with no workflow.yaml in the working
    directory it plans the installed one's stages; a workflow.yaml there comes first, and a file
    given by name is read as before."""
    monkeypatch.chdir(tmp_path)
    args = ["run", "--profile", "smoke", "--dry-run", "--root", "art", "--runs", "runs"]
    installed = runner.invoke(app, args)
    assert installed.exit_code == 0, installed.output
    assert "running the one installed with dydis" in " ".join(installed.stderr.split())
    planned = plan_lines(installed)
    assert planned["prepare-data"] == "would run with" and planned["report"] == "would run (after downstream-gbt)"
    assert installed.stdout == "" and not (tmp_path / "art").exists() and not (tmp_path / "runs").exists()

    (tmp_path / "workflow.yaml").write_text(TINY)
    here = runner.invoke(app, args[:1] + args[3:])  # TINY has no profiles
    assert here.exit_code == 0, here.output
    assert list(plan_lines(here)) == ["data", "vqgan", "ldm"] and "installed" not in here.stderr
    named = runner.invoke(app, ["run", str(SHIPPED), *args[1:]])
    assert named.exit_code == 0 and plan_lines(named) == planned
    missing = runner.invoke(app, ["run", "other.yaml", "--dry-run"])
    assert missing.exit_code == 2 and "config file not found" in missing.stderr


# ---- the real stages: caching, partial runs, lineage ----------------------------------------

def test_first_run_runs_every_stage_and_prints_the_last_path(built):
    _, root, result = built
    assert statuses(result) == {"data": "wrote", "vqgan": "wrote", "ldm": "wrote"}
    assert result.stdout.strip() == str(root / "train-ldm" / "tiny" / "v1")
    assert "wall time" in result.stderr


def test_second_run_does_nothing(built):
    workflow, root, _ = built
    before = artifact_dirs(root)
    again = invoke(workflow, root)
    assert again.exit_code == 0, again.output
    assert statuses(again) == {"data": "up to date", "vqgan": "up to date", "ldm": "up to date"}
    assert "ldm: up to date (train-ldm/tiny@v1)" in again.stderr
    assert artifact_dirs(root) == before


@pytest.mark.usefixtures("one_thread")
def test_a_changed_value_reruns_its_stage_and_the_later_ones(copy_of):
    workflow, root = copy_of
    changed = invoke(workflow, root, "--set", "vqgan.max_steps=2")
    assert changed.exit_code == 0, changed.output
    assert statuses(changed) == {"data": "up to date", "vqgan": "wrote", "ldm": "wrote"}
    ldm = yaml.safe_load((root / "train-ldm" / "tiny" / "v2" / "manifest.yaml").read_text())
    assert {i["role"]: i["ref"] for i in ldm["inputs"]} == {"data": "prepare-data/tiny@v1",
                                                           "vqgan": "train-vqgan/tiny@v2"}


def test_a_dry_run_of_the_real_stages_writes_nothing_and_knows_what_is_up_to_date(copy_of, tmp_path):
    workflow, root = copy_of
    fresh = invoke(workflow, tmp_path / "empty", "--dry-run")
    assert fresh.exit_code == 0, fresh.output
    assert plan_lines(fresh) == {"data": "would run with", "vqgan": "would run (after data)",
                                 "ldm": "would run (after vqgan)"}
    assert "  dataset: synthetic\n" in fresh.stderr and not (tmp_path / "empty").exists()
    before = artifact_dirs(root)
    changed = dry_runs_after_a_run(workflow, root, {"data": "prepare-data/tiny@v1", "vqgan": "train-vqgan/tiny@v1",
                                                    "ldm": "train-ldm/tiny@v1"}, "vqgan.max_steps=2")
    assert "  max_steps: 2\n" in changed.stderr and changed.stdout == "" and artifact_dirs(root) == before


def test_lineage_runs_from_the_last_artifact_back_to_the_dataset(built):
    _, root, _ = built
    store = ArtifactStore(root)
    last = store.load("train-ldm/tiny")
    walk = [(depth, parent.ref, intact) for depth, _entry, parent, intact in store.lineage(last)]
    assert walk == [(0, "prepare-data/tiny@v1", True), (0, "train-vqgan/tiny@v1", True),
                    (1, "prepare-data/tiny@v1", True)]
    assert last.manifest["workflow"]["step"] == "ldm" and len(last.manifest["workflow"]["fingerprint"]) == 64


def evaluate_latest_ldm(root: Path):
    return runner.invoke(app, ["eval-metrics", "--model", "train-ldm/tiny", "--metrics", "mig", "--n-jobs", "1",
                               "--root", str(root)])


def lineage_paths(root: Path) -> list[Path]:
    store = ArtifactStore(root)
    return [parent.path for _depth, _entry, parent, _intact in store.lineage(store.load("train-ldm/tiny"))]


@pytest.mark.usefixtures("one_thread")
def test_a_moved_store_is_up_to_date_and_a_copy_reads_only_its_own_files(copy_of, tmp_path):
    workflow, root = copy_of
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(root, moved)
    again = invoke(workflow, moved)
    assert again.exit_code == 0, again.output
    assert statuses(again) == {"data": "up to date", "vqgan": "up to date", "ldm": "up to date"}
    assert all(path.is_relative_to(moved) for path in lineage_paths(moved))
    assert evaluate_latest_ldm(moved).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved)  # a copy that still read the original's inputs would fail from here on
    assert all(path.is_relative_to(copy) for path in lineage_paths(copy))
    evaluated = evaluate_latest_ldm(copy)
    assert evaluated.exit_code == 0, evaluated.output
    metrics = ArtifactStore(copy).load(evaluated.stdout.strip())
    assert {entry["path"] for entry in metrics.manifest["inputs"]} == {"prepare-data/tiny/v1", "train-ldm/tiny/v1"}


def test_an_input_manifest_edited_after_use_is_an_error(copy_of):
    _, root = copy_of
    manifest = root / "prepare-data" / "tiny" / "v1" / "manifest.yaml"
    manifest.chmod(0o644)
    manifest.write_text(manifest.read_text().replace("seed: 0", "seed: 1", 1))
    result = evaluate_latest_ldm(root)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"error: {manifest}: sha256 differs from the one train-ldm/tiny@v1 recorded when "
                                     "it was made from it: the manifest was changed since")


@pytest.mark.usefixtures("one_thread")
def test_from_reruns_that_stage_and_until_stops(copy_of):
    workflow, root = copy_of
    partial = invoke(workflow, root, "--until", "vqgan")
    assert partial.exit_code == 0, partial.output
    assert statuses(partial) == {"data": "up to date", "vqgan": "up to date"}
    assert partial.stdout.strip() == str(root / "train-vqgan" / "tiny" / "v1")
    forced = invoke(workflow, root, "--from", "ldm")
    assert forced.exit_code == 0, forced.output
    assert statuses(forced) == {"data": "up to date", "vqgan": "up to date", "ldm": "wrote"}
    assert forced.stdout.strip() == str(root / "train-ldm" / "tiny" / "v2")


@pytest.mark.usefixtures("one_thread")
def test_a_failed_training_stage_resumes_from_its_checkpoint(copy_of, monkeypatch):
    """The real train-ldm stage fails after its last checkpoint (here: drawing the samples); the
    next `dydis run` resumes that run folder instead of training again or refusing to touch it.
    A longer run of the same config trains on from the finished shorter run's checkpoint; a
    shorter one starts over."""
    from dydis.stages import train_ldm
    from dydis.training import ldm as training

    workflow, root = copy_of
    fits, original_fit = [], training.fit

    def recorded_fit(ctx, cfg, *args):
        fits.append(args[4])  # resume: fit(ctx, cfg, images, latents, rows, run_dir, resume, ...)
        return original_fit(ctx, cfg, *args)

    def broken(*args, **kwargs):
        raise DataError("samples broken on purpose", "samples.png")

    monkeypatch.setattr(training, "fit", recorded_fit)
    monkeypatch.setattr(train_ldm, "_sample_sheet", broken)
    failed = invoke(workflow, root, "--set", "ldm.max_steps=3")
    assert failed.exit_code == 2 and failed.stderr.splitlines()[-1] == "error: samples.png: samples broken on purpose"
    assert load_checkpoint(root.parent / "runs" / "train-ldm" / "tiny" / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(train_ldm, "_sample_sheet", lambda *args: Image.new("RGB", (8, 8)).save(args[-1]))  # its out
    fixed = invoke(workflow, root, "--set", "ldm.max_steps=3")
    assert fixed.exit_code == 0, fixed.output
    assert fits == [True, True]  # trained on from the finished 2-step run, then resumed at step 3
    assert ArtifactStore(root).load("train-ldm/tiny").results["steps"] == 3
    assert "ldm: continuing" in failed.stderr and "(the same run, to max_steps 3)" in failed.stderr
    shorter = invoke(workflow, root, "--set", "ldm.max_steps=1")
    assert shorter.exit_code == 0, shorter.output
    assert fits == [True, True, False] and "ldm: starting" in shorter.stderr
    assert ArtifactStore(root).load("train-ldm/tiny").results["steps"] == 1


def test_from_needs_the_earlier_stages_up_to_date(copy_of):
    workflow, root = copy_of
    result = invoke(workflow, root, "--from", "ldm", "--set", "vqgan.max_steps=3")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (f"error: {workflow}: --from ldm: vqgan has no up-to-date artifact "
                                              "train-vqgan/tiny; start from it (--from vqgan) or drop --from")


# ---- fast stand-in stages: failure and resume, seeds ------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakeConfig:
    data: str = ""
    models: tuple[str, ...] = ()
    scores: tuple[str, ...] = ()
    value: int = 0
    rate: float = 0.0
    seed: int = 0


class FakeStages:
    """Stand-ins that publish real artifacts in a blink and record how they were called; a
    training one holds its run folder as the real ones do and leaves a checkpoint before it can fail."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.broken: set[str] = set()

    def spec(self, stage: str, kind: str, inputs: dict[str, str] | None = None, trains: bool = False,
             compares_points: bool = False, config: type = FakeConfig) -> StageSpec:
        def run(cfg, store, *, name, progress=None, runs_dir=None, resume=None, restart=None):
            self.calls.append((stage, name, resume) if restart is None else (stage, name, resume, restart))
            if trains:
                folder = RunFolder(runs_dir, stage, name)
                with folder.claim(resume=resume, restart=restart, config=to_dict(cfg),
                                  neutral=neutral_values(type(cfg))):
                    folder.start(resume=resume)
                    torch.save({"step": 1, "config": to_dict(cfg)}, folder.checkpoint)
            if stage in self.broken:
                raise DataError(f"{stage} broken on purpose", "somewhere")
            sources = [ref for ref in (cfg.data, *cfg.models, *cfg.scores) if ref]
            inputs = {f"input_{i}": store.load(ref) for i, ref in enumerate(sources)}
            with store.create(stage=stage, name=name, kind=kind, config=to_dict(cfg), inputs=inputs,
                              seed=cfg.seed) as writer:
                (writer.dir / "out.txt").write_text(f"{cfg.value} {cfg.seed}")
                writer.results["metrics"] = {"models": {"mean": float(len(cfg.models)), "std": 0.0}}
            return writer.artifact

        return StageSpec(config, run, kind=kind, inputs=inputs or {}, trains=trains,
                         compares_points=compares_points)

    def table(self, train_config: type = FakeConfig) -> dict[str, StageSpec]:
        return {"make": self.spec("make", "dataset"),
                "train": self.spec("train", "ldm", {"data": "dataset"}, trains=True, config=train_config),
                "score": self.spec("score", "metrics", {"data": "dataset", "models": "ldm"}),
                "compare": self.spec("compare", "viz", {"scores": "metrics"}, compares_points=True)}


FAKE = """
name: toy
stages:
  make: {config: {value: 1}}
  train: {inputs: {data: make}, seeded: true, config: {seed: 7}}
  score: {inputs: {data: make, models: [train]}}
"""


# FAKE with a last stage that compares the points of a sweep, as `report` does
SWEPT = FAKE + """  compare: {inputs: {scores: [score]}}
"""


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    stages = FakeStages()
    monkeypatch.setattr(stage_table, "STAGES", stages.table())
    workflow = tmp_path / "toy.yaml"
    workflow.write_text(FAKE)
    return stages, workflow, tmp_path / "store"


@pytest.fixture
def swept(fakes):
    stages, workflow, root = fakes
    workflow.write_text(SWEPT)
    return stages, workflow, root


def test_a_failed_stage_stops_the_run_and_the_rerun_resumes_it(fakes):
    stages, workflow, root = fakes
    stages.broken.add("train")
    failed = invoke(workflow, root)
    assert failed.exit_code == 2
    assert failed.stderr.splitlines()[-1] == "error: somewhere: train broken on purpose"
    assert "score" not in statuses(failed) and failed.stdout == ""
    stages.broken.clear()
    stages.calls.clear()
    fixed = invoke(workflow, root)
    assert fixed.exit_code == 0, fixed.output
    assert statuses(fixed) == {"make": "up to date", "train": "wrote", "score": "wrote"}
    assert stages.calls == [("train", "toy", True, False), ("score", "toy", None)]  # resumed from its checkpoint
    stages.calls.clear()
    changed = invoke(workflow, root, "--set", "train.value=2")
    assert changed.exit_code == 0, changed.output
    assert stages.calls[0] == ("train", "toy", False, True)  # another config: the finished run's checkpoint is stale


def test_a_failed_stage_rerun_with_another_config_starts_over(fakes):
    stages, workflow, root = fakes
    stages.broken.add("train")
    assert invoke(workflow, root).exit_code == 2
    stages.broken.clear()
    stages.calls.clear()
    changed = invoke(workflow, root, "--set", "train.value=2")
    assert changed.exit_code == 0, changed.output
    assert stages.calls[0] == ("train", "toy", False, True)  # its own checkpoint, of another config: restarted
    restarted = torch.load(root.parent / "runs" / "train" / "toy" / "checkpoint.pt", weights_only=True)
    assert restarted["config"]["value"] == 2


@dataclasses.dataclass(frozen=True)
class FakeConfigWithAKey(FakeConfig):
    """FakeConfig in a later release that added a key."""

    extra: int = 0
    added_keys = {"extra": 0}  # runs made before it did what 0 does


def test_a_release_that_adds_a_key_keeps_artifacts_and_checkpoints(fakes, monkeypatch):
    stages, workflow, root = fakes
    stages.broken = {"score"}
    assert invoke(workflow, root).exit_code == 2  # before the key: train published, score failed
    stages.broken = {"train"}
    assert invoke(workflow, root, "--set", "train.value=2").exit_code == 2  # and a run of value 2 checkpointed
    monkeypatch.setattr(stage_table, "STAGES", stages.table(train_config=FakeConfigWithAKey))  # the upgrade
    stages.broken.clear()
    stages.calls.clear()
    upgraded = invoke(workflow, root)
    assert upgraded.exit_code == 0, upgraded.output
    assert statuses(upgraded) == {"make": "up to date", "train": "up to date", "score": "wrote"}
    stages.calls.clear()
    assert invoke(workflow, root, "--set", "train.value=2").exit_code == 0
    assert stages.calls[0] == ("train", "toy", True, False)  # the unfinished run continued
    stages.calls.clear()
    changed = invoke(workflow, root, "--set", "train.value=2", "--set", "train.extra=1")
    assert changed.exit_code == 0, changed.output
    assert stages.calls[0] == ("train", "toy", False, True)  # the key set: another run


def test_a_checkpoint_the_runner_did_not_make_is_left_alone(fakes):
    stages, workflow, root = fakes
    checkpoint = root.parent / "runs" / "train" / "toy" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"step": 3, "config": {"value": 9}}, checkpoint)  # e.g. `dydis train --name toy`, stopped by Ctrl-C
    before = checkpoint.read_bytes()
    result = invoke(workflow, root)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (f"error: {checkpoint.parent}: this run folder holds a checkpoint that "
                                              "`dydis run` did not make; continue it with `dydis train --resume "
                                              "--name toy`, or delete the folder")
    assert checkpoint.read_bytes() == before and [c[0] for c in stages.calls] == ["make"]


def test_seeds_run_the_seeded_stages_once_each_and_evaluate_them_together(fakes):
    stages, workflow, root = fakes
    result = invoke(workflow, root, "--seeds", "7,8,9")
    assert result.exit_code == 0, result.output
    assert [c[:2] for c in stages.calls] == [("make", "toy"), ("train", "toy"), ("train", "toy-s8"),
                                             ("train", "toy-s9"), ("score", "toy")]
    score = ArtifactStore(root).load("score/toy")
    assert score.config["models"] == ["train/toy@v1", "train/toy-s8@v1", "train/toy-s9@v1"]
    assert "train (seed 8): wrote train/toy-s8@v1" in result.stderr
    assert "3.000 ± 0.000" in result.stderr  # the metrics table: the score stage saw three models
    again = invoke(workflow, root, "--seeds", "7,8,9")
    assert set(statuses(again).values()) == {"up to date"}


def test_execute_yields_each_outcome_in_order(fakes):
    stages, workflow, root = fakes
    plan = load_workflow(workflow, stages.table())
    outcomes = list(execute(plan, stages.table(), root=root, runs_dir=root.parent / "runs", until="train"))
    assert [(o.step, o.status, o.artifact.ref) for o in outcomes] == [("make", "ran", "make/toy@v1"),
                                                                      ("train", "ran", "train/toy@v1")]


def test_a_dry_run_lists_the_plan_and_writes_nothing(fakes):
    stages, workflow, root = fakes
    first = invoke(workflow, root, "--dry-run")
    assert first.exit_code == 0, first.output
    assert plan_lines(first) == {"make": "would run with", "train": "would run (after make)",
                                 "score": "would run (after train)"}
    config = yaml.safe_load("\n".join(line for line in first.stderr.splitlines() if line.startswith("  ")))
    assert config == to_dict(FakeConfig(value=1))  # make's resolved config
    assert first.stdout == "" and stages.calls == [] and not root.exists() and not (root.parent / "runs").exists()
    assert invoke(workflow, root).exit_code == 0
    stages.calls.clear()
    changed = dry_runs_after_a_run(workflow, root, {"make": "make/toy@v1", "train": "train/toy@v1",
                                                    "score": "score/toy@v1"}, "train.value=2")
    assert "  value: 2\n" in changed.stderr and "  data: make/toy@v1\n" in changed.stderr
    markers = sorted(p.relative_to(root.parent) for p in (root.parent / "runs" / ".workflow").rglob("*"))
    assert stages.calls == [] and markers == [Path("runs/.workflow/train"), Path("runs/.workflow/train/toy.fingerprint")]
    assert [p.name for p in (root / "train" / "toy").iterdir()] == ["v1"]


def test_a_dry_run_of_a_sweep_lists_each_point(swept):
    stages, workflow, root = swept
    result = invoke(workflow, root, "--dry-run", "--sweep", "train.value=1,2")
    assert result.exit_code == 0, result.output
    assert plan_lines(result) == {"make": "would run with", "train [value=1]": "would run (after make)",
                                  "train [value=2]": "would run (after make)",
                                  "score [value=1]": "would run (after train)",
                                  "score [value=2]": "would run (after train)",
                                  "compare": "would run (after score)"}
    assert invoke(workflow, root, "--until", "make").exit_code == 0
    after = invoke(workflow, root, "--dry-run", "--sweep", "train.value=1,2")
    labelled = [line for line in after.stderr.splitlines() if line.startswith("train [")]
    assert labelled == ["train [value=1]: would run with", "train [value=2]: would run with"]
    assert "  value: 2\n" in after.stderr and stages.calls == [("make", "toy", None)]


# ---- validation: one line naming the file and the key ------------------------------------------

@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["stages"]["vqgan"].update(stage="train-gan"), "stages.vqgan.stage: unknown stage 'train-gan'"),
    (lambda d: d["stages"]["ldm"]["inputs"].update(vqgan="vq"), "stages.ldm.inputs.vqgan: 'vq' is no stage id"),
    (lambda d: d["stages"]["vqgan"]["inputs"].update(data="ldm"), "stages.vqgan.inputs.data: 'ldm' comes later"),
    (lambda d: d["stages"]["vqgan"]["inputs"].update(data="vqgan"), "stages.vqgan.inputs.data: 'vqgan' is this "
                                                                    "stage itself (a cycle)"),
    (lambda d: d["stages"]["ldm"]["inputs"].update(vqgan="data"), "stages.ldm.inputs.vqgan: expects a vqgan artifact"),
    (lambda d: d["stages"]["ldm"]["inputs"].update(latents="vqgan"), "stages.ldm.inputs.latents: train-ldm takes no "
                                                                     "input latents"),
    (lambda d: d["stages"]["ldm"].update(sedded=True), "stages.ldm.sedded: unknown key"),
    (lambda d: d["stages"]["ldm"]["config"].update(lr=-1.0), "stages.ldm.config: config key lr: expected a rate in"),
    (lambda d: d["stages"]["data"]["config"].update(dataset="${datset}"), "stages.data.config.dataset: unknown var "
                                                                          "${datset}"),
    (lambda d: d.update(profiles={"quick": {"stages": {"gan": {}}}}), "profiles.quick.stages.gan: no such stage"),
    (lambda d: d.update(profiles={"quick": {"stagse": {}}}), "profiles.quick.stagse: unknown key"),
    (lambda d: d["stages"]["vqgan"].update(enabled=False), "stages.ldm.inputs.vqgan: 'vqgan' is disabled"),
])
def test_bad_workflows_name_the_file_and_the_key(tmp_path, edit, expected):
    doc = yaml.safe_load(TINY)
    edit(doc)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_workflow(path, STAGES, profile="quick" if "profiles" in doc else None)
    assert str(caught.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize("args, expected", [
    (["--profile", "fast"], "profiles: no profile 'fast'"),
    (["--set", "vqgna.max_steps=3"], "--set vqgna: neither a stage id"),
    (["--until", "gan"], "--until gan: no such stage"),
    (["--seeds", "1,2"], "--seeds: no stage is seeded"),
    (["--from", "ldm", "--until", "vqgan"], "--from ldm comes after --until vqgan"),
    (["--sweep", "ldm.quantizer=none,fsx"], "sweep point quantizer=fsx: stages.ldm.config: config key quantizer"),
    (["--sweep", "ldm.quantizr=none"], "sweep point quantizr=none: stages.ldm.config: unknown config key quantizr"),
    (["--sweep", "dataset=a,b"], "--sweep dataset: expected stage.key with a stage of this workflow"),
    (["--sweep", "ldm.vqgan=a,b"], "--sweep ldm.vqgan: vqgan is an input of ldm"),
    (["--sweep", "ldm.max_steps=1,1"], "--sweep ldm.max_steps: each value once, found '1' more than once"),
    (["--sweep", "ldm.max_steps"], "--sweep ldm.max_steps: expected stage.key=value1,value2"),
    (["--sweep", "ldm.lr=1e-4,2e-4", "--sweep", "ldm.lr=3e-4"], "--sweep: each key once"),
    (["--sweep", "data.dataset=a b,a_b"], "--sweep: each artifact name suffix once, found 'dataset-a_b'"),
    (["--variant", "a b:ldm.max_steps=1"], "--variant a b:ldm.max_steps=1: expected LABEL:stage.key=value"),
    (["--variant", "a:ldm.max_steps=1", "--variant", "a:ldm.max_steps=2"], "--variant: each label once"),
    (["--variant", "a:ldm.max_steps"], "--variant a: expected stage.key=value, found 'ldm.max_steps'"),
    (["--variant", "a:ldm.max_steps=1", "--sweep", "ldm.max_steps=2,3"], "--variant a: ldm.max_steps is also swept"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, expected):
    path = tmp_path / "workflow.yaml"
    path.write_text(TINY)
    result = invoke(path, tmp_path / "store", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


# ---- sweeps: --sweep and --variant ---------------------------------------------------------------

def names(stages: FakeStages, stage: str) -> list[str]:
    return [call[1] for call in stages.calls if call[0] == stage]


def stamp(root: Path, ref: str) -> dict:
    """The sweep point a workflow job recorded in its artifact's manifest."""
    return ArtifactStore(root).load(ref).manifest["workflow"].get("point")


def test_sweep_grid_runs_each_stage_once_per_value_it_depends_on(swept):
    stages, workflow, root = swept
    result = invoke(workflow, root, "--sweep", "train.value=1,2", "--sweep", "score.rate=0.5,1")
    assert result.exit_code == 0, result.output
    assert names(stages, "make") == ["toy"]  # above the swept stages: once, shared by every point
    assert names(stages, "train") == ["toy-value-1", "toy-value-2"]  # the rate does not reach train
    assert names(stages, "score") == ["toy-value-1-rate-0.5", "toy-value-1-rate-1", "toy-value-2-rate-0.5",
                                      "toy-value-2-rate-1"]
    assert names(stages, "compare") == ["toy"]  # one comparison of every point
    store = ArtifactStore(root)
    trained = store.load("train/toy-value-2")
    assert trained.config["value"] == 2 and trained.inputs("input_0")[0]["ref"] == "make/toy@v1"
    scored = store.load("score/toy-value-2-rate-0.5")
    assert scored.config["rate"] == 0.5 and scored.config["models"] == ["train/toy-value-2@v1"]
    assert store.load("compare/toy").config["scores"] == [f"score/toy-value-{v}-rate-{r}@v1"
                                                          for v in (1, 2) for r in ("0.5", "1")]
    assert stamp(root, "score/toy-value-1-rate-1") == {"label": "value=1 rate=1",
                                                       "settings": {"train.value": 1, "score.rate": 1}}
    assert stamp(root, "train/toy-value-1") == {"label": "value=1", "settings": {"train.value": 1}}
    assert stamp(root, "make/toy") is None and stamp(root, "compare/toy") is None
    assert "score [value=2 rate=0.5]: wrote score/toy-value-2-rate-0.5@v1" in result.stderr
    stages.calls.clear()
    again = invoke(workflow, root, "--sweep", "train.value=1,2", "--sweep", "score.rate=0.5,1")
    assert again.exit_code == 0, again.output
    assert stages.calls == [] and set(statuses(again).values()) == {"up to date"}
    assert len(statuses(again)) == 1 + 2 + 4 + 1


def test_sweep_with_seeds_names_each_seed_after_its_point(swept):
    stages, workflow, root = swept
    result = invoke(workflow, root, "--sweep", "train.value=1,2", "--seeds", "7,8")
    assert result.exit_code == 0, result.output
    # seed-major, so that a study stopped halfway has every point of its first seeds
    assert names(stages, "train") == ["toy-value-1", "toy-value-2", "toy-value-1-s8", "toy-value-2-s8"]
    assert ArtifactStore(root).load("score/toy-value-2").config["models"] == ["train/toy-value-2@v1",
                                                                              "train/toy-value-2-s8@v1"]
    assert "train [value=1] (seed 8): wrote train/toy-value-1-s8@v1" in result.stderr
    stages.calls.clear()
    assert invoke(workflow, root, "--sweep", "train.value=1,2", "--seeds", "7,8").exit_code == 0
    assert stages.calls == []


def test_variants_are_labelled_sets_of_keys_and_compared_in_order(swept):
    stages, workflow, root = swept
    result = invoke(workflow, root, "--variant", "plain:", "--variant", "both:train.value=1,score.rate=2",
                    "--variant", "rated:score.rate=3")
    assert result.exit_code == 0, result.output
    # train depends on the variants that set train keys: each variant labels its own model
    assert names(stages, "train") == ["toy-plain", "toy-both", "toy-rated"]
    assert names(stages, "score") == ["toy-plain", "toy-both", "toy-rated"]
    assert stamp(root, "score/toy-both") == {"label": "both", "settings": {"train.value": 1, "score.rate": 2}}
    assert ArtifactStore(root).load("train/toy-rated").config["value"] == 0
    assert ArtifactStore(root).load("compare/toy").config["scores"] == ["score/toy-plain@v1", "score/toy-both@v1",
                                                                       "score/toy-rated@v1"]


def test_variants_with_a_grid_run_every_variant_at_every_value(swept):
    stages, workflow, root = swept
    result = invoke(workflow, root, "--variant", "low:train.value=1", "--variant", "high:train.value=2",
                    "--sweep", "score.rate=0,1")
    assert result.exit_code == 0, result.output
    assert names(stages, "train") == ["toy-low", "toy-high"]
    assert names(stages, "score") == ["toy-low-rate-0", "toy-low-rate-1", "toy-high-rate-0", "toy-high-rate-1"]
    assert stamp(root, "score/toy-high-rate-1")["label"] == "high rate=1"


def test_point_names_are_safe_and_keys_that_share_a_last_part_are_shown_whole(tmp_path):
    point = Point("dyga", (("ldm.quantizer", "dyga"),), (("ldm.unet.skip_dropout_levels", "skip_dropout_levels",
                                                          [1, 2]), ("ldm.lr", "lr", 0.0001)))
    assert point.slug == "dyga-skip_dropout_levels-1_2-lr-0.0001"
    assert point.label == "dyga skip_dropout_levels=[1, 2] lr=0.0001"
    assert point.overrides("ldm") == {"quantizer": "dyga", "unet": {"skip_dropout_levels": [1, 2]}, "lr": 0.0001}
    assert point.overrides("vqgan") == {}
    path = tmp_path / "workflow.yaml"
    path.write_text(TINY)
    plan = load_workflow(path, STAGES)
    first = sweep_points(plan, STAGES, sweeps=["vqgan.seed=1,2", "ldm.seed=3"])[0]
    assert first.slug == "vqgan.seed-1-ldm.seed-3" and first.label == "vqgan.seed=1 ldm.seed=3"
    grid = sweep_points(plan, STAGES, sweeps=["ldm.unet.skip_dropout_levels=[1, 2],code"])
    assert [p.settings for p in grid] == [(("ldm.unet.skip_dropout_levels", [1, 2]),),
                                          (("ldm.unet.skip_dropout_levels", "code"),)]
    assert sweep_points(plan, STAGES) == ()


def test_seeds_own_the_seed_of_seeded_stages(swept):
    _, workflow, root = swept
    result = invoke(workflow, root, "--seeds", "7,8", "--sweep", "train.seed=1,2")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {workflow}: sweep point seed=1: train.seed is set by --seeds (train is seeded)"


def test_run_help_explains_sweep_and_variant():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "--sweep" in result.output and "--variant" in result.output
    assert "train-ldm.unet.skip_dropout=0,0.2" in " ".join(result.output.split())


@pytest.mark.usefixtures("one_thread")
def test_variants_of_the_real_train_ldm_keys_share_the_vqgan_and_end_in_one_report(copy_of, tmp_path):
    _, root = copy_of
    workflow = tmp_path / "reported.yaml"  # TINY, evaluated and reported
    workflow.write_text(TINY + """  scores:
    stage: eval-metrics
    inputs: {models: [ldm]}
    config: {metrics: [mig], n_jobs: 1}
  report:
    inputs: {metrics: [scores]}
""")
    result = invoke(workflow, root, "--variant", "baseline:ldm.quantizer=none,ldm.unet.skip_dropout=0",
                    "--variant", "dyga-sd:ldm.quantizer=dyga,ldm.unet.skip_dropout=0.2")
    assert result.exit_code == 0, result.output
    assert statuses(result) == {"data": "up to date", "vqgan": "up to date", "ldm [baseline]": "wrote",
                                "ldm [dyga-sd]": "wrote", "scores [baseline]": "wrote", "scores [dyga-sd]": "wrote",
                                "report": "wrote"}
    store = ArtifactStore(root)
    baseline, both = store.load("train-ldm/tiny-baseline"), store.load("train-ldm/tiny-dyga-sd")
    assert (baseline.config["quantizer"], baseline.config["unet"]["skip_dropout"]) == ("none", 0.0)
    assert (both.config["quantizer"], both.config["unet"]["skip_dropout"]) == ("dyga", 0.2)
    assert baseline.config["vqgan"] == both.config["vqgan"] == "train-vqgan/tiny@v1"
    report = store.load("report/tiny")
    assert result.stdout.strip() == str(report.path)
    assert report.config["metrics"] == ["eval-metrics/tiny-baseline@v1", "eval-metrics/tiny-dyga-sd@v1"]
    assert report.results["variants"] == ["baseline", "dyga-sd"] and report.results["baseline"] == "baseline"


def test_run_markers_read_their_json_and_the_bare_markers_written_before_it(tmp_path):
    path = tmp_path / "toy.fingerprint"
    assert RunMarker.read(path) is None
    mark = RunMarker("f" * 64, "b" * 64, {"epochs": 40.0, "max_steps": None}, finished=True)
    mark.write(path)
    assert RunMarker.read(path) == mark
    path.write_text("finished")
    assert RunMarker.read(path) == RunMarker(None, None, None, finished=True)
    path.write_text("a" * 64)
    assert RunMarker.read(path) == RunMarker("a" * 64, None, None, finished=False)
    path.write_text('{"fingerprint": ')  # cut short: read as no marker, so the runner leaves the checkpoint alone
    assert RunMarker.read(path) is None
