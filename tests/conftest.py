"""Tiny files in the exact on-disk formats of the real downloads, written by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from dydis.data import shapes3d


def shapes3d_image(factors: np.ndarray) -> np.ndarray:
    """A recognisable image per factor vector: every channel encodes some factors."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = factors[0] * 20 + factors[1]
    image[..., 1] = factors[2] * 20 + factors[3]
    image[..., 2] = factors[4] * 16 + factors[5]
    return image


def write_shapes3d(path: Path, rows: np.ndarray) -> Path:
    """A 3dshapes.h5 holding the given canonical rows: images uint8, labels float64 values."""
    sizes = shapes3d.FACTOR_SIZES
    factors = np.stack(np.unravel_index(rows, sizes), axis=1)
    labels = np.stack([shapes3d.FACTOR_VALUES[j][factors[:, j]] for j in range(6)], axis=1)
    # The published labels are float64 but were computed in float32; keep that rounding.
    labels = labels.astype(np.float32).astype(np.float64)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=np.stack([shapes3d_image(f) for f in factors]), dtype=np.uint8,
                          compression="gzip")  # the download is gzip-chunked (255 MB for 5.9 GB)
        h5.create_dataset("labels", data=labels, dtype=np.float64)
    return path


def row_image(rows: np.ndarray) -> np.ndarray:
    """Images (n, 64, 64, 3) whose pixels spell out the row index (for row-order datasets)."""
    rows = np.asarray(rows)
    images = np.zeros((len(rows), 64, 64, 3), np.uint8)
    images[:, :, :, 0] = (rows % 256)[:, None, None]
    images[:, :, :, 1] = ((rows // 256) % 256)[:, None, None]
    images[:, :, :, 2] = (rows // 65536)[:, None, None]
    return images


def decode_row_image(images: np.ndarray) -> np.ndarray:
    pixel = images[:, 0, 0].astype(np.int64)
    return pixel[:, 0] + 256 * pixel[:, 1] + 65536 * pixel[:, 2]


def write_mpi3d(path: Path, n_rows: int) -> Path:
    """An mpi3d_*.npz as `np.savez` writes it: one stored (uncompressed) member images.npy."""
    np.savez(path, images=row_image(np.arange(n_rows)))
    return path


def write_dsprites(path: Path, sizes=(1, 3, 6, 4, 2, 2), compressed: bool = True) -> Path:
    """A dsprites npz with the real keys: imgs, latents_classes, latents_values, metadata (py2-style pickle)."""
    classes = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1).astype(np.int64)
    imgs = np.zeros((len(classes), 64, 64), np.uint8)
    for i, c in enumerate(classes):  # a bar whose position/length encodes the factors
        imgs[i, c[4] * 2: c[4] * 2 + 1 + c[1], c[5] * 3: c[5] * 3 + 1 + c[2]] = 1
        imgs[i, 40 + c[3], 10] = 1
    values = classes.astype(np.float64)
    metadata = np.array({"date": "April 2017", "latents_names": ("color", "shape", "scale", "orientation",
                                                                  "posX", "posY"),
                         "latents_sizes": np.array([1, 3, 6, 40, 32, 32])}, dtype=object)
    save = np.savez_compressed if compressed else np.savez
    save(path, imgs=imgs, latents_classes=classes, latents_values=values, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of small tensors: they gain nothing from intra-op
    threads, and on a shared 2-core machine two OpenMP threads spin-wait on each other (seen:
    0.2 s fits taking 16 s). The previous setting is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dydis_warnings(caplog, monkeypatch):
    """caplog holding the warnings of dydis's loggers, also after a CLI test in the same process
    stopped them propagating to caplog's handler (the CLI's show_logs)."""
    import logging

    monkeypatch.setattr(logging.getLogger("dydis"), "propagate", True)
    caplog.set_level(logging.WARNING)
    return caplog


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def synthetic_dataset(root: Path, grid: str) -> np.ndarray:
    """Publish a synthetic dataset artifact (`prepare-data/synthetic`) under ``root``; its factors."""
    from typer.testing import CliRunner  # deferred: only the CLI tests load the whole app

    from dydis.cli.main import app
    from dydis.data.standard import DatasetFile

    made = CliRunner().invoke(app, ["prepare-data", "--dataset", "synthetic", "--grid", grid, "--root", str(root)])
    assert made.exit_code == 0, made.output
    with DatasetFile(made.stdout.strip() + "/data.h5") as data:
        return data.factors


def artifact_dirs(root: Path) -> list[Path]:
    """Every published version directory under a store root."""
    return sorted(p for p in root.glob("*/*/v*") if p.is_dir())


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path




class _RunsCode:
    """Unpickled, creates the file ``marker``: a stand-in for code hidden in a torch file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_code_payload(path: Path, marker: Path, **values) -> Path:
    """A torch file holding ``values`` and an object whose unpickling would create ``marker``."""
    import torch

    torch.save({**values, "payload": _RunsCode(marker)}, path)
    return path


def replace_artifact_file(artifact_dir: Path, name: str, write) -> None:
    """Rewrite file ``name`` of a published artifact with ``write(path)``, its manifest entry and
    the input hashes of the artifacts made from it to match, as anyone who can write the store
    could: every hash then vouches for it."""
    import hashlib
    import os

    import yaml

    path, manifest_path = artifact_dir / name, artifact_dir / "manifest.yaml"
    for target in (path, manifest_path):
        os.chmod(target, 0o644)  # published files are read-only
    write(path)
    manifest = yaml.safe_load(manifest_path.read_text())
    data = path.read_bytes()
    manifest["files"][name] = {**manifest["files"][name], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    # and the artifacts made from it, which record its manifest's hash (paths relative to the store)
    new_sha = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    root = artifact_dir.parents[2]
    ref = artifact_dir.relative_to(root).as_posix()
    for user_path in root.glob("*/*/v*/manifest.yaml"):
        user = yaml.safe_load(user_path.read_text())
        entries = [entry for entry in user.get("inputs") or [] if entry.get("path") == ref]
        if entries:
            for entry in entries:
                entry["manifest_sha256"] = new_sha
            os.chmod(user_path, 0o644)
            user_path.write_text(yaml.safe_dump(user, sort_keys=False))


# The plain progress lines of cli/common.py's PlainProgress (CliRunner's stderr is no terminal):
# start, between (rate or logged values, then eta), end.
PROGRESS_LINE = re.compile(r".* (start [0-9.e+/]+ \S+|[0-9.e+/]+ \S+ \S+ \S+/s eta \S+|\S+ [0-9.e+/]+ .* eta \S+"
                           r"|(done|stopped at) [0-9.e+/]+ \S+ in \d+:\d\d:\d\d)")


def without_progress(stderr: str) -> list[str]:
    """stderr's lines but the progress lines: an error stays one line below them."""
    return [line for line in stderr.strip().splitlines() if not PROGRESS_LINE.fullmatch(line)]


class InterruptAt:
    """A ``dydis.progress.Progress`` that sends the process a Ctrl-C when the task named ``task``
    has advanced ``at`` steps (other tasks report nothing)."""

    def __init__(self, task: str, at: int):
        from dydis.progress import SilentProgress

        self.name, self.at, self.done, self._silent = task, at, 0, SilentProgress()
        outer = self

        class Task:
            def advance(self, n=1):
                import signal

                outer.done += n
                if outer.done == outer.at:
                    signal.raise_signal(signal.SIGINT)

            def update(self, **kwargs):
                pass

            def log(self, values):
                pass

        self._task = Task()

    def task(self, description, total, unit="it"):
        from contextlib import nullcontext

        return nullcontext(self._task) if description == self.name else self._silent.task(description, total, unit)
