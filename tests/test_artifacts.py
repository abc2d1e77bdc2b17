from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import artifact_dirs
from dydis.artifacts import ArtifactStore, MANIFEST, SCHEMAS
from dydis.errors import ArtifactError


def publish(store, name="demo", kind="dataset", payload=b"hello", inputs=None, stage="prepare-data"):
    with store.create(stage=stage, name=name, kind=kind, config={"a": 1}, inputs=inputs, seed=3) as writer:
        (writer.dir / "data.bin").write_bytes(payload)
        writer.results["answer"] = 42
    return writer.artifact


def test_publish_versions_and_manifest(store_root):
    store = ArtifactStore(store_root)
    first, second = publish(store), publish(store, payload=b"other")
    assert first.path == store_root / "prepare-data" / "demo" / "v1"
    assert second.path == store_root / "prepare-data" / "demo" / "v2"
    manifest = yaml.safe_load((first.path / MANIFEST).read_text())
    for key in ("kind", "schema", "stage", "name", "version", "created", "dydis_version", "git", "torch", "device",
                "seed", "config", "inputs", "files", "results"):
        assert key in manifest
    assert manifest["kind"] == "dataset" and manifest["schema"] == SCHEMAS["dataset"]
    assert manifest["files"]["data.bin"]["bytes"] == 5
    assert manifest["results"] == {"answer": 42} and manifest["seed"] == 3 and manifest["config"] == {"a": 1}
    assert (os.stat(first.path / "data.bin").st_mode & 0o222) == 0  # read-only once published
    assert not (store_root / ".staging").exists()


def test_failure_leaves_nothing(store_root):
    store = ArtifactStore(store_root)
    with pytest.raises(RuntimeError):
        with store.create(stage="prepare-data", name="demo", kind="dataset", config={}) as writer:
            (writer.dir / "half.bin").write_bytes(b"x" * 1000)
            raise RuntimeError("crash in the middle")
    assert artifact_dirs(store_root) == []
    assert not (store_root / "prepare-data").exists()
    assert not (store_root / ".staging").exists()


def test_resolution(store_root):
    store = ArtifactStore(store_root)
    publish(store), publish(store)
    assert store.resolve("prepare-data/demo").name == "v2"
    assert store.resolve("prepare-data/demo@v1").name == "v1"
    assert store.resolve(str(store_root / "prepare-data/demo/v1")).name == "v1"
    with pytest.raises(ArtifactError, match="no version v7"):
        store.resolve("prepare-data/demo@v7")
    with pytest.raises(ArtifactError, match="no artifact"):
        store.resolve("prepare-data/other")
    with pytest.raises(ArtifactError, match="no manifest"):
        store.resolve(str(store_root))


def test_validation_kind_schema_hash(store_root):
    store = ArtifactStore(store_root)
    artifact = publish(store)
    assert store.load("prepare-data/demo", kind="dataset").version == 1
    with pytest.raises(ArtifactError, match="expected a vqgan artifact, found a dataset"):
        store.load("prepare-data/demo", kind="vqgan")
    data = artifact.path / "data.bin"
    data.chmod(0o644)
    data.write_bytes(b"jello")  # same size, different content
    with pytest.raises(ArtifactError, match="sha256"):
        store.load("prepare-data/demo")
    data.write_bytes(b"hi")
    with pytest.raises(ArtifactError, match="bytes"):
        store.load("prepare-data/demo")
    data.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.load("prepare-data/demo")
    other = publish(store, name="future")
    manifest_path = other.path / MANIFEST
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["schema"] = SCHEMAS["dataset"] + 1
    manifest_path.chmod(0o644)
    manifest_path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(ArtifactError, match="schema"):
        store.load("prepare-data/future")


def test_inputs_and_lineage(store_root):
    store = ArtifactStore(store_root)
    data = publish(store)
    model = publish(store, name="model", kind="vqgan", stage="train-vqgan", inputs={"data": data})
    entry = model.manifest["inputs"][0]
    assert entry["ref"] == "prepare-data/demo@v1" and entry["manifest_sha256"] == data.manifest_sha256()
    assert model.inputs("data") == [entry] and model.inputs("vqgan") == [] and data.inputs("data") == []
    walk = list(store.lineage(model))
    assert [(depth, parent.ref, intact) for depth, _, parent, intact in walk] == [(0, "prepare-data/demo@v1", True)]
    assert [a.ref for a in store.list()] == ["prepare-data/demo@v1", "train-vqgan/model@v1"]


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match="cannot write"):
        publish(ArtifactStore(blocker / "store"))


def test_bad_names(store_root):
    with pytest.raises(ArtifactError):
        publish(ArtifactStore(store_root), name="../escape")


def test_version_race_takes_the_next_number(store_root, monkeypatch):
    store = ArtifactStore(store_root)
    publish(store)
    real_versions = store.versions
    looks = []

    def versions(stage, name):  # the first look misses v1, as if another process had just published it
        looks.append(name)
        return [] if len(looks) == 1 else real_versions(stage, name)

    monkeypatch.setattr(store, "versions", versions)
    second = publish(store, payload=b"other")
    assert len(looks) == 2 and second.version == 2 and second.path.name == "v2"
    assert set(second.manifest["files"]) == {"data.bin"}  # the first attempt's manifest is not hashed as a file
    assert store.load("prepare-data/demo@v2").version == 2


# ---- inputs are recorded relative to the store, which can move ----------------------------------

def chain(store):
    """dataset -> vqgan -> ldm, each made from the one before (the ldm from both)."""
    data = publish(store)
    vqgan = publish(store, name="model", kind="vqgan", stage="train-vqgan", inputs={"data": data})
    return publish(store, name="model", kind="ldm", stage="train-ldm", inputs={"data": data, "vqgan": vqgan})


def inputs_of(store, ref="train-ldm/model"):
    """The chain walked back from the ldm: (vqgan, its dataset, the ldm's dataset)."""
    ldm = store.load(ref)
    vqgan = store.input_of(ldm, "vqgan", "vqgan")
    return vqgan, store.input_of(vqgan, "data", "dataset"), store.input_of(ldm, "data", "dataset")


def test_inputs_are_recorded_relative_to_the_store_root(store_root, tmp_path):
    ldm = chain(ArtifactStore(store_root))
    assert [entry["path"] for entry in ldm.manifest["inputs"]] == ["prepare-data/demo/v1", "train-vqgan/model/v1"]
    outside = publish(ArtifactStore(tmp_path / "other"), name="outside")
    made = publish(ArtifactStore(store_root), name="from-outside", kind="vqgan", inputs={"data": outside})
    assert made.manifest["inputs"][0]["path"] == str(outside.path.resolve())  # not in this store: absolute
    assert ArtifactStore(store_root).input_of(made, "data", "dataset").path == outside.path.resolve()


def test_a_moved_store_reads_its_inputs_where_it_now_is(store_root, tmp_path):
    chain(ArtifactStore(store_root))
    moved = tmp_path / "moved" / "store"
    shutil.move(store_root, moved)
    store = ArtifactStore(moved)
    assert [a.path for a in inputs_of(store)] == [moved / "train-vqgan/model/v1", moved / "prepare-data/demo/v1",
                                                  moved / "prepare-data/demo/v1"]
    assert [(parent.path, intact) for _, _, parent, intact in store.lineage(store.load("train-ldm/model"))] == [
        (moved / "prepare-data/demo/v1", True), (moved / "train-vqgan/model/v1", True),
        (moved / "prepare-data/demo/v1", True)]


def test_a_copied_store_reads_only_its_own_files(store_root, tmp_path):
    chain(ArtifactStore(store_root))
    copy = tmp_path / "copy"
    shutil.copytree(store_root, copy)
    original = store_root / "prepare-data/demo/v1/data.bin"
    original.chmod(0o644)
    original.write_bytes(b"jello")  # the original changes: the copy must not notice
    vqgan, data, _ = inputs_of(ArtifactStore(copy))
    assert vqgan.path == copy / "train-vqgan/model/v1" and data.path == copy / "prepare-data/demo/v1"
    shutil.rmtree(store_root)
    assert all(a.path.is_relative_to(copy) for a in inputs_of(ArtifactStore(copy)))


def make_old(artifact, input_dir):
    """Rewrite a manifest the way dydis wrote it before paths were relative: absolute input paths."""
    path = artifact.path / MANIFEST
    manifest = yaml.safe_load(path.read_text())
    manifest["inputs"][0]["path"] = str(input_dir.resolve())
    path.chmod(0o644)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))


def test_old_manifests_with_absolute_paths_still_load_in_place_moved_and_copied(store_root, tmp_path):
    store = ArtifactStore(store_root)
    data = publish(store)
    make_old(publish(store, name="model", kind="vqgan", stage="train-vqgan", inputs={"data": data}), data.path)
    assert store.input_of(store.load("train-vqgan/model"), "data", "dataset").path == data.path.resolve()
    copy = tmp_path / "copy"
    shutil.copytree(store_root, copy)
    found = ArtifactStore(copy).input_of(ArtifactStore(copy).load("train-vqgan/model"), "data", "dataset")
    assert found.path == copy / "prepare-data/demo/v1"  # the copy's own dataset, not the original's
    moved = tmp_path / "moved"
    shutil.move(store_root, moved)
    found = ArtifactStore(moved).input_of(ArtifactStore(moved).load("train-vqgan/model"), "data", "dataset")
    assert found.path == moved / "prepare-data/demo/v1"


def test_an_input_manifest_edited_after_use_is_refused(store_root):
    store = ArtifactStore(store_root)
    chain(store)
    edited = store_root / "prepare-data/demo/v1" / MANIFEST
    edited.chmod(0o644)
    edited.write_text(edited.read_text() + "# edited\n")
    with pytest.raises(ArtifactError) as caught:
        store.input_of(store.load("train-vqgan/model"), "data", "dataset")
    assert str(caught.value) == (f"{edited}: sha256 differs from the one train-vqgan/model@v1 recorded when it was "
                                 "made from it: the manifest was changed since")
    walk = [(parent.ref, intact) for _, _, parent, intact in store.lineage(store.load("train-ldm/model"))]
    assert walk == [("prepare-data/demo@v1", False), ("train-vqgan/model@v1", True), ("prepare-data/demo@v1", False)]


@pytest.mark.parametrize("recorded", ["../outside/demo/v1", "prepare-data/demo", "prepare-data/../../demo/v1"])
def test_a_relative_input_path_stays_inside_the_store(store_root, recorded):
    store = ArtifactStore(store_root)
    model = publish(store, name="model", kind="vqgan", stage="train-vqgan", inputs={"data": publish(store)})
    entry = dict(model.inputs("data")[0], path=recorded)
    with pytest.raises(ArtifactError, match="is not <stage>/<name>/v<N>"):
        model.input_path(entry)


# ---- staging folders of killed writers ------------------------------------------------------------

WRITER = """
import sys, time
from dydis.artifacts import ArtifactStore
with ArtifactStore(sys.argv[1]).create(stage="prepare-data", name=sys.argv[2], kind="dataset", config={}) as w:
    (w.dir / "half.bin").write_bytes(b"x" * 1000)
    print(w.dir, flush=True)
    time.sleep(60)
"""


def start_writer(root, name):
    """A process in the middle of writing an artifact: (the process, its staging folder)."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root), name], stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_the_next_write_removes_the_staging_folders_of_killed_writers_only(store_root):
    killed, killed_dir = start_writer(store_root, "killed")
    live, live_dir = start_writer(store_root, "live")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        other_host = store_root / ".staging" / f"prepare-data-x@another-host@{killed.pid}-{'0' * 12}"
        older = store_root / ".staging" / f"prepare-data-x-{'0' * 12}"  # the naming before owners were recorded
        other_host.mkdir(), older.mkdir()
        with ArtifactStore(store_root).create(stage="prepare-data", name="mine", kind="dataset", config={}) as writer:
            mine = writer.dir
            assert not killed_dir.exists() and live_dir.is_dir() and (live_dir / "half.bin").is_file()
            assert other_host.is_dir() and older.is_dir()
        assert sorted((store_root / ".staging").iterdir()) == sorted([live_dir, other_host, older])
        assert not mine.exists() and writer.artifact.path == store_root / "prepare-data/mine/v1"
    finally:
        live.kill()
        live.wait()
