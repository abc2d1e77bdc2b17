from __future__ import annotations

import os

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
