"""Cars3D, read from its original download.

The data set comes from Reed et al., "Deep Visual Analogy-Making" (NeurIPS 2015), as
``nips2015-analogy-data.tar.gz``. Its ``data/cars`` folder holds ``list.txt`` (one mesh base
name a line, e.g. ``car_001_mesh``) and one MATLAB v5 file ``<name>.mat`` per line, whose
variable ``im`` is uint8 of shape (128, 128, 3, 24, 4).

Axis order of ``im``: (H, W, C, azimuth, elevation). disentanglement_lib
(``disentanglement_lib/data/ground_truth/cars3d.py``, ``_load_mesh``) permutes ``im`` with
``einsum("abcde->deabc")`` to (24, 4, 128, 128, 3), flattens the first two axes (view
``k = d * 4 + e``) and labels view ``k`` with elevation ``k % 4`` and azimuth ``k // 4``: so
axis 3 (size 24) is azimuth and axis 4 (size 4) is elevation, as their sizes also say.

Rows are in canonical order (``dydis.data.factors``): factors (elevation 4, azimuth 24,
object n) with object fastest, and objects in ``list.txt`` order. disentanglement_lib instead
numbers objects in directory-listing order, and the DisDiff / DyGA loaders repeat the data;
we do neither, so every row is one distinct image.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import posixpath
import tarfile
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from dydis.data.factors import FactorSpace
from dydis.data.source import IMAGE_SHAPE, Block, Source
from dydis.errors import ConfigError, DataError

FACTOR_NAMES = ("elevation", "azimuth", "object")
N_ELEVATIONS = 4
N_AZIMUTHS = 24
MESH_SHAPE = (128, 128, 3, N_AZIMUTHS, N_ELEVATIONS)  # H, W, C, azimuth, elevation
CARS_DIR = "data/cars"  # inside the archive, and inside the folder it extracts to

# why: LANCZOS 128 -> 64 is what disentanglement_lib's ``thumbnail((64, 64), ANTIALIAS)``
# does (thumbnail calls resize with the same filter; at a factor of 2 its reducing_gap
# pre-reduction does not kick in), so our images equal the reference loader's.
RESAMPLE = Image.Resampling.LANCZOS

# why: a process pool costs about a second to start (spawned workers import numpy, scipy and
# PIL); below this many meshes decoding in the calling process is faster.
_POOL_MIN_FILES = 8


class Cars3DSource(Source):
    """The 17,568 Cars3D images (for 183 meshes) with factors (elevation, azimuth, object).

    All meshes are decoded and resized when the source is opened, so a bad download fails
    before any artifact is started; the 64x64 images (about 216 MB) are then served from
    memory.

    Parameters
    ----------
    path
        ``nips2015-analogy-data.tar.gz`` (read in one pass, nothing is extracted to disk), its
        extracted ``data/cars`` folder, or a folder that contains ``data/cars`` (or ``cars``,
        the layout disentanglement_lib expects).
    factor_sizes
        Optional check: the expected factor sizes, ``(4, 24, n_objects)``.
    workers
        Processes that decode meshes; ``None`` uses every core and ``1`` decodes in the
        calling process. The result does not depend on it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        factor_sizes: Sequence[int] | None = None,
        *,
        workers: int | None = None,
    ):
        if factor_sizes is not None:
            factor_sizes = tuple(int(s) for s in factor_sizes)
            if len(factor_sizes) != 3 or factor_sizes[:2] != (N_ELEVATIONS, N_AZIMUTHS):
                raise ConfigError(
                    f"cars3d factor_sizes must be ({N_ELEVATIONS}, {N_AZIMUTHS}, n_objects), "
                    f"got {factor_sizes}"
                )
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(
                "no such file or folder; expected nips2015-analogy-data.tar.gz or its "
                "extracted data/cars folder",
                self.path,
            )
        decoder = _MeshDecoder(workers)
        try:
            if self.path.is_dir():
                list_path, names, meshes = _read_folder(self.path, decoder)
            else:
                list_path, names, meshes = _read_archive(self.path, decoder)
        finally:
            decoder.close()

        n_objects = len(names)
        if factor_sizes is not None and factor_sizes[2] != n_objects:
            raise DataError(
                f"factor_sizes {factor_sizes} expects {factor_sizes[2]} objects, "
                f"but list.txt lists {n_objects}",
                list_path,
            )
        self.object_names: tuple[str, ...] = tuple(names)
        self.factor_names = FACTOR_NAMES
        self.factor_sizes = (N_ELEVATIONS, N_AZIMUTHS, n_objects)
        self.attribute_names = ()
        self._space = FactorSpace(self.factor_names, self.factor_sizes)
        self.n_rows = self._space.n_rows

        # (elevation, azimuth, object, 64, 64, 3): flattening the first three axes gives the
        # canonical rows, object fastest.
        images = np.empty((N_ELEVATIONS, N_AZIMUTHS, n_objects) + IMAGE_SHAPE, np.uint8)
        for obj, name in enumerate(names):
            images[:, :, obj] = meshes.pop(name)  # pop: never hold two copies of the data
        self._images = images.reshape((self.n_rows,) + IMAGE_SHAPE)

    def read(self, rows: np.ndarray) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        return Block(images=self._images[rows], factors=self._space.to_factors(rows))


def decode_mesh(payload: bytes | str) -> np.ndarray | str:
    """Decode one mesh file into its 96 views at 64x64.

    Parameters
    ----------
    payload
        The bytes of a ``.mat`` file, or the path of one.

    Returns
    -------
    uint8 (4, 24, 64, 64, 3) = (elevation, azimuth, H, W, C); or, for a bad file, a message
    saying what was expected and what was found (a string, so that it crosses the process
    boundary intact and the caller can raise ``DataError`` with the file name).
    """
    source = io.BytesIO(payload) if isinstance(payload, bytes) else payload
    try:
        content = scipy.io.loadmat(source, variable_names=["im"])
    except NotImplementedError:  # scipy's answer to MATLAB v7.3, which is HDF5 inside
        return "is a MATLAB v7.3 (HDF5) file; expected a MATLAB v5 .mat file"
    except Exception as exc:  # scipy raises many types (ValueError, MatReadError, ...)
        return f"cannot be read as a MATLAB v5 .mat file ({_one_line(exc)})"
    im = content.get("im")
    if im is None:
        return "has no variable 'im'; expected im, uint8 (128, 128, 3, 24, 4)"
    if im.dtype != np.uint8 or im.shape != MESH_SHAPE:
        return (
            f"variable 'im' is {im.dtype} {im.shape}; expected uint8 {MESH_SHAPE} "
            "(H, W, C, azimuth, elevation)"
        )
    views = np.ascontiguousarray(im.transpose(4, 3, 0, 1, 2))  # (elevation, azimuth, H, W, C)
    out = np.empty((N_ELEVATIONS, N_AZIMUTHS) + IMAGE_SHAPE, np.uint8)
    size = IMAGE_SHAPE[1], IMAGE_SHAPE[0]
    # One PIL call per view: no array library reproduces PIL's LANCZOS bit for bit.
    for e in range(N_ELEVATIONS):
        for a in range(N_AZIMUTHS):
            out[e, a] = np.asarray(Image.fromarray(views[e, a]).resize(size, RESAMPLE))
    return out


class _MeshDecoder:
    """Decodes meshes in the calling process, or in a process pool once there are many.

    Results are keyed by mesh name, so they do not depend on which process finished first.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.results: dict[str, np.ndarray | str] = {}
        self._pending: dict[str, Future] = {}
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, name: str, payload: bytes | str) -> None:
        n_seen = len(self.results) + len(self._pending)
        if self._pool is None and self.workers > 1 and n_seen >= _POOL_MIN_FILES:
            # why spawn: forking a process that already runs threads (torch, BLAS) can deadlock.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        if self._pool is None:
            self.results[name] = decode_mesh(payload)
            return
        self._pending[name] = self._pool.submit(decode_mesh, payload)
        # why: bound the archive bytes waiting in the queue (4.7 MB a mesh) while streaming.
        while len(self._pending) > 2 * self.workers:
            oldest = next(iter(self._pending))
            self.results[oldest] = self._pending.pop(oldest).result()

    def collect(self) -> dict[str, np.ndarray | str]:
        for name, future in self._pending.items():
            self.results[name] = future.result()
        self._pending.clear()
        return self.results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _parse_list(text: bytes, where: str, error_path: Path) -> list[str]:
    """Mesh base names of ``list.txt``, in order."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not a text file ({exc})", error_path) from None
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        name = name.removesuffix(".mat")
        if name in first_line:
            raise DataError(
                f"{where} lists {name} twice (lines {first_line[name]} and {number})", error_path
            )
        first_line[name] = number
        names.append(name)
    if not names:
        raise DataError(f"{where} lists no meshes; expected one mesh name a line", error_path)
    return names


def _check_meshes(names: list[str], meshes: dict[str, np.ndarray | str], locate) -> None:
    """Raise for the first listed mesh, in list order, that is missing or bad.

    ``locate(name)`` gives the (description, path) that the error names.
    """
    for name in names:
        result = meshes.get(name)
        if result is None:
            what, path = locate(name)
            raise DataError(f"{what} is listed in list.txt but missing", path)
        if isinstance(result, str):
            what, path = locate(name)
            raise DataError(f"{what} {result}", path)


def _read_folder(root: Path, decoder: _MeshDecoder):
    """Decode the meshes of an extracted ``data/cars`` folder (or a folder above it)."""
    candidates = [root, root / CARS_DIR, root / "cars"]
    cars = next((d for d in candidates if (d / "list.txt").is_file()), None)
    if cars is None:
        found = next((d for d in candidates if any(d.glob("*.mat"))), root / CARS_DIR)
        raise DataError(
            "list.txt is missing; expected the extracted data/cars folder of "
            "nips2015-analogy-data.tar.gz (list.txt and one <name>.mat a line)",
            found / "list.txt",
        )
    list_path = cars / "list.txt"
    names = _parse_list(list_path.read_bytes(), "list.txt", list_path)
    for name in names:
        if (cars / f"{name}.mat").is_file():  # _check_meshes reports the missing ones
            decoder.submit(name, os.fspath(cars / f"{name}.mat"))
    meshes = decoder.collect()
    _check_meshes(names, meshes, lambda name: (f"{name}.mat", cars / f"{name}.mat"))
    return list_path, names, meshes


# Errors that a truncated or corrupt archive raises while it is read (zlib.error and
# gzip.BadGzipFile are not tarfile errors).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _read_archive(archive: Path, decoder: _MeshDecoder):
    """Decode the meshes of ``data/cars`` in the archive, reading it once from start to end."""
    try:
        tar = tarfile.open(archive, "r:*")
    except _ARCHIVE_ERRORS as exc:
        if isinstance(exc, tarfile.ReadError):  # its text lists every method tried, one a line
            exc = "no gzip, bzip2, xz or tar header"
        raise DataError(
            f"not a readable tar or tar.gz archive ({_one_line(exc)}); expected "
            "nips2015-analogy-data.tar.gz or its extracted data/cars folder",
            archive,
        ) from None
    list_member = f"{CARS_DIR}/list.txt"
    names: list[str] | None = None
    listed: set[str] = set()
    submitted: set[str] = set()
    with tar:
        try:
            # Members are read in archive order: gzip cannot seek backwards without
            # decompressing from the start again.
            for member in tar:
                parent, base = posixpath.split(posixpath.normpath(member.name))
                in_cars = parent == CARS_DIR or parent.endswith("/" + CARS_DIR)
                if not (member.isfile() and in_cars):
                    continue
                if base == "list.txt":
                    names = _parse_list(_read_member(tar, member), list_member, archive)
                    listed = set(names)
                elif base.endswith(".mat"):
                    name = base.removesuffix(".mat")
                    if names is not None and name not in listed:
                        continue
                    decoder.submit(name, _read_member(tar, member))
                    submitted.add(name)
                if names is not None and submitted >= listed:
                    break  # what follows (other data sets of the archive) is not needed
            else:
                # Something is missing. tarfile ends its iteration silently at a damaged
                # header, so read the stream to its end: gzip then checks its CRC.
                while tar.fileobj.read(1 << 20):
                    pass
        except _ARCHIVE_ERRORS as exc:
            message = f"archive is truncated or corrupt ({_one_line(exc)})"
            raise DataError(message, archive) from None
    if names is None:
        raise DataError(
            f"archive has no {list_member}; expected nips2015-analogy-data.tar.gz", archive
        )
    meshes = decoder.collect()
    _check_meshes(names, meshes, lambda name: (f"member {CARS_DIR}/{name}.mat", archive))
    return archive, names, meshes


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # member.isfile() was checked
    data = f.read()
    if len(data) != member.size:
        raise EOFError(f"{member.name} ends after {len(data)} of {member.size} bytes")
    return data


def _one_line(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
