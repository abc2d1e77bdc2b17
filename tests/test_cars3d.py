"""Cars3D reader on tiny files in the exact layout of nips2015-analogy-data.tar.gz."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from dydis.data import cars3d
from dydis.data.cars3d import MESH_SHAPE, Cars3DSource
from dydis.data.factors import FactorSpace
from dydis.errors import ConfigError, DataError

# list.txt order on purpose not sorted: the object index must follow list.txt.
NAMES = ["car_003_mesh", "car_001_mesh", "car_002_mesh"]
ARCHIVE = "nips2015-analogy-data.tar.gz"


def mesh(obj: int) -> np.ndarray:
    """``im`` (128, 128, 3, 24, 4) = (H, W, C, azimuth, elevation) of object ``obj``.

    Each view is one colour that encodes its (azimuth, elevation, object), with a white
    block in the top left (rows 0-31, columns 0-95) that a swap of H and W would move.
    """
    im = np.empty(MESH_SHAPE, np.uint8)
    im[:, :, 0] = (10 * np.arange(24) + 5)[:, None]  # R: azimuth, broadcast over elevation
    im[:, :, 1] = (60 * np.arange(4) + 10)[None, :]  # G: elevation
    im[:, :, 2] = 40 * obj + 20  # B: object
    im[:32, :96] = 255
    return im


def colour_to_factors(pixel: np.ndarray) -> tuple[int, int, int]:
    """(elevation, azimuth, object) encoded by a pixel far from the white block."""
    r, g, b = (int(v) for v in pixel)
    return (g - 10) // 60, (r - 5) // 10, (b - 20) // 40


def mat_bytes(variables: dict) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=True)
    return buf.getvalue()


def list_txt(names: list[str]) -> bytes:
    return "".join(f"{n}\n" for n in names).encode()


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_members(names: list[str] = NAMES) -> dict[str, bytes]:
    """Meshes first and list.txt last, with an unlisted bad .mat and another data set."""
    members = {"data/sprites/sprites_splits.mat": b"not cars"}
    for obj, name in enumerate(names):
        members[f"data/cars/{name}.mat"] = mat_bytes({"im": mesh(obj)})
    members["data/cars/car_999_mesh.mat"] = b"unlisted, never decoded into a row"
    members["data/cars/list.txt"] = list_txt(names)
    return members


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("cars") / ARCHIVE, good_members())


@pytest.fixture(scope="module")
def source(archive) -> Cars3DSource:
    return Cars3DSource(archive, workers=1)


def test_archive_layout_gives_the_factor_grid(source):
    assert source.factor_names == ("elevation", "azimuth", "object")
    assert source.factor_sizes == (4, 24, 3)
    assert source.n_rows == 4 * 24 * 3
    assert source.object_names == tuple(NAMES)
    assert source.attribute_names == ()


def test_every_row_has_the_factors_of_its_index_and_of_its_pixels(source):
    rows = np.arange(source.n_rows, dtype=np.int64)
    block = source.read(rows)
    assert block.images.dtype == np.uint8 and block.images.shape == (source.n_rows, 64, 64, 3)
    assert block.factors.dtype == np.int64 and block.factors.shape == (source.n_rows, 3)
    assert block.attributes is None and block.split is None
    space = FactorSpace(source.factor_names, source.factor_sizes)
    np.testing.assert_array_equal(block.factors, space.to_factors(rows))
    np.testing.assert_array_equal(space.to_rows(block.factors), rows)
    # object fastest: row = (elevation * 24 + azimuth) * 3 + object
    e, a, o = block.factors.T
    np.testing.assert_array_equal(rows, (e * 24 + a) * 3 + o)
    decoded = [colour_to_factors(img[48, 32]) for img in block.images]
    np.testing.assert_array_equal(np.array(decoded), block.factors)


def test_pixels_are_the_lanczos_resized_views(source):
    block = source.read(np.arange(source.n_rows, dtype=np.int64))
    meshes = [mesh(obj) for obj in range(3)]
    for image, (e, a, o) in zip(block.images, block.factors):
        view = Image.fromarray(np.ascontiguousarray(meshes[o][:, :, :, a, e]))
        expected = np.asarray(view.resize((64, 64), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(image, expected)
    # the white block stays top left (rows 0-15, columns 0-47 at 64x64)
    assert (block.images[:, 2, 40] == 255).all() and (block.images[:, 40, 2] != 255).all()


def test_lanczos_resize_equals_disentanglement_libs_thumbnail():
    view = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    thumb = Image.fromarray(view)
    thumb.thumbnail((64, 64), Image.Resampling.LANCZOS)
    resized = Image.fromarray(view).resize((64, 64), cars3d.RESAMPLE)
    np.testing.assert_array_equal(np.asarray(thumb), np.asarray(resized))


def test_rows_agree_with_disentanglement_libs_view_labels(source):
    """disentanglement_lib permutes ``im`` abcde->deabc, flattens to 96 views and labels view
    k with elevation k % 4, azimuth k // 4: rebuild that here, independently of the reader."""
    space = FactorSpace(source.factor_names, source.factor_sizes)
    for obj in range(3):
        views = np.einsum("abcde->deabc", mesh(obj)).reshape(96, 128, 128, 3)
        k = np.arange(96)
        labels = np.stack([k % 4, k // 4, np.full(96, obj)], axis=1)
        block = source.read(np.sort(space.to_rows(labels)))
        order = np.argsort(space.to_rows(labels))
        for image, view in zip(block.images, views[order]):
            expected = Image.fromarray(view).resize((64, 64), Image.Resampling.LANCZOS)
            np.testing.assert_array_equal(image, np.asarray(expected))


def test_blocks_of_increasing_rows_concatenate_to_the_whole(source):
    rows = np.arange(source.n_rows, dtype=np.int64)
    whole = source.read(rows)
    parts = [source.read(chunk) for chunk in np.array_split(rows, 5)]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    np.testing.assert_array_equal(np.concatenate([p.factors for p in parts]), whole.factors)
    picked = source.read(np.array([0, 7, 100, 287]))
    np.testing.assert_array_equal(picked.images, whole.images[[0, 7, 100, 287]])


def test_extracted_folder_and_its_parents_read_like_the_archive(source, tmp_path):
    root = write_folder(tmp_path, good_members())
    rows = np.arange(source.n_rows, dtype=np.int64)
    expected = source.read(rows)
    for path in (root / "data" / "cars", root):
        with Cars3DSource(path, workers=1) as folder:
            assert folder.factor_sizes == source.factor_sizes
            np.testing.assert_array_equal(folder.read(rows).images, expected.images)


def test_list_txt_first_and_dot_slash_names_read_the_same(source, tmp_path):
    members = good_members()
    members = {"./data/cars/list.txt": members.pop("data/cars/list.txt")} | {
        "./" + k: v for k, v in members.items()
    }
    with Cars3DSource(write_archive(tmp_path / ARCHIVE, members), workers=1) as other:
        rows = np.arange(source.n_rows, dtype=np.int64)
        np.testing.assert_array_equal(other.read(rows).images, source.read(rows).images)


def test_process_pool_gives_the_same_images(source, archive, monkeypatch):
    monkeypatch.setattr(cars3d, "_POOL_MIN_FILES", 1)
    pooled = Cars3DSource(archive, workers=2)
    rows = np.arange(source.n_rows, dtype=np.int64)
    np.testing.assert_array_equal(pooled.read(rows).images, source.read(rows).images)


def test_factor_sizes_argument_is_checked_against_list_txt(archive):
    assert Cars3DSource(archive, factor_sizes=(4, 24, 3), workers=1).n_rows == 288
    with pytest.raises(DataError, match="list.txt") as err:
        Cars3DSource(archive, factor_sizes=(4, 24, 183), workers=1)
    assert ARCHIVE in str(err.value)
    with pytest.raises(ConfigError):
        Cars3DSource(archive, factor_sizes=(24, 4, 3), workers=1)


# --- bad input: every case raises DataError naming the file ---------------------------------


def open_archive_with(tmp_path: Path, members: dict[str, bytes]) -> DataError:
    with pytest.raises(DataError) as err:
        Cars3DSource(write_archive(tmp_path / ARCHIVE, members), workers=1)
    assert ARCHIVE in str(err.value)
    assert err.value.path == str(tmp_path / ARCHIVE)
    return err.value


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file") as err:
        Cars3DSource(tmp_path / ARCHIVE)
    assert ARCHIVE in str(err.value)


def test_not_a_tar_archive(tmp_path):
    (tmp_path / ARCHIVE).write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not a readable tar") as err:
        Cars3DSource(tmp_path / ARCHIVE)
    assert ARCHIVE in str(err.value)


def test_truncated_archive(archive, tmp_path):
    data = archive.read_bytes()
    (tmp_path / ARCHIVE).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        Cars3DSource(tmp_path / ARCHIVE, workers=1)
    assert ARCHIVE in str(err.value)


def test_corrupt_archive(archive, tmp_path):
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    (tmp_path / ARCHIVE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        Cars3DSource(tmp_path / ARCHIVE, workers=1)
    assert ARCHIVE in str(err.value)


def test_archive_without_list_txt(tmp_path):
    members = good_members()
    del members["data/cars/list.txt"]
    assert "data/cars/list.txt" in str(open_archive_with(tmp_path, members))


def test_folder_without_list_txt(tmp_path):
    members = good_members()
    del members["data/cars/list.txt"]
    write_folder(tmp_path, members)
    with pytest.raises(DataError, match="list.txt is missing") as err:
        Cars3DSource(tmp_path, workers=1)
    assert err.value.path == str(tmp_path / "data" / "cars" / "list.txt")


def test_listed_mesh_missing_from_archive(tmp_path):
    members = good_members()
    del members["data/cars/car_001_mesh.mat"]
    assert "car_001_mesh.mat" in str(open_archive_with(tmp_path, members))


def test_listed_mesh_missing_from_folder(tmp_path):
    members = good_members()
    del members["data/cars/car_002_mesh.mat"]
    write_folder(tmp_path, members)
    with pytest.raises(DataError, match="missing") as err:
        Cars3DSource(tmp_path, workers=1)
    assert "car_002_mesh.mat" in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"images": np.zeros((2, 2), np.uint8)}, "no variable 'im'"),
        ({"im": np.zeros(MESH_SHAPE, np.uint16)}, "uint16"),
        ({"im": np.zeros((64, 64, 3, 24, 4), np.uint8)}, r"\(64, 64, 3, 24, 4\)"),
        (None, "cannot be read as a MATLAB"),
    ],
    ids=["no-im", "wrong-dtype", "wrong-shape", "unreadable"],
)
def test_bad_mesh_file(tmp_path, content, message):
    data = b"MATLAB? no, garbage" * 10 if content is None else mat_bytes(content)
    members = good_members() | {"data/cars/car_001_mesh.mat": data}
    error = open_archive_with(tmp_path, members)
    assert "car_001_mesh.mat" in str(error) and re.search(message, str(error))
    folder = write_folder(tmp_path / "extracted", members)
    with pytest.raises(DataError, match=message) as err:
        Cars3DSource(folder, workers=1)
    assert err.value.path == str(folder / "data" / "cars" / "car_001_mesh.mat")


def test_list_txt_naming_a_mesh_twice(tmp_path):
    members = good_members() | {"data/cars/list.txt": list_txt(NAMES + NAMES[:1])}
    assert "twice" in str(open_archive_with(tmp_path, members))
