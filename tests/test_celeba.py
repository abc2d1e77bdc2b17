"""CelebA reader on a tiny folder in the exact layout of the original download."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dydis.data.celeba import CelebASource, crop_box
from dydis.errors import ConfigError, DataError

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses "
    "Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
RED, BLUE = (200, 30, 30), (30, 40, 210)


def face(seed: int, size: tuple[int, int] = (178, 218)) -> Image.Image:
    """A ``size`` (width, height) RGB image: red outside the diffae box, a colour that
    encodes ``seed`` inside it, and a white block at the box's top left corner."""
    width, height = size
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = RED
    pixels[57:185, 25:153] = (seed * 20 % 256, 100, 255 - seed * 20 % 256)
    pixels[57:89, 25:73] = 255
    return Image.fromarray(pixels)


def attribute_text(names, values, count=None, attribute_names=ATTRIBUTE_NAMES, newline="\n"):
    """list_attr_celeba.txt as the download writes it: right-aligned values, ragged spaces."""
    lines = [str(len(names) if count is None else count), " ".join(attribute_names) + " "]
    lines += [name + "".join(f" {v:2d}" for v in row) for name, row in zip(names, values)]
    return newline.join(lines) + newline


def write_celeba(root: Path, n: int = 6, newline: str = "\n", size=(178, 218)):
    """A CelebA folder of ``n`` JPEGs; the attribute file lists them in reverse order."""
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(n, 0, -1)]
    for seed, name in enumerate(names):
        # quality 95 without chroma subsampling keeps colours crisp at the box's edges
        face(seed, size).save(root / "img_align_celeba" / name, quality=95, subsampling=0)
    rng = np.random.default_rng(0)
    values = rng.choice(np.array([-1, 1]), size=(n, 40))
    split = np.arange(n) % 3
    (root / "list_attr_celeba.txt").write_text(attribute_text(names, values, newline=newline))
    # the partition file in its own (file-name) order, as in the download
    partition = sorted(zip(names, split))
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{name} {s}{newline}" for name, s in partition)
    )
    return names, values, split


@pytest.fixture
def folder(tmp_path):
    return tmp_path, *write_celeba(tmp_path)


def expected_image(path: Path, box) -> np.ndarray:
    with Image.open(path) as jpeg:
        return np.asarray(jpeg.convert("RGB").crop(box).resize((64, 64), Image.Resampling.BILINEAR))


def test_rows_follow_the_attribute_file(folder):
    root, names, values, split = folder
    with CelebASource(root, workers=1) as source:
        assert source.n_rows == len(names)
        assert source.factor_names == () and source.factor_sizes == ()
        assert source.attribute_names == tuple(ATTRIBUTE_NAMES)
        assert list(source.image_names) == names
        block = source.read(np.arange(len(names), dtype=np.int64))
    assert block.factors.dtype == np.int64 and block.factors.shape == (len(names), 0)
    assert block.attributes.dtype == np.int8 and block.split.dtype == np.int8
    np.testing.assert_array_equal(block.attributes, values)
    np.testing.assert_array_equal(block.split, split)
    assert block.images.dtype == np.uint8 and block.images.shape == (len(names), 64, 64, 3)
    # each row shows its own image: the encoded colour, well inside the box
    for seed, image in enumerate(block.images):
        colour = (seed * 20 % 256, 100, 255 - seed * 20 % 256)
        assert np.abs(image[40, 40].astype(int) - colour).max() <= 6


@pytest.mark.parametrize(
    "crop, box", [("diffae", (25, 57, 153, 185)), ("center148", (15, 35, 163, 183))]
)
def test_pixels_are_the_crop_resized_bilinear(folder, crop, box):
    root, names, _, _ = folder
    with CelebASource(root, crop=crop, workers=1) as source:
        images = source.read(np.arange(len(names))).images
    for name, image in zip(names, images):
        np.testing.assert_array_equal(image, expected_image(root / "img_align_celeba" / name, box))


def test_diffae_crop_is_the_d2c_box(folder):
    root, names, _, _ = folder
    with CelebASource(root, workers=1) as source:
        images = source.read(np.arange(len(names))).images.astype(int)
    # nothing red from outside the box, and the white block fills the top left quarter
    assert (np.abs(images - RED).max(axis=-1) > 60).all()
    assert (images[:, 1:15, 1:23] >= 240).all()
    assert (images[:, 18:, :] < 240).any(axis=-1).all()


def test_center148_crop_box_rounds_like_torchvision():
    assert crop_box("center148", 178, 218) == (15, 35, 163, 183)
    assert crop_box("center148", 179, 219) == (16, 36, 164, 184)  # round(15.5), round(35.5)
    assert crop_box("center148", 148, 148) == (0, 0, 148, 148)
    assert crop_box("diffae", 153, 185) == (25, 57, 153, 185)
    assert "153x185" in crop_box("diffae", 152, 300)
    assert "148x148" in crop_box("center148", 147, 300)


def test_other_image_sizes_fit_center148_but_not_diffae(tmp_path):
    names, _, _ = write_celeba(tmp_path, n=3, size=(160, 170))
    with CelebASource(tmp_path, crop="center148", workers=1) as source:
        images = source.read(np.arange(3)).images
    for name, image in zip(names, images):
        path = tmp_path / "img_align_celeba" / name
        np.testing.assert_array_equal(image, expected_image(path, (6, 11, 154, 159)))
    with CelebASource(tmp_path, workers=1) as source, pytest.raises(DataError) as err:
        source.read(np.arange(3))
    assert names[0] in str(err.value) and "160x170" in str(err.value)


def test_blocks_of_increasing_rows_concatenate_to_the_whole(folder):
    root, names, values, split = folder
    with CelebASource(root, workers=1) as source:
        whole = source.read(np.arange(len(names)))
        parts = [source.read(rows) for rows in np.array_split(np.arange(len(names)), 3)]
        picked = source.read(np.array([1, 4]))
        empty = source.read(np.zeros(0, np.int64))
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    np.testing.assert_array_equal(np.concatenate([p.attributes for p in parts]), values)
    np.testing.assert_array_equal(picked.images, whole.images[[1, 4]])
    np.testing.assert_array_equal(picked.split, split[[1, 4]])
    assert empty.images.shape == (0, 64, 64, 3) and empty.attributes.shape == (0, 40)


def test_process_pool_gives_the_same_images_and_stops_on_close(tmp_path):
    names, _, _ = write_celeba(tmp_path, n=40)
    rows = np.arange(40)
    with CelebASource(tmp_path, workers=1) as source:
        expected = source.read(rows).images
    source = CelebASource(tmp_path, workers=2)
    assert source._pool is None  # started on the first read that needs it
    np.testing.assert_array_equal(source.read(rows).images, expected)
    np.testing.assert_array_equal(source.read(rows[20:]).images, expected[20:])
    assert source._pool is not None
    source.close()
    assert source._pool is None


def test_windows_line_endings(tmp_path):
    names, values, split = write_celeba(tmp_path, newline="\r\n")
    with CelebASource(tmp_path, workers=1) as source:
        block = source.read(np.arange(len(names)))
        assert list(source.image_names) == names
    np.testing.assert_array_equal(block.attributes, values)
    np.testing.assert_array_equal(block.split, split)


def test_unknown_crop_is_a_config_error(folder):
    with pytest.raises(ConfigError, match="center148"):
        CelebASource(folder[0], crop="center128")


# --- bad input: every case raises DataError naming the file ---------------------------------


def raises_naming(root: Path, file: str, match: str, **kwargs) -> DataError:
    with pytest.raises(DataError, match=match) as err:
        CelebASource(root, workers=1, **kwargs)
    assert file in str(err.value)
    return err.value


def test_missing_folder(tmp_path):
    raises_naming(tmp_path / "celeba", "celeba", "no such folder")


@pytest.mark.parametrize(
    "missing", ["img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"]
)
def test_missing_part_of_the_download(folder, missing):
    root = folder[0]
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    raises_naming(root, missing, "missing")


def rewrite(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_attribute_row_with_a_wrong_column_count_names_its_line(folder):
    root, names, _, _ = folder
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines(keepends=True)
    lines[4] = lines[4].rstrip("\n") + "  1\n"  # the third image row: 41 values
    attr.write_text("".join(lines))
    error = raises_naming(root, "list_attr_celeba.txt", "line 5: expected 41 columns")
    assert "found 42" in str(error)


def test_attribute_value_other_than_plus_minus_one(folder):
    root, names, _, _ = folder
    rewrite(root / "list_attr_celeba.txt", f"{names[1]} ", f"{names[1]}  0 ")
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]  # keep 40 values on that row
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    raises_naming(root, "list_attr_celeba.txt", "line 4: 5_o_Clock_Shadow is '0'")


def test_count_line_that_does_not_match_the_rows(folder):
    root, names, values, _ = folder
    (root / "list_attr_celeba.txt").write_text(attribute_text(names, values, count=202599))
    raises_naming(root, "list_attr_celeba.txt", "line 1 says 202599 images, but 6 rows follow")
    (root / "list_attr_celeba.txt").write_text(attribute_text(names, values, count="six"))
    raises_naming(root, "list_attr_celeba.txt", "line 1: expected the image count")


def test_names_line_without_40_names(folder):
    root, names, values, _ = folder
    text = attribute_text(names, values, attribute_names=ATTRIBUTE_NAMES[:39])
    (root / "list_attr_celeba.txt").write_text(text)
    raises_naming(root, "list_attr_celeba.txt", "line 2: expected 40 attribute names, found 39")


def test_partition_missing_a_listed_image(folder):
    root, names, _, _ = folder
    partition = root / "list_eval_partition.txt"
    lines = [line for line in partition.read_text().splitlines() if not line.startswith(names[2])]
    partition.write_text("\n".join(lines) + "\n")
    error = raises_naming(root, "list_eval_partition.txt", "has no row for")
    assert names[2] in str(error)


@pytest.mark.parametrize("bad", ["3", "train", "-1"])
def test_partition_with_a_bad_value(folder, bad):
    root, names, _, _ = folder
    rewrite(root / "list_eval_partition.txt", "000002.jpg 1", f"000002.jpg {bad}")
    raises_naming(root, "list_eval_partition.txt", f"line 2: partition is '{bad}'")


def test_partition_row_with_a_wrong_column_count(folder):
    root, _, _, _ = folder
    rewrite(root / "list_eval_partition.txt", "000003.jpg 0", "000003.jpg 0 1")
    raises_naming(root, "list_eval_partition.txt", "line 3: expected 2 columns")


def test_missing_jpeg_is_found_when_opening(folder):
    root, names, _, _ = folder
    (root / "img_align_celeba" / names[3]).unlink()
    raises_naming(root, names[3], "missing")


def test_jpeg_removed_after_opening_is_found_when_reading(folder):
    root, names, _, _ = folder
    with CelebASource(root, workers=1) as source:
        (root / "img_align_celeba" / names[3]).unlink()
        source.read(np.arange(3))  # rows before it still read
        with pytest.raises(DataError, match="missing") as err:
            source.read(np.arange(3, 6))
    assert names[3] in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_bad_jpeg_is_found_when_reading_and_named(folder, damage):
    root, names, _, _ = folder
    jpeg = root / "img_align_celeba" / names[4]
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 500)
    with CelebASource(root, workers=1) as source:
        with pytest.raises(DataError, match="cannot decode the JPEG") as err:
            source.read(np.arange(len(names)))
    assert err.value.path == str(jpeg)


def test_bad_jpeg_is_named_from_a_pool_worker(tmp_path):
    names, _, _ = write_celeba(tmp_path, n=24)
    (tmp_path / "img_align_celeba" / names[17]).write_bytes(b"not a jpeg")
    with CelebASource(tmp_path, workers=2) as source:
        with pytest.raises(DataError, match="cannot decode the JPEG") as err:
            source.read(np.arange(24))
    assert err.value.path == str(tmp_path / "img_align_celeba" / names[17])
