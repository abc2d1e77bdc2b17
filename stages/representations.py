"""What the stages that read ldm and vqgan artifacts share: ldm artifacts -> the representation
of every dataset row (computed once per model, stored as an .npz), reading such files back, and
a VQ-GAN's latent cache (train-ldm trains on it, eval-metrics' conditioning probes with it)."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from dydis.artifacts import Artifact, ArtifactStore
from dydis.data.standard import DatasetFile
from dydis.distributed import pick_device
from dydis.errors import ArtifactError, DataError
from dydis.metrics import check_values
from dydis.models.config import UNetConfig
from dydis.models.vqgan import VQGAN
from dydis.progress import Progress
from dydis.training import ldm
from dydis.viz.sampler import Sampler

log = logging.getLogger("dydis.representations")


def load_latents(vqgan: Artifact, n_rows: int, unet: UNetConfig,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The cached latents (n, c, h, w) float32 already multiplied by the scale factor, and the
    factor; only ``rows`` (increasing) when given. The cache must hold ``n_rows`` latents of the
    U-Net's input shape."""
    path = vqgan.file("latents.h5")
    try:
        with h5py.File(path, "r") as h5:
            latents, scale = h5["latents"], float(h5.attrs["scale_factor"])
            expected = (n_rows, unet.in_channels, unet.image_size, unet.image_size)
            if latents.shape != expected:
                raise DataError(f"latents: expected shape {expected} (dataset rows x the U-Net's input), found "
                                f"{latents.shape}", path)
            scaled = (latents[()] if rows is None else latents[rows]).astype(np.float32) * np.float32(scale)
    except (OSError, KeyError) as err:
        raise DataError(f"not a readable latent cache with 'latents' and a scale_factor ({err})", path) from None
    return scaled, scale


def sampler_for(store: ArtifactStore, model_artifact: Artifact, device, *, steps: int, batch_size: int) -> Sampler:
    """An ldm artifact's model (EMA U-Net) and the VQ-GAN it was trained with, on ``device``,
    ready to turn units into images (eta 0)."""
    trained = ldm.load_model(model_artifact.file("model.pt"))
    vqgan = VQGAN.from_file(store.input_of(model_artifact, "vqgan", "vqgan").file("model.pt"))
    return Sampler(trained.model.to(device), vqgan.to(device), trained.scale_factor, steps=steps,
                   batch_size=batch_size)


def resolve_models(store: ArtifactStore, models: tuple[str, ...], data_ref: str) -> tuple[Artifact, list[Artifact]]:
    """The ldm artifacts and the dataset they were trained on (which ``data_ref`` must match, if given)."""
    artifacts = [store.load(ref, kind="ldm") for ref in models]
    trained_on = [store.input_of(a, "data", "dataset") for a in artifacts]
    data = store.load(data_ref, kind="dataset") if data_ref else trained_on[0]
    for model, used in zip(artifacts, trained_on):
        if used.manifest_sha256() != data.manifest_sha256():
            raise ArtifactError(f"this model was trained on {used.ref}, not on {data.ref}; evaluate models of one "
                                "dataset together", model.path)
    return data, artifacts


def model_units(model_artifact: Artifact, data: DatasetFile, *, gpus: int, batch_size: int,
                progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """An ldm artifact's representation of every dataset row, in row order: the raw units
    (n, N, D) float32 and their pre-MLP scalars (n, N) float32."""
    model = ldm.load_model(model_artifact.file("model.pt")).model
    device = pick_device(gpus)
    model.to(device)
    with progress.task(f"representation of {model_artifact.ref}", total=len(data), unit="img") as task:
        return ldm.represent(model, lambda part: data.images[part], len(data), device, batch_size,
                             on_rows=task.advance)


def compact_dtype(units: np.ndarray, chunk_rows: int = 16_384) -> np.dtype:
    """float16 when it holds ``units`` (n, ...) to float16's own precision, else float32.

    Precisely: when every value of every feature (column) rounds to float16 within 2^-11 (half
    float16's relative step) of that feature's largest magnitude. Values beyond float16's range
    (65504) or not finite fail this, and so does a feature whose values all lie below float16's
    smallest normal number (6.1e-5), where its relative precision would be lost; one such feature
    keeps the whole array float32. Checked a chunk of rows at a time, so that the check needs
    memory for one chunk's float16 copy, not the whole array's.
    """
    error = np.zeros(units.shape[1:], np.float32)
    scale = np.zeros(units.shape[1:], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow's inf, or NaN, fails the test below
        for start in range(0, len(units), chunk_rows):
            part = np.asarray(units[start:start + chunk_rows], np.float32)
            error = np.maximum(error, np.abs(part - part.astype(np.float16)).max(axis=0))  # NaN stays NaN
            scale = np.maximum(scale, np.abs(part).max(axis=0))
        fits = bool(np.all(error <= scale * 2.0 ** -11))
    return np.dtype(np.float16 if fits else np.float32)


def save_reps(path: Path, units: np.ndarray, scalars: np.ndarray) -> str:
    """Write a model's reps .npz: ``codes`` the units (n, N, D) as ``compact_dtype`` chooses
    (half the bytes in float16: 0.61 GB instead of 1.23 GB for Shapes3D's 480,000 rows of
    20 x 32), ``scalars`` (n, N) float32, exact, since ``--reduce scalar`` scores them as they
    are and they are 1/D of the size. Returns the dtype of the stored codes."""
    dtype = compact_dtype(units)
    np.savez(path, codes=units.astype(dtype, copy=False), scalars=np.asarray(scalars, np.float32))
    return dtype.name


def load_codes(path: str | Path, n_rows: int, reduce: str = "pca") -> np.ndarray:
    """The representation in a reps .npz: ``codes`` (n_rows, n_codes) or (n_rows, N, D), finite;
    with ``reduce="scalar"``, its ``scalars`` (n_rows, N) when the file has them (model reps do)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("representation file not found", path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"expected an .npz archive (np.savez) holding an array 'codes', found a bare .npy "
                            f"array {loaded.dtype} {loaded.shape}", path)
        with loaded as npz:
            if "codes" not in npz:
                raise DataError(f"expected an array 'codes' in the npz, found keys {sorted(npz.files)}", path)
            codes = npz["scalars"] if reduce == "scalar" and "scalars" in npz else npz["codes"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"not a readable .npz file ({err.__class__.__name__})", path) from None
    if codes.dtype == np.float16:
        log.warning("%s: the codes are float16, as eval-metrics stores a model's units: their scores can differ "
                    "slightly from those of the model's own float32 units (--model)", path)
    return checked_codes(codes, n_rows, path)


def checked_codes(codes: np.ndarray, n_rows: int, path: Path) -> np.ndarray:
    """``codes`` as float64 for the metrics, once they are numbers of the right shape, finite and
    within float32's range; a DataError naming ``path`` otherwise."""
    if (codes.ndim not in (2, 3) or codes.shape[0] != n_rows or 0 in codes.shape[1:]
            or codes.dtype.kind not in "fiu"):
        raise DataError(f"codes: expected numbers of shape ({n_rows}, n_codes) or ({n_rows}, N, D), n_codes, N, "
                        f"D >= 1, to match the dataset's rows, found {codes.dtype} {codes.shape}", path)
    try:
        check_values(codes)
    except DataError as err:
        raise DataError(err.message, path) from None
    return codes.astype(np.float64)


@dataclass
class Representations:
    data_artifact: Artifact
    data: DatasetFile  # open while the context lasts
    models: list[Artifact]  # empty when the representations came as files
    paths: list[Path]  # one reps .npz per model (save_reps) or given file
    codes: list[np.ndarray]  # what the metrics score: a model's own float32 values, a file's as stored
    stored_dtypes: list[str]  # the dtype of each model's stored codes (empty for given files, kept as they are)

    def source(self, index: int) -> dict[str, str]:
        """Where representation ``index`` came from, for the stage's report."""
        return {"model": self.models[index].ref} if self.models else {"reps": str(self.paths[index].resolve())}


@contextmanager
def representations(store: ArtifactStore, *, models: tuple[str, ...], reps: tuple[str, ...], data: str, reduce: str,
                    gpus: int, batch_size: int, progress: Progress) -> Iterator[Representations]:
    """Open the dataset and gather every representation: given files, or computed from ldm
    artifacts. A model's representation is scored from the values it computes; its file, in a
    scratch directory that lives as long as the context, is the compact copy ``save_reps``
    writes."""
    if models:
        data_artifact, model_artifacts = resolve_models(store, models, data)
    else:
        data_artifact, model_artifacts = store.load(data, kind="dataset"), []
    with tempfile.TemporaryDirectory(prefix="dydis-reps-") as scratch, \
            DatasetFile(data_artifact.file("data.h5")) as dataset:
        paths = [Path(p) for p in reps]
        codes = [load_codes(path, len(dataset), reduce) for path in paths]
        stored_dtypes = []
        for index, model in enumerate(model_artifacts):
            units, scalars = model_units(model, dataset, gpus=gpus, batch_size=batch_size, progress=progress)
            paths.append(Path(scratch) / f"reps_{index}.npz")
            stored_dtypes.append(save_reps(paths[-1], units, scalars))
            codes.append(checked_codes(scalars if reduce == "scalar" else units, len(dataset), paths[-1]))
            del units, scalars  # why: Shapes3D's units are 1.2 GB; the next model's would join them
        yield Representations(data_artifact, dataset, model_artifacts, paths, codes, stored_dtypes)
