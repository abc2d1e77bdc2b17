"""Wall time of the metric suite on a Shapes3D-shaped grid.

480,000 rows (factor sizes 10, 10, 10, 8, 4, 15 in canonical order) and 20 synthetic float32
codes: six noisy monotone functions of one factor each, four mixtures of two factors, six
noise codes and four near-constant codes (which FactorVAE prunes). Every metric runs with its
reference defaults (issue 6); the target is <= 60 s for FactorVAE + DCI + MIG + SAP +
Modularity on a 2-core CPU, where disentanglement_lib's own functions take about 126 s.

Usage::

    python bench/metrics.py                  # the full suite, reference sample sizes
    python bench/metrics.py --quick          # 1/10 of the samples: a smoke test in seconds
    python bench/metrics.py --metrics dci --repeats 3 --n-jobs 2
    python bench/metrics.py --metrics dci --dci-backend sklearn   # scikit-learn's own trees

Prints one line per metric (median seconds over the repeats, and its scores) and the total of
the five targeted metrics, then the scores as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from dydis.metrics import GRID_METRICS, GroundTruth, evaluate, grid_factors

SIZES = (10, 10, 10, 8, 4, 15)
TARGETED = ("factor_vae", "dci", "mig", "sap", "modularity")
QUICK = {
    "factor_vae": dict(n_train=1000, n_eval=500, n_variance=1000),
    "dci": dict(n_train=1000, n_test=500),
    "mig": dict(n_samples=1000),
    "sap": dict(n_train=1000, n_test=500),
    "modularity": dict(n_train=1000, n_test=500),
    "infomec": dict(n_samples=1000),
}


def synthetic_codes(factors: np.ndarray, seed: int = 0) -> np.ndarray:
    """20 float32 codes (n, 20) for the factor grid (n, 6); see the module docstring."""
    rng = np.random.default_rng(seed)
    n = len(factors)
    u = (factors + 0.5) / np.array(SIZES)  # factors as values in (0, 1)
    codes = np.empty((n, 20), dtype=np.float32)
    for j in range(6):  # one factor each, through a monotone warp, plus noise
        codes[:, j] = np.tanh(3 * (u[:, j] - 0.5)) * (1 + j) + 0.1 * rng.normal(size=n)
    for j, (a, b) in enumerate([(0, 1), (2, 3), (4, 5), (1, 5)]):  # mixtures of two factors
        codes[:, 6 + j] = u[:, a] - 0.7 * u[:, b] + 0.1 * rng.normal(size=n)
    codes[:, 10:16] = rng.normal(size=(n, 6))  # noise
    codes[:, 16:20] = 0.01 * rng.normal(size=(n, 4))  # collapsed: std < 0.05
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the reference samples")
    parser.add_argument("--metrics", default=",".join(GRID_METRICS),
                        help="comma-separated subset of " + ",".join(GRID_METRICS))
    parser.add_argument("--repeats", type=int, default=1, help="median over this many runs")
    parser.add_argument("--n-jobs", type=int, default=-1, help="joblib workers (-1 = all cores)")
    parser.add_argument("--dci-backend", choices=("fast", "sklearn"), default="fast",
                        help="boosted trees for DCI: ours (default) or scikit-learn's")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]

    factors = grid_factors(SIZES)
    gt = GroundTruth(factors, SIZES)
    codes = synthetic_codes(factors)
    options = {m: dict(v) for m, v in QUICK.items()} if args.quick else {}
    options.setdefault("dci", {})["backend"] = args.dci_backend
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {load:.2f}; {len(codes)} rows x {codes.shape[1]} codes; "
          f"{'quick' if args.quick else 'reference'} sample sizes; n_jobs={args.n_jobs}; "
          f"DCI backend {args.dci_backend}")

    # warm-up: imports, thread pools, first-call overheads, on a tiny problem
    evaluate(codes, gt, metrics=metrics, n_jobs=args.n_jobs,
             options={m: {k: 64 for k in v} for m, v in QUICK.items() if m in metrics})

    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in metrics:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate(codes, gt, metrics=[name], n_jobs=args.n_jobs, options=options)
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
        scores.update(result)
        values = " ".join(f"{k}={v:.4f}" for k, v in result.items())
        print(f"{name:<11} {seconds[name]:8.2f} s   {values}", flush=True)
    done = [m for m in TARGETED if m in seconds]
    print(f"{'+'.join(done)}: {sum(seconds[m] for m in done):.2f} s (target <= 60 s for all five)")
    print(json.dumps({"seconds": seconds, "scores": scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
