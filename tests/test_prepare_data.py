"""prepare-data on tiny files in the exact format of each real download."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import (artifact_dirs, decode_row_image, shapes3d_image, truncate, write_dsprites, write_mpi3d,
                      without_progress, write_shapes3d)
from dydis.artifacts import ArtifactStore
from dydis.cli.main import app
from dydis.config import PrepareDataConfig
from dydis.data.factors import FactorSpace
from dydis.data.shapes3d import FACTOR_SIZES as SHAPES3D_SIZES
from dydis.data.shapes3d import FACTOR_VALUES as SHAPES3D_VALUES
from dydis.data.standard import DatasetFile
from dydis.stages import prepare_data

runner = CliRunner()


def prepare(store_root, **config):
    return prepare_data.run(PrepareDataConfig(**config), ArtifactStore(store_root))


def test_shapes3d_factors_from_label_values(tmp_path, store_root):
    rows = np.arange(0, 480_000, 1_237)  # a user's own subset: not the full grid
    source = write_shapes3d(tmp_path / "3dshapes.h5", rows)
    artifact = prepare(store_root, dataset="shapes3d", source=str(source))
    with DatasetFile(artifact.file("data.h5")) as data:
        expected = np.stack(np.unravel_index(rows, SHAPES3D_SIZES), axis=1)
        np.testing.assert_array_equal(data.factors, expected)
        np.testing.assert_array_equal(data.images[:], np.stack([shapes3d_image(f) for f in expected]))
        assert data.factor_names[0] == "floor_hue" and data.factor_sizes == SHAPES3D_SIZES
        assert not data.is_full_grid
    assert artifact.results["n_images"] == len(rows) and len(artifact.results["preview"]) == 64
    assert (artifact.path / "preview.png").stat().st_size > 0


def test_shapes3d_subset_keeps_true_factors(tmp_path, store_root):
    rows = np.arange(0, 480_000, 4_001)
    source = write_shapes3d(tmp_path / "3dshapes.h5", rows)
    artifact = prepare(store_root, dataset="shapes3d", source=str(source), subset=25, seed=5)
    with DatasetFile(artifact.file("data.h5")) as data:
        kept_rows = FactorSpace(data.factor_names, data.factor_sizes).to_rows(data.factors)
        assert len(kept_rows) == 25 and set(kept_rows) <= set(rows) and np.all(np.diff(kept_rows) > 0)
        for image, f in zip(data.images[:], data.factors):
            np.testing.assert_array_equal(image, shapes3d_image(f))
    again = prepare(store_root, dataset="shapes3d", source=str(source), subset=25, seed=5)
    with DatasetFile(again.file("data.h5")) as a, DatasetFile(artifact.file("data.h5")) as b:
        np.testing.assert_array_equal(a.factors, b.factors)


@pytest.mark.parametrize("compressed", [False, True])
def test_mpi3d_reduced_grid_from_row_order(tmp_path, store_root, compressed):
    sizes = (2, 2, 2, 3, 3, 4, 4)
    n = int(np.prod(sizes))
    source = tmp_path / "mpi3d_toy.npz"
    if compressed:  # a re-packed download: the reader must stream instead of memory-mapping
        np.savez_compressed(source, images=np.load(write_mpi3d(tmp_path / "plain.npz", n))["images"])
    else:
        write_mpi3d(source, n)
    artifact = prepare(store_root, dataset="mpi3d-toy", source=str(source), factor_sizes=sizes)
    with DatasetFile(artifact.file("data.h5")) as data:
        rows = decode_row_image(data.images[:])
        np.testing.assert_array_equal(rows, np.arange(n))
        np.testing.assert_array_equal(data.factors, np.stack(np.unravel_index(rows, sizes), axis=1))
        assert data.is_full_grid and data.factor_names[-1] == "vertical_axis"
    sub = prepare(store_root, dataset="mpi3d-toy", source=str(source), factor_sizes=sizes, fraction=0.1)
    with DatasetFile(sub.file("data.h5")) as data:
        rows = decode_row_image(data.images[:])
        assert len(rows) == round(0.1 * n)
        np.testing.assert_array_equal(data.factors, np.stack(np.unravel_index(rows, sizes), axis=1))


@pytest.mark.parametrize("compressed", [True, False])
def test_dsprites(tmp_path, store_root, compressed):
    source = write_dsprites(tmp_path / "dsprites.npz", compressed=compressed)
    raw = np.load(source, allow_pickle=True, encoding="latin1")
    artifact = prepare(store_root, dataset="dsprites", source=str(source), subset=50, seed=1)
    with DatasetFile(artifact.file("data.h5")) as data:
        assert data.factor_sizes == (3, 6, 40, 32, 32)
        # each written row is a source row: find it by its factors and compare pixels
        lookup = {tuple(c[1:]): i for i, c in enumerate(raw["latents_classes"])}
        for image, f in zip(data.images[:], data.factors):
            source_row = lookup[tuple(f)]
            np.testing.assert_array_equal(image[..., 0], raw["imgs"][source_row] * 255)
            np.testing.assert_array_equal(image[..., 0], image[..., 2])
        assert len(data) == 50 and len({tuple(f) for f in data.factors}) == 50


# ---- bad input: exit code 2, one line naming the file, no artifact --------------------------


def _bad_h5(tmp_path, kind):
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as h5:
        if kind == "key":
            h5.create_dataset("imgs", data=np.zeros((2, 64, 64, 3), np.uint8))
            h5.create_dataset("labels", data=np.zeros((2, 6)))
        elif kind == "dtype":
            h5.create_dataset("images", data=np.zeros((2, 64, 64, 3), np.float32))
            h5.create_dataset("labels", data=np.zeros((2, 6)))
        elif kind == "shape":
            h5.create_dataset("images", data=np.zeros((2, 32, 32, 3), np.uint8))
            h5.create_dataset("labels", data=np.zeros((2, 6)))
        elif kind == "labels":
            h5.create_dataset("images", data=np.zeros((2, 64, 64, 3), np.uint8))
            h5.create_dataset("labels", data=np.full((2, 6), 0.55))
        elif kind == "nan-labels":  # NaN is near no grid value, yet compares false with every distance
            labels = np.tile([values[0] for values in SHAPES3D_VALUES], (2, 1))
            labels[1, 2] = np.nan
            h5.create_dataset("images", data=np.zeros((2, 64, 64, 3), np.uint8))
            h5.create_dataset("labels", data=labels)
        elif kind == "no-rows":
            h5.create_dataset("images", data=np.zeros((0, 64, 64, 3), np.uint8))
            h5.create_dataset("labels", data=np.zeros((0, 6)))
    return path


def _bad_source(tmp_path, case):
    if case in ("key", "dtype", "shape", "labels", "nan-labels", "no-rows"):
        return ["--dataset", "shapes3d", "--source", str(_bad_h5(tmp_path, case))], "3dshapes.h5"
    if case == "missing":
        return ["--dataset", "shapes3d", "--source", str(tmp_path / "nowhere.h5")], "nowhere.h5"
    if case == "truncated-h5":
        path = truncate(write_shapes3d(tmp_path / "3dshapes.h5", np.arange(0, 480_000, 1_000)), 0.3)
        return ["--dataset", "shapes3d", "--source", str(path)], "3dshapes.h5"
    if case == "truncated-npz":
        path = truncate(write_mpi3d(tmp_path / "mpi3d_toy.npz", 1152), 0.5)
        return ["--dataset", "mpi3d-toy", "--source", str(path), "--factor-sizes", "2,2,2,3,3,4,4"], "mpi3d_toy.npz"
    if case == "corrupt-npz":
        path = tmp_path / "dsprites.npz"
        data = bytearray(write_dsprites(path).read_bytes())
        data[2000:2600] = b"\x00" * 600  # damage the deflated imgs stream
        path.write_bytes(bytes(data))
        return ["--dataset", "dsprites", "--source", str(path)], "dsprites.npz"
    if case == "flipped-npz":  # one bit of one image changed: only the member's CRC-32 can tell
        path = write_mpi3d(tmp_path / "mpi3d_toy.npz", 1152)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        return ["--dataset", "mpi3d-toy", "--source", str(path), "--factor-sizes", "2,2,2,3,3,4,4"], "mpi3d_toy.npz"
    if case == "npz-key":
        path = tmp_path / "mpi3d_toy.npz"
        np.savez(path, imgs=np.zeros((4, 64, 64, 3), np.uint8))
        return ["--dataset", "mpi3d-toy", "--source", str(path)], "mpi3d_toy.npz"
    if case == "row-count":
        path = write_mpi3d(tmp_path / "mpi3d_toy.npz", 100)
        return ["--dataset", "mpi3d-toy", "--source", str(path)], "mpi3d_toy.npz"
    if case == "subset-too-large":
        path = write_shapes3d(tmp_path / "3dshapes.h5", np.arange(10))
        return ["--dataset", "shapes3d", "--source", str(path), "--subset", "11"], "3dshapes.h5"
    raise AssertionError(case)


BAD_CASES = ["key", "dtype", "shape", "labels", "nan-labels", "no-rows", "missing", "truncated-h5", "truncated-npz",
             "corrupt-npz", "flipped-npz", "npz-key", "row-count", "subset-too-large"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(tmp_path, store_root, case):
    args, names = _bad_source(tmp_path, case)
    result = runner.invoke(app, ["prepare-data", *args, "--root", str(store_root)])
    assert result.exit_code == 2, result.output
    lines = without_progress(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert artifact_dirs(store_root) == [] and not (store_root / ".staging").exists()


def test_unwritable_root_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", "1,1,1,1,1,2",
                                 "--root", str(blocker / "store")])
    assert result.exit_code == 2 and "cannot write" in result.stderr and str(blocker) in result.stderr


def test_stdout_is_the_artifact_path(tmp_path, store_root):
    source = write_shapes3d(tmp_path / "3dshapes.h5", np.arange(0, 480_000, 20_000))
    result = runner.invoke(app, ["prepare-data", "--dataset", "shapes3d", "--source", str(source), "--root",
                                 str(store_root), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(store_root / "prepare-data" / "tiny" / "v1")]


# ---- cars3d and celeba through the stage and the CLI ---------------------------------------


def test_cars3d_from_the_archive(tmp_path, store_root):
    from test_cars3d import NAMES, colour_to_factors, good_members, write_archive

    archive = write_archive(tmp_path / "nips2015-analogy-data.tar.gz", good_members())
    artifact = prepare(store_root, dataset="cars3d", source=str(archive))
    with DatasetFile(artifact.file("data.h5")) as data:
        assert data.factor_names == ("elevation", "azimuth", "object") and data.factor_sizes == (4, 24, len(NAMES))
        assert data.is_full_grid
        for image, factors in zip(data.images[:], data.factors):
            assert colour_to_factors(image[48, 48]) == tuple(factors)


def test_celeba_attributes_and_split(tmp_path, store_root):
    from test_celeba import write_celeba

    names, values, split = write_celeba(tmp_path / "celeba", n=6)
    artifact = prepare(store_root, dataset="celeba", source=str(tmp_path / "celeba"), workers=1)
    with DatasetFile(artifact.file("data.h5")) as data:
        assert data.factors.shape == (6, 0) and len(data.attribute_names) == 40
        np.testing.assert_array_equal(data.attributes, values)
        np.testing.assert_array_equal(data.split, split)
    assert "attributes" in artifact.results["preview"][0]


def _celeba_case(tmp_path, case):
    from test_celeba import write_celeba

    root = tmp_path / "celeba"
    names, _, _ = write_celeba(root, n=6)
    if case == "corrupt-jpg":
        jpeg = root / "img_align_celeba" / names[2]
        jpeg.write_bytes(jpeg.read_bytes()[:200])
        return names[2]
    attributes = root / "list_attr_celeba.txt"
    lines = attributes.read_text().splitlines()
    lines[4] = lines[4] + " 1"  # one column too many on the third image's row
    attributes.write_text("\n".join(lines) + "\n")
    return "list_attr_celeba.txt"


@pytest.mark.parametrize("case", ["corrupt-jpg", "attribute-columns"])
def test_celeba_bad_input_exits_2(tmp_path, store_root, case):
    named = _celeba_case(tmp_path, case)
    result = runner.invoke(app, ["prepare-data", "--dataset", "celeba", "--source", str(tmp_path / "celeba"),
                                 "--workers", "1", "--root", str(store_root)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert artifact_dirs(store_root) == []


def test_cars3d_truncated_archive_exits_2(tmp_path, store_root):
    from test_cars3d import good_members, write_archive

    archive = truncate(write_archive(tmp_path / "nips2015-analogy-data.tar.gz", good_members()), 0.6)
    result = runner.invoke(app, ["prepare-data", "--dataset", "cars3d", "--source", str(archive), "--root",
                                 str(store_root)])
    assert result.exit_code == 2 and "nips2015-analogy-data.tar.gz" in result.stderr.strip().splitlines()[-1]
    assert len(result.stderr.strip().splitlines()) == 1 and artifact_dirs(store_root) == []
