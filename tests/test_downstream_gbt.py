"""The GBT downstream task (Table 5): known answers, its draws, and `dydis downstream-gbt`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import artifact_dirs, synthetic_dataset
from dydis.cli.main import app
from dydis.errors import DataError
from dydis.metrics import GroundTruth, downstream_gbt, draw_splits, grid_factors

runner = CliRunner()
QUICK = dict(sizes=(200, 50, 20), test_size=100, n_jobs=1)


def repeated_grid(sizes, n_rows=1_000, seed=0) -> GroundTruth:
    """Many rows over a small factor grid: few classes keep the fits fast, many rows leave test rows."""
    factors = np.random.default_rng(seed).integers(0, sizes, size=(n_rows, len(sizes)))
    return GroundTruth(factors, sizes)


def test_factor_codes_keep_full_accuracy_at_every_size():
    gt = repeated_grid((2, 3))
    result = downstream_gbt(gt.factors.astype(float), gt, seeds=range(2), **QUICK)
    assert result.reference == 200
    for key in ("acc_200", "acc_50", "acc_20", "acc_20_factor_1", "ratio_50", "ratio_20", "ratio_20_factor_0"):
        assert result.summary[key]["mean"] == pytest.approx(1.0, abs=0.02), key
    assert {k for k in result.runs[1] if "factor" not in k} == {"acc_200", "acc_50", "acc_20", "ratio_50", "ratio_20"}


def test_noise_codes_score_chance():
    sizes = (2, 3)
    gt = repeated_grid(sizes)
    noise = np.random.default_rng(1).standard_normal((gt.n_rows, 4))
    result = downstream_gbt(noise, gt, seeds=range(2), sizes=(200, 50), test_size=100, n_jobs=1)
    for n in (200, 50):
        for j, size in enumerate(sizes):
            assert result.summary[f"acc_{n}_factor_{j}"]["mean"] == pytest.approx(1 / size, abs=0.12)


def test_test_rows_are_never_training_rows():
    sizes = (4, 4, 3, 3)  # 144 rows
    gt = GroundTruth(grid_factors(sizes), sizes)
    rs = np.random.RandomState(0)
    independent = [gt.sample(n, rs, batch_size=16)[1] for n in (200, 100)]
    assert np.intersect1d(*independent).size > 0  # what disentanglement_lib's draws would do here
    for seed in range(5):
        splits = draw_splits(gt, sizes=QUICK["sizes"], test_size=QUICK["test_size"], seed=seed)
        for n, split in zip(QUICK["sizes"], splits):
            assert len(split.train_rows) == n and len(split.test_rows) == QUICK["test_size"]
            assert np.intersect1d(split.train_rows, split.test_rows).size == 0
            np.testing.assert_array_equal(split.test_factors, gt.factors[split.test_rows])
            np.testing.assert_array_equal(split.train_factors, gt.factors[split.train_rows])
    with pytest.raises(DataError, match="no test row is left"):
        draw_splits(GroundTruth(grid_factors((2, 2)), (2, 2)), sizes=(100,), test_size=10)


def test_draws_without_collisions_are_disentanglement_libs():
    # one RandomState per seed; per size the training points, then the test points, 16 at a time
    sizes = (10, 10, 10, 10, 10)
    gt = GroundTruth(grid_factors(sizes), sizes)
    splits = draw_splits(gt, sizes=(50, 20), test_size=30, seed=3)
    rs = np.random.RandomState(3)
    for n, split in zip((50, 20), splits):
        train_factors, _ = gt.sample(n, rs, batch_size=16)
        test_factors, _ = gt.sample(30, rs, batch_size=16)
        np.testing.assert_array_equal(split.train_factors, train_factors)
        np.testing.assert_array_equal(split.test_factors, test_factors)


def test_same_seed_same_result_other_seed_differs():
    gt = repeated_grid((2, 2))
    codes = gt.factors + np.random.default_rng(2).normal(scale=0.8, size=gt.factors.shape)
    both = downstream_gbt(codes, gt, seeds=(0, 1), sizes=(200, 50), test_size=100, n_jobs=1)
    alone = downstream_gbt(codes, gt, seeds=(1,), sizes=(200, 50), test_size=100, n_jobs=1)
    assert alone.runs[0] == both.runs[1]
    assert both.runs[0] != both.runs[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream") / "store"
    return root, synthetic_dataset(root, "2,2,2,2,2,2")


def test_cli_two_models(tmp_path, dataset):
    root, factors = dataset
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"  # vector units, each the code of one factor: PCA(1) recovers it
    np.savez(good, codes=factors[:, :, None] + 0.05 * rng.standard_normal((*factors.shape, 3)))
    bad = tmp_path / "bad.npz"
    np.savez(bad, codes=rng.standard_normal((*factors.shape, 3)))
    result = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", str(good), "--reps",
                                 str(bad), "--sizes", "48,16", "--test-size", "20", "--seeds", "0", "--n-jobs", "1",
                                 "--root", str(root)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    assert "\n" not in path and "±" in result.stderr and "orientation" in result.stderr
    report = json.loads(open(f"{path}/downstream.json").read())
    good_acc, bad_acc = (m["summary"]["acc_48"]["mean"] for m in report["models"])
    assert good_acc == pytest.approx(1.0) and bad_acc < 0.8
    assert report["spread"] == "models" and report["summary"]["acc_48"]["mean"] == pytest.approx((good_acc + bad_acc) / 2)
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert manifest["kind"] == "downstream" and set(manifest["files"]) == {"downstream.json", "downstream.csv",
                                                                          "ratios.png"}
    assert set(manifest["results"]) == {"acc_48", "ratio_16", "models", "seeds"}
    assert open(f"{path}/downstream.csv").readline().strip() == "score,mean,std,reps_0,reps_1"


def test_cli_one_model_spreads_over_seeds(tmp_path, dataset):
    root, factors = dataset
    reps = tmp_path / "codes.npz"
    np.savez(reps, codes=factors.astype(np.float32))
    config = tmp_path / "downstream.yaml"
    config.write_text("sizes: [48, 16]\ntest_size: 20\nn_jobs: 1\nreduce: scalar\n")
    result = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", str(reps), "--config",
                                 str(config), "--seeds", "7,8", "--root", str(root)])
    assert result.exit_code == 0, result.output
    report = json.loads(open(f"{result.stdout.strip()}/downstream.json").read())
    assert report["spread"] == "seeds" and report["seeds"] == [7, 8] and len(report["models"][0]["runs"]) == 2
    assert report["summary"] == report["models"][0]["summary"]
    assert report["summary"]["ratio_16"]["mean"] == pytest.approx(1.0, abs=0.02)


def _scores(root, reps, *seeds_flag):
    result = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", str(reps), "--sizes",
                                 "48,16", "--test-size", "20", "--n-jobs", "1", "--reduce", "scalar", *seeds_flag,
                                 "--root", str(root)])
    assert result.exit_code == 0, result.output
    return json.loads(open(f"{result.stdout.strip()}/downstream.json").read())


def test_cli_seeds_is_a_list_and_its_default_keeps_the_old_count_of_five(tmp_path, dataset):
    root, factors = dataset
    reps = tmp_path / "codes.npz"
    noisy = factors + 0.8 * np.random.default_rng(0).standard_normal(factors.shape)  # scores that vary per seed
    np.savez(reps, codes=noisy.astype(np.float32))
    default = _scores(root, reps)
    gt = GroundTruth(factors, [int(n) for n in factors.max(axis=0) + 1])
    old = downstream_gbt(noisy.astype(np.float32), gt, reduce="scalar", sizes=(48, 16), test_size=20,
                         seeds=range(0, 5), n_jobs=1)  # the old default: 5 seeds counted from --seed 0
    assert default["seeds"] == [0, 1, 2, 3, 4]
    assert [run["scores"] for run in default["models"][0]["runs"]] == old.runs
    single = _scores(root, reps, "--seeds", "3")  # one seed, 3; not three seeds
    assert single["seeds"] == [3] and single["models"][0]["runs"][0]["scores"] == old.runs[3]


@pytest.mark.parametrize("seeds, expected", [("3,3", "distinct seeds"), ("a,b", "integers")])
def test_cli_seeds_that_are_not_distinct_integers_are_one_line(tmp_path, dataset, seeds, expected):
    root, _ = dataset
    result = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", "x.npz", "--seeds",
                                 seeds, "--root", str(root)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --seeds: expected {expected} like 42,43,44, found {seeds!r}"


@pytest.mark.parametrize("case", ["missing", "one size", "npy", "no codes", "huge"])
def test_cli_bad_input_exit_2(tmp_path, dataset, case):
    root, factors = dataset
    path = tmp_path / ("reps.npy" if case == "npy" else "reps.npz")
    if case == "one size":
        np.savez(path, codes=factors.astype(float))
    elif case == "npy":
        np.save(path, factors.astype(float))
    elif case == "no codes":
        np.savez(path, codes=np.zeros((len(factors), 0)))
    elif case == "huge":
        np.savez(path, codes=factors * 1e300)
    before = artifact_dirs(root)
    result = runner.invoke(app, ["downstream-gbt", "--data", "prepare-data/synthetic", "--reps", str(path),
                                 "--sizes", "100" if case == "one size" else "48,16", "--root", str(root)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert ("sizes" if case == "one size" else f"error: {path}: ") in result.stderr
    assert artifact_dirs(root) == before
