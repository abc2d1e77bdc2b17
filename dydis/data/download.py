"""The original downloads: where each dataset's file is served, and a resumable, verified fetch.

`dydis download NAME` puts a dataset's file into one folder, the download folder (``--dest``,
else ``$DYDIS_DATA``, else ``./downloads``, the folder workflow.yaml's ``data_dir`` names too),
and `prepare-data` looks there when it is given no ``--source``.

A file is fetched into ``<name>.part``; a later run continues that file with an HTTP Range
request, and starts over when the server ignores the range (it answers 200 with the whole
file). The file takes its own name only once its digest matches the one recorded below, so a
file under its own name is always the verified original. Every file has a recorded digest:
an entry without one would put an unverified file where prepare-data trusts it, so there is
none (and no option to skip the check).

Where each digest comes from, so that a reader can check it (a digest covers the whole file
at exactly the URL registered below; md5 guards against a damaged download, not against a
forged one):

- shapes3d: sha256 and size from tensorflow/datasets, ``tensorflow_datasets/url_checksums/
  shapes3d.txt`` (the line for this URL). The md5 nmichlo/disent records for the same URL
  (``disent/dataset/data/_groundtruth__shapes3d.py``, ``uri_hash["full"]``
  099a2078d58cec4daad0702c55d06868) describes the same file.
- mpi3d-toy, mpi3d-realistic, mpi3d-real: md5 from nmichlo/disent,
  ``disent/dataset/data/_groundtruth__mpi3d.py``, ``Mpi3dData.MPI3D_DATASETS[...]``,
  ``uri_hash["full"]``: disent's "full" mode hashes every byte of the file
  (``disent/util/inout/hashing.py``); its "fast" digests hash only three 16 KiB chunks and the
  size, and are not used here.
- cars3d: md5 from nmichlo/disent, ``disent/dataset/data/_groundtruth__cars3d.py``,
  ``Cars3dData.datafile``, ``uri_hash["full"]`` (the archive itself, not disent's converted
  ``cars3d.npz``, whose digests are its ``file_hash``).
- dsprites: md5 from ganmodokix/vaetc, ``vaetc/data/dsprites.py``, ``_check_integrity``, for
  the npz at this URL (disent and tensorflow/datasets fetch the ``.hdf5`` variant instead,
  another file). deepmind/dsprites-dataset has committed the npz once (5bf8275, blob
  d98996d3), so ``master`` still serves the file the digest was taken of.
- celeba has no entry: its files are handed out only after its agreement is accepted by hand
  (``CELEBA_HOWTO``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from dydis.errors import DataError
from dydis.progress import Progress, SilentProgress

DATA_ENV = "DYDIS_DATA"
DEFAULT_FOLDER = Path("downloads")
CHUNK = 1 << 20
MB = 1e6  # progress counts megabytes: byte counts are unreadable as plain log lines
TIMEOUT = 60  # seconds without a byte before the transfer counts as broken off

_MPI3D = "https://storage.googleapis.com/disentanglement_dataset/Final_Dataset"


@dataclass(frozen=True)
class RemoteFile:
    """One dataset's original file as its publisher serves it."""

    name: str  # its name in the download folder: the name prepare-data and the README use
    url: str
    algorithm: Literal["sha256", "md5"]
    digest: str  # hex digest of the whole file; its source is in the module docstring
    size: int | None = None  # bytes, where a source records it


DOWNLOADS: dict[str, RemoteFile] = {
    "shapes3d": RemoteFile("3dshapes.h5", "https://storage.googleapis.com/3d-shapes/3dshapes.h5", "sha256",
                           "0a0f6ed98baff276a50f3a081a7434d788da63cb135a98189b2a5b5769be1785", 267_573_662),
    "mpi3d-toy": RemoteFile("mpi3d_toy.npz", f"{_MPI3D}/mpi3d_toy.npz", "md5", "55889cb7c7dfc655d6e0277beee88868"),
    "mpi3d-realistic": RemoteFile("mpi3d_realistic.npz", f"{_MPI3D}/mpi3d_realistic.npz", "md5",
                                  "59a6225b88b635365f70c91b3e52f70f"),
    "mpi3d-real": RemoteFile("mpi3d_real.npz", f"{_MPI3D}/mpi3d_real.npz", "md5", "0f33f609918fb5c97996692f91129802"),
    "cars3d": RemoteFile("nips2015-analogy-data.tar.gz", "http://www.scottreed.info/files/nips2015-analogy-data.tar.gz",
                         "md5", "4e866a7919c1beedf53964e6f7a23686"),
    "dsprites": RemoteFile("dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                           "https://github.com/deepmind/dsprites-dataset/blob/master/"
                           "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz?raw=true",
                           "md5", "7da33b31b13a06f4b04a70402ce90c2e"),
}

CELEBA_FOLDER = "celeba"
CELEBA_HOWTO = (
    "celeba is not downloaded automatically: its agreement (non-commercial research use only) is accepted by "
    "hand at https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html; get Img/img_align_celeba.zip, "
    "Anno/list_attr_celeba.txt and Eval/list_eval_partition.txt from its download links and unpack them into "
    "{folder} (img_align_celeba/*.jpg and the two .txt files), where prepare-data --dataset celeba finds them")


class Fetched(NamedTuple):
    path: Path
    downloaded: bool  # False: the verified file was already there


def download_folder(dest: str | os.PathLike | None = None) -> Path:
    """The download folder: ``dest``, else ``$DYDIS_DATA``, else ``./downloads``."""
    return Path(dest or os.environ.get(DATA_ENV) or DEFAULT_FOLDER)


def default_source(dataset: str, dest: str | os.PathLike | None = None) -> Path:
    """Where `dydis download` puts ``dataset``'s original download (for CelebA, the folder its
    files are to be unpacked into): prepare-data's source when none is given."""
    folder = download_folder(dest)
    return folder / (CELEBA_FOLDER if dataset == "celeba" else DOWNLOADS[dataset].name)


def download(dataset: str, dest: str | os.PathLike | None = None, progress: Progress | None = None) -> Fetched:
    """Fetch ``dataset``'s original file into the download folder and verify it.

    A verified file already in place is kept without any request; one that fails its digest
    is left alone and refused (it may be a file the user put there). A download that breaks
    off keeps its ``.part`` for the next run to continue; one whose digest does not match is
    deleted, so that the next run starts over rather than continue damaged bytes.
    """
    progress = progress or SilentProgress()
    if dataset == "celeba":
        raise DataError(CELEBA_HOWTO.format(folder=default_source(dataset, dest)))
    remote = DOWNLOADS[dataset]
    path = download_folder(dest) / remote.name
    if path.exists():
        found = file_digest(path, remote.algorithm, progress)
        if found != remote.digest:
            raise DataError(f"{remote.algorithm} expected {remote.digest}, found {found}: not the original "
                            "download; move it away to download it again", path)
        return Fetched(path, downloaded=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    _transfer(remote, part, progress)
    found = file_digest(part, remote.algorithm, progress)
    if found != remote.digest:
        part.unlink()
        raise DataError(f"{remote.algorithm} expected {remote.digest}, found {found}: the download is damaged "
                        "and deleted; run the command again to download it anew", path)
    os.replace(part, path)
    return Fetched(path, downloaded=True)


def file_digest(path: Path, algorithm: str, progress: Progress | None = None) -> str:
    """The hex digest of the whole file (hashlib's ``algorithm``)."""
    progress = progress or SilentProgress()
    digest = hashlib.new(algorithm)
    with path.open("rb") as file, progress.task(f"{path.name}: verifying", total=path.stat().st_size / MB,
                                                unit="MB") as task:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            task.advance(len(chunk) / MB)
    return digest.hexdigest()


def _transfer(remote: RemoteFile, part: Path, progress: Progress) -> None:
    """Fill ``part`` with the bytes at ``remote.url``, continuing what an earlier run left there."""
    offset = part.stat().st_size if part.exists() else 0
    if offset and offset == remote.size:
        return  # complete: the last run stopped before its check
    response = _request(remote.url, offset)
    if response is None:  # 416: the range starts past the end, so the .part is not a prefix
        offset, response = 0, _request(remote.url, 0)
    with response:
        if response.status != 206:  # the server ignored the range: the body is the whole file
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else remote.size
        done = offset
        with part.open("r+b" if offset else "wb") as out, progress.task(
                f"{remote.name}: downloading", total=total / MB if total else None, unit="MB") as task:
            out.seek(offset)
            task.advance(offset / MB)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    task.advance(len(chunk) / MB)
            except (OSError, http.client.HTTPException) as err:
                raise DataError(f"download of {remote.url} broke off after {done:,} bytes ({err}); "
                                "run the command again to continue it") from None
    if total is not None and done != total:
        raise DataError(f"download of {remote.url} broke off after {done:,} of {total:,} bytes; "
                        "run the command again to continue it")


def _request(url: str, offset: int):
    """The open response for ``url`` from byte ``offset`` on; None when the server says that
    range is not satisfiable (HTTP 416)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return None
        raise DataError(f"could not reach {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise DataError(f"could not reach {url}: {getattr(err, 'reason', err)}") from None
