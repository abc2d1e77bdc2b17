"""Reading one array of a large ``.npz`` without loading it.

An ``.npz`` is a zip of ``.npy`` files. When the member is stored (``np.savez``), its bytes
sit at a fixed offset inside the zip and we memory-map them, which gives random access to
MPI3D's 12.7 GB at no memory cost. When it is deflated (``np.savez_compressed``, as dSprites
is), we decompress it as a stream, front to back, holding only one chunk at a time.

zipfile checks a member's CRC-32 only when it reads the member itself; for a memory-mapped
member we do it, on the rows as they are read front to back (zlib.crc32 runs at about
3 GB/s, far faster than the images are written), and a mismatch is an error as soon as the
last row is read, before anything is published. Reading a subset of the rows skips most of
the bytes, so there the CRC-32 cannot be checked.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dydis.errors import DataError

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_MAX_CHUNK_BYTES = 64 << 20


class NpyMember:
    """Lazy reader of ``<key>.npy`` inside the zip ``path`` (rows along the first axis)."""

    def __init__(self, zf: zipfile.ZipFile, path: Path, key: str):
        self.path, self.key = path, key
        try:
            self._info = zf.getinfo(f"{key}.npy")
        except KeyError:
            found = sorted(n.removesuffix(".npy") for n in zf.namelist())
            raise DataError(f"expected an array {key!r} in the npz, found keys {found}", path) from None
        self._zf = zf
        self._stream = None
        self._data_start = None  # set when the member is stored and can be memory-mapped
        try:
            if self._info.compress_type == zipfile.ZIP_STORED:
                self._open_memmap()
            else:
                self._open_stream()
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"array {key!r} is unreadable ({err}); the file is truncated or corrupt", path) from None

    def _read_header(self, handle) -> None:
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran, self.dtype = reader(handle)
        if fortran or self.dtype.hasobject:
            raise ValueError("expected a C-ordered array of plain numbers")
        self._row_items = int(np.prod(self.shape[1:], dtype=np.int64))

    def _open_memmap(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(self._info.header_offset)
            header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if header[0] != b"PK\x03\x04":
                raise ValueError("bad zip local header")
            start = self._info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]
            handle.seek(start)
            self._read_header(handle)
            data_start = handle.tell()
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if data_start + nbytes > self.path.stat().st_size:
            raise ValueError(f"file ends before the {nbytes} bytes of the array")
        if data_start - start + nbytes > self._info.file_size:
            raise ValueError(f"the zip member holds {self._info.file_size} bytes, fewer than its array's {nbytes}")
        self._data_start = data_start
        # CRC-32 of the member so far: the .npy header now, the rows as they are read in order
        with open(self.path, "rb") as handle:
            handle.seek(start)
            self._crc = zlib.crc32(handle.read(data_start - start))
        self._crc_rows = 0  # rows covered by self._crc
        self._tail = (data_start + nbytes, start + self._info.file_size)  # bytes after the array (none from numpy)

    def _open_stream(self) -> None:
        self._stream = self._zf.open(self._info)
        self._read_header(self._stream)
        self._position = 0  # next row the stream will deliver

    def _read_stream(self, count: int) -> np.ndarray:
        nbytes = count * self._row_items * self.dtype.itemsize
        buffer = bytearray(nbytes)
        view, filled = memoryview(buffer), 0
        while filled < nbytes:
            got = self._stream.readinto(view[filled:])
            if not got:
                raise EOFError(f"stream ended after {self._position} rows")
            filled += got
        self._position += count
        return np.frombuffer(buffer, self.dtype).reshape(count, *self.shape[1:])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (strictly increasing; for deflated members, also increasing across calls)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._data_start is not None:
            # A fresh map per call, dropped on return: the pages read do not accumulate in
            # this process's resident memory over a 12.7 GB file.
            mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self._data_start, shape=self.shape)
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                out = np.array(mapped[rows[0]: rows[-1] + 1])
                if rows[0] == self._crc_rows:
                    self._extend_crc(out)
            else:
                out = mapped[rows]
            del mapped
            return out
        if len(rows) and rows[0] < self._position:
            raise AssertionError("deflated npz members are read front to back")
        chunk_rows = max(1, _MAX_CHUNK_BYTES // max(1, self._row_items * self.dtype.itemsize))
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        done = 0
        try:
            while done < len(rows):
                first = int(rows[done])
                if first > self._position:  # skip unwanted rows chunk by chunk
                    self._read_stream(min(chunk_rows, first - self._position))
                    continue
                count = min(chunk_rows, int(rows[-1]) + 1 - first)
                piece = self._read_stream(count)
                wanted = rows[done:][rows[done:] < first + count]
                out[done: done + len(wanted)] = piece[wanted - first]
                done += len(wanted)
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"array {self.key!r} is unreadable ({err}); the file is truncated or corrupt",
                            self.path) from None
        return out

    def _extend_crc(self, block: np.ndarray) -> None:
        """Add the next rows to the CRC-32; once it covers the whole member, compare it with
        the zip's record."""
        self._crc = zlib.crc32(block, self._crc)
        self._crc_rows += len(block)
        if self._crc_rows < self.shape[0]:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._tail[0])
            crc = zlib.crc32(handle.read(self._tail[1] - self._tail[0]), self._crc)
        if crc != self._info.CRC:
            raise DataError(f"array {self.key!r} fails its CRC-32 check (the zip records {self._info.CRC:08x}, "
                            f"its bytes give {crc:08x}): the file is corrupt", self.path)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def open_npz(path: Path) -> zipfile.ZipFile:
    """Open an npz as a zip, with one-line errors for a missing or damaged file."""
    if not path.exists():
        raise DataError("source file not found", path)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"not a readable .npz (zip) file ({err}); truncated or corrupt?", path) from None
