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
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
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


class _Table(NamedTuple):
    """A whitespace-separated table, as byte offsets into its text (no string per cell)."""

    data: np.ndarray  # uint8 (n_bytes,) the text after the header lines
    starts: np.ndarray  # int64 (n_rows, n_columns) offset of each cell's first byte
    ends: np.ndarray  # int64 (n_rows, n_columns) offset one past each cell's last byte
    lines: np.ndarray  # int64 (n_rows,) 1-based line number of each row in the file


_IS_WHITESPACE = np.zeros(256, bool)  # lookup table over byte values: what str.split() splits on
_IS_WHITESPACE[list(b" \t\n\r\v\f")] = True


def _split_table(body: bytes, first_line: int, n_columns: int, what: str, path: Path) -> _Table:
    """Cut ``body`` (the file from line ``first_line`` on) into rows of ``n_columns`` cells.

    Blank lines are skipped; any other line with a different number of cells raises. Done
    with array operations over the bytes, since CelebA has 202,599 rows of 41 cells.
    """
    data = np.frombuffer(body, np.uint8)
    empty = np.zeros((0, n_columns), np.int64)
    if data.size == 0:
        return _Table(data, empty, empty, np.zeros(0, np.int64))
    blank = _IS_WHITESPACE[data]
    newline = data == ord("\n")
    # 0-based line of each byte ("\n" ends its line); an int32 sum is 10x faster than the
    # default int64 one (2**31 lines is far beyond any CelebA file)
    line = np.cumsum(newline, dtype=np.int32) - newline
    starts = np.flatnonzero(~blank & np.concatenate(([True], blank[:-1])))
    ends = np.flatnonzero(~blank & np.concatenate((blank[1:], [True]))) + 1
    cells_per_line = np.bincount(line[starts], minlength=int(line[-1]) + 1)
    bad = np.flatnonzero((cells_per_line != 0) & (cells_per_line != n_columns))
    if bad.size:
        found = int(cells_per_line[bad[0]])
        raise DataError(
            f"line {first_line + int(bad[0])}: expected {n_columns} columns ({what}), "
            f"found {found}",
            path,
        )
    rows = np.flatnonzero(cells_per_line)
    return _Table(
        data, starts.reshape(-1, n_columns), ends.reshape(-1, n_columns), first_line + rows
    )


def _cell_text(table: _Table, column: int, path: Path) -> np.ndarray:
    """The cells of ``column`` as a str array, gathered without a Python loop over rows."""
    starts, ends = table.starts[:, column], table.ends[:, column]
    if starts.size == 0:
        return np.zeros(0, dtype="U1")
    width = int((ends - starts).max())
    offsets = starts[:, None] + np.arange(width)
    chars = np.where(offsets < ends[:, None], table.data[np.minimum(offsets, ends[:, None] - 1)], 0)
    try:
        return np.ascontiguousarray(chars, np.uint8).view(f"S{width}").ravel().astype(str)
    except UnicodeDecodeError:
        row = int(np.flatnonzero((chars >= 128).any(axis=1))[0])
        raise DataError(
            f"line {table.lines[row]}: image name is not ASCII; expected names like 000001.jpg",
            path,
        ) from None


def _cell(table: _Table, row: int, column: int) -> str:
    start, end = table.starts[row, column], table.ends[row, column]
    return bytes(table.data[start:end]).decode("utf-8", errors="replace")


def _header_lines(path: Path, n: int) -> tuple[list[str], bytes]:
    """The first ``n`` lines of ``path`` (decoded) and the bytes after them."""
    raw = path.read_bytes()
    parts = raw.split(b"\n", n)
    if len(parts) <= n:
        parts.append(b"")
    try:
        header = [part.decode("utf-8").strip() for part in parts[:n]]
    except UnicodeDecodeError:
        raise DataError(f"the first {n} lines are not text", path) from None
    return header, parts[n]


def _read_attributes(path: Path) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Image names (str (n,)), the 40 attribute names and the values (int8 (n, 40), +-1)."""
    (count_line, names_line), body = _header_lines(path, 2)
    try:
        count = int(count_line)
    except ValueError:
        raise DataError(
            f"line 1: expected the image count, found {count_line[:40]!r}", path
        ) from None
    attribute_names = tuple(names_line.split())
    if len(attribute_names) != N_ATTRIBUTES:
        raise DataError(
            f"line 2: expected {N_ATTRIBUTES} attribute names, found {len(attribute_names)}",
            path,
        )
    table = _split_table(
        body, 3, 1 + N_ATTRIBUTES, f"an image name and {N_ATTRIBUTES} values", path
    )
    n_rows = len(table.lines)
    if n_rows != count:
        raise DataError(f"line 1 says {count} images, but {n_rows} rows follow", path)

    # a value is "1", "+1" or "-1"
    starts, ends = table.starts[:, 1:], table.ends[:, 1:]
    length, first, last = ends - starts, table.data[starts], table.data[ends - 1]
    minus = (length == 2) & (first == ord("-")) & (last == ord("1"))
    plus = ((length == 1) & (first == ord("1"))) | (
        (length == 2) & (first == ord("+")) & (last == ord("1"))
    )
    bad = np.argwhere(~(minus | plus))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise DataError(
            f"line {table.lines[row]}: {attribute_names[col]} is {_cell(table, row, col + 1)!r}; "
            "expected -1 or 1",
            path,
        )
    values = np.where(minus, -1, 1).astype(np.int8)
    return _cell_text(table, 0, path), attribute_names, values


def _read_partition(path: Path, names: np.ndarray) -> np.ndarray:
    """The split (int8 (n,): 0 train, 1 valid, 2 test) of each image of ``names``."""
    _, body = _header_lines(path, 0)
    table = _split_table(body, 1, 2, "an image name and its partition", path)
    cell_length = table.ends[:, 1] - table.starts[:, 1]
    digit = table.data[table.starts[:, 1]].astype(np.int64) - ord("0")
    bad = np.flatnonzero((cell_length != 1) | (digit < 0) | (digit > 2))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"line {table.lines[row]}: partition is {_cell(table, row, 1)!r}; "
            "expected 0 (train), 1 (valid) or 2 (test)",
            path,
        )
    listed = _cell_text(table, 0, path)
    if np.array_equal(listed, names):  # the download lists the images in the same order
        return digit.astype(np.int8)
    order = np.argsort(listed, kind="stable")
    pos = np.minimum(np.searchsorted(listed[order], names), max(len(listed) - 1, 0))
    found = listed[order][pos] == names if len(listed) else np.zeros(len(names), bool)
    if not found.all():
        missing = names[int(np.flatnonzero(~found)[0])]
        raise DataError(f"has no row for {missing}, which {ATTRIBUTE_FILE} lists", path)
    return digit[order[pos]].astype(np.int8)


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
