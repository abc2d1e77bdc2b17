"""CelebA, read from its original download.

Liu et al., "Deep Learning Face Attributes in the Wild" (ICCV 2015). The download folder
holds ``img_align_celeba/`` (202,599 aligned 178x218 RGB JPEGs), ``list_attr_celeba.txt``
(line 1: the image count; line 2: the 40 attribute names; then one row an image,
``000001.jpg  -1  1 ...``, columns separated by any run of whitespace) and
``list_eval_partition.txt`` (``000001.jpg 0``: 0 train, 1 valid, 2 test). Rows follow the
attribute file. CelebA has no ground-truth factors, only the 40 binary attributes.

Crops, both resized to 64x64:

- ``diffae`` (default): the 128x128 box (25, 57, 153, 185) that D2C, Diff-AE and DisDiff use
  (Diff-AE's ``d2c_crop``: centre (x 89, y 121), half-size 64).
- ``center148``: the central 148x148 square, common in the VAE literature; its offsets are
  rounded like torchvision's ``CenterCrop`` so that the two agree.

Resize filter: PIL ``BILINEAR``. Diff-AE (``phizaz/diffae``, ``dataset.py``: ``CelebAlmdb`` and
``CelebD2CAttrDataset`` with ``d2c=True``) resizes the crop with
``torchvision.transforms.Resize(64)``, whose default interpolation is bilinear and which, on a
PIL image, is exactly PIL's ``resize(..., BILINEAR)`` (an antialiasing triangle filter when
downscaling). Using it makes our 64x64 images the ones the reference methods were trained and
scored (TAD, FID) on. LANCZOS would be a little sharper, and different from theirs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dydis.data.source import IMAGE_SHAPE, Block, Source
from dydis.errors import ConfigError, DataError

N_ATTRIBUTES = 40
CROPS = ("diffae", "center148")
DIFFAE_BOX = (25, 57, 153, 185)  # (left, upper, right, lower) of PIL's crop
CENTER_SIZE = 148
RESAMPLE = Image.Resampling.BILINEAR  # see the module docstring for why

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"

# Images a decoding task takes: enough that pickling a task is cheap next to decoding it
# (about 0.5 ms an image), few enough that every worker gets a share of a small block.
_MIN_CHUNK = 8
_MAX_CHUNK = 256


class CelebASource(Source):
    """CelebA images, cropped and resized to 64x64, with their 40 attributes and split.

    The attribute and partition files are parsed and checked, and the presence of every
    listed JPEG, when the source is opened; the JPEGs themselves are decoded when read, by a
    pool of processes (started on the first ``read`` that needs it, stopped by ``close``).
    The pool spawns its workers, so a script that opens this source must guard its entry
    point with ``if __name__ == "__main__":``.

    Parameters
    ----------
    path
        The folder holding ``img_align_celeba/``, ``list_attr_celeba.txt`` and
        ``list_eval_partition.txt``.
    crop
        ``"diffae"`` (the 128x128 box (25, 57, 153, 185), which needs images of at least
        153x185) or ``"center148"`` (the central 148x148 square, any size of at least 148).
    workers
        Decoding processes; ``None`` uses every core, ``1`` decodes in the calling process.
        The images do not depend on it.
    """

    def __init__(self, path: str | os.PathLike, crop: str = "diffae", workers: int | None = None):
        if crop not in CROPS:
            raise ConfigError(f"celeba crop must be one of {', '.join(CROPS)}, got {crop!r}")
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.crop = crop
        self.workers = workers

        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(
                f"no such folder; expected the CelebA folder holding {IMAGE_DIR}/, "
                f"{ATTRIBUTE_FILE} and {PARTITION_FILE}",
                self.path,
            )
        self._image_dir = self.path / IMAGE_DIR
        for required in (self._image_dir, self.path / ATTRIBUTE_FILE, self.path / PARTITION_FILE):
            if not required.exists():
                raise DataError("is missing from the CelebA folder", required)

        names, attribute_names, attributes = _read_attributes(self.path / ATTRIBUTE_FILE)
        self._split = _read_partition(self.path / PARTITION_FILE, names)
        _check_images_present(self._image_dir, names)
        self._names = names
        self._attributes = attributes
        self.n_rows = len(names)
        self.factor_names = ()
        self.factor_sizes = ()
        self.attribute_names = attribute_names
        self._pool: ProcessPoolExecutor | None = None

    @property
    def image_names(self) -> np.ndarray:
        """File names (str (n_rows,)) of the rows, e.g. ``000001.jpg``."""
        return self._names

    def read(self, rows: np.ndarray) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        return Block(
            images=self._decode(self._names[rows]),
            factors=np.zeros((len(rows), 0), np.int64),
            attributes=self._attributes[rows],
            split=self._split[rows],
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _decode(self, names: np.ndarray) -> np.ndarray:
        """uint8 (len(names), 64, 64, 3) images, in the order of ``names``."""
        size = min(max(math.ceil(len(names) / (2 * self.workers)), _MIN_CHUNK), _MAX_CHUNK)
        chunks = [names[i : i + size].tolist() for i in range(0, len(names), size)]
        folder = os.fspath(self._image_dir)
        if self.workers == 1 or len(chunks) < 2:
            results = [decode_images(folder, chunk, self.crop) for chunk in chunks]
        else:
            if self._pool is None:
                # why spawn: forking a process that already runs threads (torch, BLAS) can
                # deadlock.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            # map keeps the order of the chunks, whichever worker finishes first
            results = list(self._pool.map(decode_images, repeat(folder), chunks, repeat(self.crop)))
        for result in results:
            if isinstance(result, tuple):
                message, path = result
                raise DataError(message, path)
        if not results:
            return np.empty((0,) + IMAGE_SHAPE, np.uint8)
        return np.concatenate(results)


def crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int] | str:
    """PIL crop box (left, upper, right, lower) for an image of ``width`` x ``height``, or a
    message saying why the image is too small."""
    if crop == "diffae":
        if width < DIFFAE_BOX[2] or height < DIFFAE_BOX[3]:
            return (
                f"image is {width}x{height}; the diffae crop box {DIFFAE_BOX} needs at least "
                f"{DIFFAE_BOX[2]}x{DIFFAE_BOX[3]} (crop center148 takes other sizes)"
            )
        return DIFFAE_BOX
    if width < CENTER_SIZE or height < CENTER_SIZE:
        return f"image is {width}x{height}; the center148 crop needs at least 148x148"
    # int(round(.)) as torchvision's center_crop, so odd margins split the same way
    left = int(round((width - CENTER_SIZE) / 2.0))
    top = int(round((height - CENTER_SIZE) / 2.0))
    return left, top, left + CENTER_SIZE, top + CENTER_SIZE


def decode_images(folder: str, names: Sequence[str], crop: str) -> np.ndarray | tuple[str, str]:
    """Decode, crop and resize the JPEGs ``names`` of ``folder``.

    Returns
    -------
    uint8 (len(names), 64, 64, 3); or, at the first bad file, (message, path of the file): a
    plain tuple crosses the process boundary intact, and the caller raises ``DataError``.
    """
    out = np.empty((len(names),) + IMAGE_SHAPE, np.uint8)
    size = IMAGE_SHAPE[1], IMAGE_SHAPE[0]
    # One PIL call chain per image: the JPEG decoder and PIL's filters work image by image.
    for i, name in enumerate(names):
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as jpeg:
                box = crop_box(crop, *jpeg.size)  # from the header, before decoding
                if isinstance(box, str):
                    return box, path
                jpeg.load()
                rgb = jpeg if jpeg.mode == "RGB" else jpeg.convert("RGB")
                out[i] = np.asarray(rgb.crop(box).resize(size, RESAMPLE))
        except FileNotFoundError:
            return "image listed in list_attr_celeba.txt is missing", path
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            # PIL raises these for unknown formats and truncated or corrupt data
            return f"cannot decode the JPEG ({_one_line(exc)})", path
    return out


# --- the two text files ------------------------------------------------------------------


def _read_table(path: Path, skip: int, n_columns: int, what: str) -> np.ndarray:
    """Cells (str (n_rows, n_columns)) of a whitespace-separated table after ``skip`` lines.

    pandas' C tokenizer reads CelebA's 202,599 x 41 attribute table in under a second; a row
    with too many cells is its ParserError, one with too few comes back padded with "".
    """
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, skiprows=skip, dtype=str, engine="c", na_filter=False)
    except pd.errors.EmptyDataError:
        return np.zeros((0, n_columns), dtype=str)
    except pd.errors.ParserError as err:
        found = re.search(r"line (\d+), saw (\d+)", str(err))
        if found is None:
            raise DataError(f"unreadable table ({_one_line(err)})", path) from None
        raise DataError(f"line {found[1]}: expected {n_columns} columns ({what}), found {found[2]}", path) from None
    cells = frame.to_numpy(dtype=str)
    counts = (cells != "").sum(axis=1)
    bad = np.flatnonzero(counts != n_columns)
    if bad.size:
        raise DataError(f"line {skip + 1 + int(bad[0])}: expected {n_columns} columns ({what}), "
                        f"found {int(counts[bad[0]])}", path)
    return cells


def _header_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` lines of ``path``, decoded and stripped."""
    with open(path, "rb") as handle:
        raw = [handle.readline() for _ in range(n)]
    try:
        return [line.decode("utf-8").strip() for line in raw]
    except UnicodeDecodeError:
        raise DataError(f"the first {n} lines are not text", path) from None


def _read_attributes(path: Path) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Image names (str (n,)), the 40 attribute names and the values (int8 (n, 40), +-1)."""
    count_line, names_line = _header_lines(path, 2)
    try:
        count = int(count_line)
    except ValueError:
        raise DataError(f"line 1: expected the image count, found {count_line[:40]!r}", path) from None
    attribute_names = tuple(names_line.split())
    if len(attribute_names) != N_ATTRIBUTES:
        raise DataError(f"line 2: expected {N_ATTRIBUTES} attribute names, found {len(attribute_names)}", path)
    cells = _read_table(path, 2, 1 + N_ATTRIBUTES, f"an image name and {N_ATTRIBUTES} values")
    if len(cells) != count:
        raise DataError(f"line 1 says {count} images, but {len(cells)} rows follow", path)
    values = cells[:, 1:]
    minus, plus = values == "-1", (values == "1") | (values == "+1")
    bad = np.argwhere(~(minus | plus))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise DataError(f"line {3 + row}: {attribute_names[col]} is {str(values[row, col])!r}; expected -1 or 1", path)
    return cells[:, 0], attribute_names, np.where(minus, -1, 1).astype(np.int8)


def _read_partition(path: Path, names: np.ndarray) -> np.ndarray:
    """The split (int8 (n,): 0 train, 1 valid, 2 test) of each image of ``names``."""
    cells = _read_table(path, 0, 2, "an image name and its partition")
    bad = np.flatnonzero(~np.isin(cells[:, 1], ["0", "1", "2"]))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"line {1 + row}: partition is {str(cells[row, 1])!r}; expected 0 (train), 1 (valid) or 2 (test)",
                        path)
    split = pd.Series(cells[:, 1].astype(np.int8), index=cells[:, 0])
    split = split[~split.index.duplicated()]
    missing = ~np.isin(names, split.index)
    if missing.any():
        raise DataError(f"has no row for {names[int(np.flatnonzero(missing)[0])]}, which {ATTRIBUTE_FILE} lists",
                        path)
    return split.loc[names].to_numpy(np.int8)


def _check_images_present(folder: Path, names: np.ndarray) -> None:
    """Fail at open time, not hours into a run, when a listed JPEG is absent."""
    if not folder.is_dir():
        raise DataError("is not a folder; expected the folder of CelebA's JPEGs", folder)
    present = np.array(os.listdir(folder), dtype=str)
    missing = np.flatnonzero(~np.isin(names, present))
    if missing.size:
        raise DataError(
            f"image listed in {ATTRIBUTE_FILE} is missing "
            f"({missing.size} of {len(names)} missing)",
            folder / names[int(missing[0])],
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
