"""`dydis eval-metrics --reps` on an external representation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import artifact_dirs, synthetic_dataset
from dydis.cli.main import app

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path):
    root = str(tmp_path / "store")
    return root, synthetic_dataset(root, "3,3,2,2,2,2")


def test_identity_and_shuffled_codes(tmp_path, dataset):
    root, factors = dataset
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, codes=factors + 0.01 * rng.standard_normal(factors.shape))
    bad = tmp_path / "bad.npz"
    np.savez(bad, codes=rng.standard_normal(factors.shape))
    result = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps", str(good), "--reps",
                                 str(bad), "--metrics", "mig", "--n-jobs", "1", "--root", root])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    report = json.loads(open(f"{path}/metrics.json").read())
    good_mig, bad_mig = (r["metrics"]["mig"] for r in report["runs"])
    assert good_mig > 0.9 and bad_mig < 0.1
    assert report["summary"]["mig"]["mean"] == pytest.approx((good_mig + bad_mig) / 2)
    assert report["summary"]["mig"]["std"] == pytest.approx(abs(good_mig - bad_mig) / 2)
    assert "mig" in result.stderr and "±" in result.stderr


def test_dci_says_which_factors_the_codes_hold(tmp_path, dataset):
    """Per-factor test accuracy in metrics.json: the factors a representation leaves out show there,
    where the mean (informativeness) and the importance matrix blur them."""
    root, factors = dataset
    reps = tmp_path / "half.npz"  # the first three factors and nothing else (noise would not do: the
    # protocol's train and test rows are drawn from the same 144 images, so trees learn noise by heart)
    np.savez(reps, codes=factors[:, :3].astype(float))
    result = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps", str(reps),
                                 "--metrics", "dci", "--n-jobs", "1", "--root", root])
    assert result.exit_code == 0, result.output
    run = json.loads(open(f"{result.stdout.strip()}/metrics.json").read())["runs"][0]
    accuracy = run["dci_test_accuracy"]
    assert list(accuracy) == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert [accuracy[k] for k in ("floor_hue", "wall_hue", "object_hue")] == [1.0, 1.0, 1.0]
    assert max(accuracy[k] for k in ("scale", "shape", "orientation")) < 0.75  # 2 values each: chance is 0.5
    assert np.mean(list(accuracy.values())) == pytest.approx(run["metrics"]["dci_informativeness"])


def test_factor_vae_votes_name_the_code_each_factor_lands_in(tmp_path, dataset):
    """metrics.json keeps FactorVAE's evaluation votes per factor and code, so a score short of 1
    can be traced to the factors that share a code (here the last two, summed into one code)."""
    root, factors = dataset
    reps = tmp_path / "shared.npz"
    np.savez(reps, codes=np.column_stack([factors[:, :4], factors[:, 4] + factors[:, 5]]).astype(float))
    result = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps", str(reps),
                                 "--metrics", "factor_vae", "--n-jobs", "1", "--root", root])
    assert result.exit_code == 0, result.output
    run = json.loads(open(f"{result.stdout.strip()}/metrics.json").read())["runs"][0]
    votes = run["factor_vae_votes"]
    assert list(votes) == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    winners = {name: int(np.argmax(row)) for name, row in votes.items()}
    assert winners == {"floor_hue": 0, "wall_hue": 1, "object_hue": 2, "scale": 3, "shape": 4, "orientation": 4}
    assert sum(map(sum, votes.values())) == 5000
    assert run["metrics"]["factor_vae"] < 0.9


@pytest.mark.parametrize("case", ["missing", "key", "rows", "nan", "npy", "no codes", "no units", "huge", "huge units"])
def test_bad_reps_exit_2(tmp_path, dataset, case):
    root, factors = dataset
    path = tmp_path / ("reps.npy" if case == "npy" else "reps.npz")
    if case == "npy":  # np.save: one bare array, not the npz archive with a 'codes' array
        np.save(path, factors.astype(float))
    elif case == "no codes":
        np.savez(path, codes=np.zeros((len(factors), 0)))
    elif case == "no units":
        np.savez(path, codes=np.zeros((len(factors), 3, 0)))
    elif case == "huge":  # squares overflow float64: SAP's solver once spun on this for over 10 minutes
        np.savez(path, codes=factors * 1e300)
    elif case == "huge units":
        np.savez(path, codes=np.repeat(factors[:, :, None] * 1e300, 2, axis=2))
    elif case == "key":
        np.savez(path, z=factors.astype(float))
    elif case == "rows":
        np.savez(path, codes=factors[:-1].astype(float))
    elif case == "nan":
        codes = factors.astype(float)
        codes[3, 1] = np.nan
        np.savez(path, codes=codes)
    before = artifact_dirs(tmp_path / "store")
    result = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps", str(path), "--root", root])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1, result.stderr
    assert artifact_dirs(tmp_path / "store") == before


def test_one_code_is_refused_by_the_metrics_that_compare_two(tmp_path, dataset):
    root, factors = dataset
    path = tmp_path / "one.npz"
    np.savez(path, codes=factors[:, :1].astype(float))
    for metric in ("mig", "sap"):
        result = runner.invoke(app, ["eval-metrics", "--data", "prepare-data/synthetic", "--reps", str(path),
                                     "--metrics", metric, "--root", root])
        assert result.exit_code == 2 and result.stdout == "", result.output
        assert result.stderr.strip().startswith(f"error: {metric.upper()} needs at least two codes, found 1")
