"""What eval-metrics and downstream-gbt share: ldm artifacts -> the representation of every
dataset row (computed once per model, stored as an .npz), and reading such files back."""

from __future__ import annotations

import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dydis.artifacts import Artifact, ArtifactStore
from dydis.data.standard import DatasetFile
from dydis.distributed import pick_device
from dydis.errors import ArtifactError, DataError
from dydis.metrics import check_values
from dydis.models.vqgan import VQGAN
from dydis.progress import Progress
from dydis.training import ldm
from dydis.viz.sampler import Sampler


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


def write_model_reps(model_artifact: Artifact, data: DatasetFile, path: Path, *, gpus: int, batch_size: int,
                     progress: Progress) -> Path:
    """reps .npz of an ldm artifact: ``codes`` the raw units (n, N, D), ``scalars`` (n, N)."""
    model = ldm.load_model(model_artifact.file("model.pt")).model
    device = pick_device(gpus)
    model.to(device)
    with progress.task(f"representation of {model_artifact.ref}", total=len(data), unit="img") as task:
        units, scalars = ldm.represent(model, lambda part: data.images[part], len(data), device, batch_size,
                                       on_rows=task.advance)
    np.savez(path, codes=units, scalars=scalars)
    return path


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
    paths: list[Path]  # one reps .npz per model or given file
    codes: list[np.ndarray]  # what the metrics read from each (see ``load_codes``)

    def source(self, index: int) -> dict[str, str]:
        """Where representation ``index`` came from, for the stage's report."""
        return {"model": self.models[index].ref} if self.models else {"reps": str(self.paths[index].resolve())}


@contextmanager
def representations(store: ArtifactStore, *, models: tuple[str, ...], reps: tuple[str, ...], data: str, reduce: str,
                    gpus: int, batch_size: int, progress: Progress) -> Iterator[Representations]:
    """Open the dataset and gather every representation: given files, or computed from ldm
    artifacts into a scratch directory that lives as long as the context."""
    if models:
        data_artifact, model_artifacts = resolve_models(store, models, data)
    else:
        data_artifact, model_artifacts = store.load(data, kind="dataset"), []
    with tempfile.TemporaryDirectory(prefix="dydis-reps-") as scratch, \
            DatasetFile(data_artifact.file("data.h5")) as dataset:
        paths = [Path(p) for p in reps] or [
            write_model_reps(model, dataset, Path(scratch) / f"reps_{i}.npz", gpus=gpus, batch_size=batch_size,
                             progress=progress) for i, model in enumerate(model_artifacts)]
        codes = [load_codes(path, len(dataset), reduce) for path in paths]
        yield Representations(data_artifact, dataset, model_artifacts, paths, codes)
