"""Run folders: safe names, never deleted implicitly, one process at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dydis.errors import ConfigError
from dydis.training.runs import LOCK, RunFolder, at_least_as_long

CONFIG = {"lr": 1e-4, "sizes": [1, 2]}


def _run_with_checkpoint(runs, name="x", config=CONFIG) -> RunFolder:
    folder = RunFolder(runs, "train-ldm", name)
    folder.path.mkdir(parents=True)
    torch.save({"step": 3, "config": config}, folder.checkpoint)
    (folder.path / "train_log.csv").write_text("step,loss\n1,0.5\n")
    return folder


def _contents(folder: RunFolder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.path.iterdir() if p.name != LOCK}


@pytest.mark.parametrize("name", ["..", ".", "../../victim", "/tmp/victim", "a/b", "", "-x", "x\n", ".hidden"])
def test_names_that_are_not_one_safe_path_component_are_refused(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("data")
    with pytest.raises(ConfigError, match="--name .*: expected one name of letters, digits and"):
        RunFolder(tmp_path / "runs" / "deep", "train-ldm", name)
    assert (victim / "keep.txt").read_text() == "data"


def test_a_run_folder_that_is_a_link_out_of_the_runs_folder_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "runs" / "train-ldm").mkdir(parents=True)
    (tmp_path / "runs" / "train-ldm" / "x").symlink_to(victim)
    folder = RunFolder(tmp_path / "runs", "train-ldm", "x")
    with pytest.raises(ConfigError, match="outside"):
        with folder.claim(resume=False, restart=True, config=CONFIG):
            folder.start(resume=False)
    assert victim.is_dir()


def test_a_checkpoint_needs_resume_or_restart_and_a_refusal_touches_nothing(tmp_path):
    folder = _run_with_checkpoint(tmp_path)
    before = _contents(folder)
    with pytest.raises(ConfigError) as caught:
        with folder.claim(resume=False, restart=False, config=CONFIG):
            pass
    assert str(caught.value) == (f"{folder.path}: this run folder holds a checkpoint: continue it with --resume, "
                                 "or delete it and start over with --restart")
    assert sorted(p.name for p in folder.path.iterdir()) == ["checkpoint.pt", "train_log.csv"]  # not even a lock
    with pytest.raises(ConfigError, match="give one of them"):
        with folder.claim(resume=True, restart=True, config=CONFIG):
            pass
    assert _contents(folder) == before


def test_resume_needs_a_checkpoint_of_the_same_config(tmp_path):
    fresh = RunFolder(tmp_path, "train-ldm", "new")
    with pytest.raises(ConfigError, match="--resume: no checkpoint to continue"):
        with fresh.claim(resume=True, restart=False, config=CONFIG):
            pass
    assert not fresh.path.exists()
    folder = _run_with_checkpoint(tmp_path)
    with pytest.raises(ConfigError) as caught:
        with folder.claim(resume=True, restart=False, config={**CONFIG, "lr": 2e-4, "sizes": [1, 3]}):
            pass
    assert str(caught.value) == (f"{folder.path}: --resume: this run was started with a different config (lr, sizes); "
                                 "resume with the same settings (only epochs / max_steps may change, to train it to "
                                 "another length), or start over with --restart")
    with folder.claim(resume=True, restart=False, config=CONFIG):
        folder.start(resume=True)
    assert (folder.path / "train_log.csv").is_file() and folder.has_checkpoint()


def test_resume_accepts_another_length_and_names_nested_changes(tmp_path):
    config = {**CONFIG, "epochs": 40.0, "max_steps": None, "unet": {"dropout": 0.1}}
    folder = _run_with_checkpoint(tmp_path, config=config)
    with folder.claim(resume=True, restart=False, config={**config, "epochs": 80.0}):
        folder.start(resume=True)
    with folder.claim(resume=True, restart=False, config={**config, "epochs": None, "max_steps": 9}):
        pass
    with pytest.raises(ConfigError, match=r"a different config \(unet.dropout\)"):
        with folder.claim(resume=True, restart=False, config={**config, "epochs": 80.0, "unet": {"dropout": 0.0}}):
            pass


def test_resume_accepts_a_key_added_since_the_checkpoint_while_it_is_neutral(tmp_path):
    old = {**CONFIG, "dyga": {"lam": 0.1}}  # made before dyga.merge existed
    folder = _run_with_checkpoint(tmp_path, config=old)
    neutral = {"dyga.merge": None}
    with folder.claim(resume=True, restart=False, config={**CONFIG, "dyga": {"lam": 0.1, "merge": None}},
                      neutral=neutral):
        folder.start(resume=True)
    with pytest.raises(ConfigError, match=r"a different config \(dyga.merge\)"):
        with folder.claim(resume=True, restart=False, config={**CONFIG, "dyga": {"lam": 0.1, "merge": "none"}},
                          neutral=neutral):
            pass
    with pytest.raises(ConfigError, match=r"a different config \(dyga.merge\)"):  # only a neutral value is absent
        with folder.claim(resume=True, restart=False, config={**CONFIG, "dyga": {"lam": 0.1, "merge": None}}):
            pass


@pytest.mark.parametrize(("new", "old", "expected"), [
    ({"epochs": 80, "max_steps": None}, {"epochs": 40, "max_steps": None}, True),
    ({"epochs": 40, "max_steps": None}, {"epochs": 40, "max_steps": None}, True),
    ({"epochs": 20, "max_steps": None}, {"epochs": 40, "max_steps": None}, False),
    ({"epochs": None, "max_steps": 8}, {"epochs": 80, "max_steps": 6}, True),  # max_steps wins over epochs
    ({"epochs": 90, "max_steps": 5}, {"epochs": 10, "max_steps": 6}, False),
    ({"epochs": 80, "max_steps": None}, {"epochs": None, "max_steps": 6}, False),  # epochs vs steps: unknown
])
def test_at_least_as_long_compares_lengths_in_one_unit(new, old, expected):
    assert at_least_as_long(new, old) is expected


def test_restart_deletes_only_at_start(tmp_path):
    folder = _run_with_checkpoint(tmp_path)
    before = _contents(folder)
    with pytest.raises(ValueError):  # a stage's own check fails after the claim: nothing is deleted yet
        with folder.claim(resume=False, restart=True, config=CONFIG):
            raise ValueError("bad value")
    assert _contents(folder) == before
    with folder.claim(resume=False, restart=True, config=CONFIG):
        folder.start(resume=False)
        assert [p.name for p in folder.path.iterdir()] == [LOCK]


def test_a_folder_without_checkpoint_starts_afresh(tmp_path):
    folder = RunFolder(tmp_path, "train-ldm", "x")
    folder.path.mkdir(parents=True)
    (folder.path / "train_log.csv").write_text("step,loss\n1,nan\n")  # a run that never reached a checkpoint
    with folder.claim(resume=False, restart=False, config=CONFIG):
        folder.start(resume=False)
        assert [p.name for p in folder.path.iterdir()] == [LOCK]


def test_a_second_claim_of_the_same_folder_fails_at_once(tmp_path):
    folder = RunFolder(tmp_path, "train-ldm", "x")
    other = RunFolder(tmp_path, "train-ldm", "x")
    with folder.claim(resume=False, restart=False, config=CONFIG):
        with pytest.raises(ConfigError) as caught:
            with other.claim(resume=False, restart=False, config=CONFIG):
                pass
        assert str(caught.value) == (f"{folder.path}: another process is using this run folder (a run of the same "
                                     "stage and --name); wait for it to finish or pick another --name")
    with other.claim(resume=False, restart=False, config=CONFIG):  # released at the end of the first run
        pass


def test_another_process_cannot_claim_a_held_folder(tmp_path):
    folder = RunFolder(tmp_path, "train-ldm", "x")
    script = ("import sys; from dydis.training.runs import RunFolder; from dydis.errors import ConfigError\n"
              "try:\n"
              f"    with RunFolder({str(tmp_path)!r}, 'train-ldm', 'x').claim(resume=False, restart=False, config={{}}):\n"
              "        print('claimed')\n"
              "except ConfigError as err:\n"
              "    print(err)\n")
    with folder.claim(resume=False, restart=False, config=CONFIG):
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "another process is using this run folder" in held.stdout, held.stderr
    assert free.stdout.strip() == "claimed", free.stderr


def test_a_process_that_does_not_own_the_folder_neither_checks_nor_deletes(tmp_path):
    folder = _run_with_checkpoint(tmp_path)
    before = _contents(folder)
    with folder.claim(resume=False, restart=False, config=CONFIG, owner=False):  # torchrun's rank 1
        folder.start(resume=False)
    assert _contents(folder) == before


def test_a_checkpoint_counts_the_training_time_of_every_session(tmp_path, monkeypatch):
    """Fresh run: the time since the loop began; each resume adds its own from where the file
    stopped (time between the last save and an interruption is not counted: that work is redone);
    a checkpoint from before the count leaves the total unknown."""
    import time

    from dydis.training.checkpoint import ELAPSED, Checkpoint, load_checkpoint, save_checkpoint

    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    path = tmp_path / "checkpoint.pt"
    first = Checkpoint(path, writes=True, lr_key="lr")
    now[0] = 130.0
    first.save(3, {}, config={})
    now[0] = 190.0  # interrupted 60 s after the save
    resumed = Checkpoint(path, writes=True, lr_key="lr")
    now[0] = 500.0
    assert resumed.load(steps=10)[ELAPSED] == 30.0
    now[0] = 520.0
    resumed.save(5, {}, config={})
    assert load_checkpoint(path)[ELAPSED] == 50.0
    save_checkpoint(path, {"step": 5, "config": {}})  # written by a version that did not count
    older = Checkpoint(path, writes=True, lr_key="lr")
    older.load(steps=10)
    now[0] = 600.0
    older.save(6, {}, config={})
    assert load_checkpoint(path)[ELAPSED] is None and load_checkpoint(path)["step"] == 6
