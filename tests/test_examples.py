"""The example scripts drive `dydis run` as documented (dry runs: nothing is trained)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def dry_run_ablation(tmp_path: Path, **env: str) -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    done = subprocess.run(
        ["bash", str(EXAMPLES / "ablation.sh"), "synthetic", "--root", str(tmp_path / "art"),
         "--runs", str(tmp_path / "runs"), "--dry-run"],
        env={**os.environ, "PATH": path, "PROFILE": "smoke", "SEEDS": "42,43", "COLUMNS": "200", **env},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "art").exists()
    return done.stdout + done.stderr


@pytest.mark.parametrize("suffix", ["", "-u20"])
def test_ablation_plans_four_variants_per_seed_with_the_label_suffix(tmp_path, suffix):
    plan = dry_run_ablation(tmp_path, **({"LABEL_SUFFIX": suffix} if suffix else {}))
    labels = ["baseline", "dyga", "sd", "dyga-sd"]
    for seed in (42, 43):
        for label in labels:
            assert f"train-ldm [{label}{suffix}] (seed {seed}): would run" in plan
    trained = [line for line in plan.splitlines() if line.startswith("train-ldm [")]
    assert len(trained) == 8
