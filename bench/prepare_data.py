"""Throughput of `prepare-data` per dataset, extrapolated to the full downloads, and peak RSS.

Each case writes a file in the real download's format (not timed), then times the whole
stage (read, convert, write data.h5, preview, hash, publish) in a fresh subprocess so that
the peak resident memory is that case's alone. The stage runs twice, on a tenth of the rows
and on all of them: the difference gives the per-image rate, the rest is the fixed cost
(imports, process pool start, preview), and the full-size estimate is fixed + rows / rate.

    python bench/prepare_data.py            # all cases
    python bench/prepare_data.py --quick    # smaller files, for a smoke check

Targets on a 2-core CPU (issue 2): Shapes3D 480k <= 60 s, MPI3D 1.04M <= 3 min with < 4 GB
RSS, CelebA 202,599 <= 3 min.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

FULL_ROWS = {"shapes3d": 480_000, "mpi3d-toy": 1_036_800, "celeba": 202_599, "synthetic": 480_000}
TARGET_SECONDS = {"shapes3d": 60, "mpi3d-toy": 180, "celeba": 180, "synthetic": None}


def write_shapes3d(path: Path, n: int) -> dict:
    from dydis.data.shapes3d import FACTOR_SIZES, FACTOR_VALUES

    rng = np.random.default_rng(0)
    factors = np.stack(np.unravel_index(np.arange(n), FACTOR_SIZES), axis=1)
    labels = np.stack([FACTOR_VALUES[j][factors[:, j]] for j in range(6)], axis=1)
    with h5py.File(path, "w") as h5:  # gzip chunks, like the 255 MB download of 5.9 GB of pixels
        images = h5.create_dataset("images", (n, 64, 64, 3), np.uint8, compression="gzip", chunks=(100, 64, 64, 3))
        for start in range(0, n, 4000):
            stop = min(n, start + 4000)
            block = np.repeat(rng.integers(0, 256, (stop - start, 1, 1, 3), dtype=np.uint8), 64, axis=1)
            block = np.repeat(block, 64, axis=2)
            block[:, 20:44, 20:44] = rng.integers(0, 256, (stop - start, 1, 1, 3), dtype=np.uint8)
            images[start:stop] = block
        h5.create_dataset("labels", data=labels)
    return {"dataset": "shapes3d", "source": str(path)}


def write_mpi3d(path: Path, n: int) -> dict:
    sizes = (6, 6, 2, 3, 3, 40, n // (6 * 6 * 2 * 3 * 3 * 40))
    n = int(np.prod(sizes))
    images = np.lib.format.open_memmap(path.with_suffix(".npy"), mode="w+", dtype=np.uint8, shape=(n, 64, 64, 3))
    for start in range(0, n, 8192):
        images[start: start + 8192] = (np.arange(start, min(n, start + 8192)) % 251).astype(np.uint8)[:, None, None, None]
    images.flush()
    del images
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # what np.savez writes
        zf.write(path.with_suffix(".npy"), "images.npy")
    path.with_suffix(".npy").unlink()
    return {"dataset": "mpi3d-toy", "source": str(path), "factor_sizes": list(sizes)}


def write_celeba(root: Path, n: int) -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    base = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((22, 27)).resize((178, 218), Image.BICUBIC))
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):  # photo-like content: smooth colour fields plus noise
        pixels = np.clip(np.roll(smooth, i, axis=1).astype(np.int16) + rng.integers(-12, 12, smooth.shape), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img_align_celeba" / name, quality=95)
    attribute_names = [f"Attr_{k}" for k in range(40)]
    rows = [f"{name} " + " ".join(rng.choice(["-1", " 1"], 40)) for name in names]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(attribute_names) + "\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{name} {i % 3}" for i, name in enumerate(names)) + "\n")
    return {"dataset": "celeba", "source": str(root)}


def child(config: dict, root: str) -> None:
    """Run the stage once and print its timing and this process's peak RSS as JSON."""
    from dydis.artifacts import ArtifactStore
    from dydis.config import PrepareDataConfig, from_dict
    from dydis.stages import prepare_data

    started = time.perf_counter()
    artifact = prepare_data.run(from_dict(PrepareDataConfig, config), ArtifactStore(root))
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux carries the parent's resident peak across fork+exec into
    # ru_maxrss, while VmHWM belongs to this process's own address space.
    status = Path("/proc/self/status").read_text()
    own_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    rss_kb = own_kb + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # + the largest worker
    print(json.dumps({"rows": artifact.results["n_images"], "seconds": seconds, "rss_mb": rss_kb / 1024}))


def measure(name: str, config: dict, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(config), str(workdir / f"store-{name}")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files (a smoke check, not the figures)")
    parser.add_argument("--cases", default="shapes3d,mpi3d-toy,celeba,synthetic")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child[0]), args.child[1])
        return
    scale = 0.1 if args.quick else 1.0
    sizes = {"shapes3d": int(48_000 * scale), "mpi3d-toy": 51_840 if args.quick else 103_680, "celeba": int(10_000 * scale),
             "synthetic": int(48_000 * scale)}
    print(f"{'case':<12}{'rows':>9}{'seconds':>9}{'img/s':>9}{'fixed':>8}{'full-size est.':>16}{'target':>9}"
          f"{'peak RSS':>11}")
    with tempfile.TemporaryDirectory(prefix="dydis-bench-") as tmp:
        workdir = Path(tmp)
        for case in args.cases.split(","):
            n = sizes[case]
            small_n = 25_920 if case == "mpi3d-toy" else n // 10  # the smallest MPI3D grid this writer makes
            small = measure(case + "-small", write_case(case, small_n, workdir / f"{case}-small"), workdir)
            result = measure(case, write_case(case, n, workdir / case), workdir)
            rate = (result["rows"] - small["rows"]) / max(result["seconds"] - small["seconds"], 1e-9)
            fixed = max(0.0, result["seconds"] - result["rows"] / rate)
            full = fixed + FULL_ROWS[case] / rate
            target = TARGET_SECONDS[case]
            print(f"{case:<12}{result['rows']:>9,}{result['seconds']:>9.1f}{rate:>9,.0f}{fixed:>6.1f} s{full:>14,.0f} s"
                  f"{(f'{target} s' if target else '-'):>9}{result['rss_mb']:>8,.0f} MB", flush=True)


def write_case(case: str, n: int, folder: Path) -> dict:
    """Write the source of one case with ``n`` rows into ``folder``; returns the stage config."""
    folder.mkdir(parents=True)
    if case == "shapes3d":
        return write_shapes3d(folder / "3dshapes.h5", n)
    if case == "mpi3d-toy":
        return write_mpi3d(folder / "mpi3d_toy.npz", n)
    if case == "celeba":
        return write_celeba(folder / "celeba", n)
    return {"dataset": "synthetic", "fraction": n / FULL_ROWS["synthetic"]}


if __name__ == "__main__":
    main()
