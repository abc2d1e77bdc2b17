"""`dydis report`: statistics on known numbers, the files it writes, and the command."""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import artifact_dirs, synthetic_dataset
from dydis.artifacts import Artifact, ArtifactStore
from dydis.cli.main import app
from dydis.report.curves import score_columns, variant_curve
from dydis.report.scores import shared_codes
from dydis.report.stats import Row, bootstrap_interval, compare_variants, paired_p_value, summarize_rows

runner = CliRunner()


# ---- statistics on numbers with known answers ----------------------------------------------------

def t2_p_value(t: float) -> float:
    """Two-sided p of Student's t with 2 degrees of freedom: its cdf is 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_mean_and_std_per_variant_and_metric():
    rows = [Row("a", s, "mig", v) for s, v in ((1, 0.1), (2, 0.2), (3, 0.6))] + [Row("b", 1, "mig", 0.5)]
    summary = summarize_rows(rows)
    assert summary[("a", "mig")].mean == pytest.approx(0.3)
    assert summary[("a", "mig")].std == pytest.approx(math.sqrt((0.04 + 0.01 + 0.09) / 3))  # ddof 0
    assert (summary[("a", "mig")].n, summary[("b", "mig")].std, summary[("b", "mig")].n) == (3, 0.0, 1)


def test_paired_t_test_p_value():
    a = np.array([1.0, 5.0, 2.0])
    differences = np.array([1.0, 2.0, 3.0])  # mean 2, sd 1: t = 2 / (1 / sqrt 3)
    assert paired_p_value(a, a + differences) == pytest.approx(t2_p_value(2 * math.sqrt(3)), rel=1e-9)
    assert paired_p_value(a, a + differences) == pytest.approx(0.0741799, abs=1e-7)
    assert paired_p_value(a, a) == 1.0  # no difference at all
    assert paired_p_value(a[:1], a[:1] + 1) is None  # one pair: no test


def test_bootstrap_interval_of_paired_differences():
    a = np.array([3.0, 1.0])
    # differences 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles are the extremes
    assert bootstrap_interval(a, a + [0.0, 1.0], paired=True, resamples=10_000, seed=0) == (0.0, 1.0)
    assert bootstrap_interval(a, a + 0.25, paired=True, resamples=1000, seed=3) == pytest.approx((0.25, 0.25))
    differences = np.array([0.1, 0.4, 0.2, 0.9])
    exact = [np.mean(differences[list(pick)]) for pick in itertools.product(range(4), repeat=4)]  # 256 equally likely
    low, high = bootstrap_interval(np.zeros(4), differences, paired=True, resamples=20_000, seed=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(exact, [2.5, 97.5])), abs=0.03)


def test_unpaired_bootstrap_resamples_each_variant():
    low, high = bootstrap_interval(np.array([1.0]), np.array([3.0, 3.0]), paired=False, resamples=500, seed=0)
    assert (low, high) == (2.0, 2.0)


def test_comparisons_pair_by_seed_only_when_the_seeds_match():
    rows = [Row("base", s, "mig", v) for s, v in ((1, 0.1), (2, 0.5), (3, 0.2))]
    rows += [Row("same", s, "mig", v) for s, v in ((3, 0.5), (1, 0.2), (2, 0.7))]  # +0.1, +0.2, +0.3 by seed
    rows += [Row("other", s, "mig", 0.4) for s in (4, 5, 6)]
    same, other = compare_variants(rows, "base", resamples=2000, seed=0)
    assert (same.variant, same.pairs, same.difference) == ("same", 3, pytest.approx(0.2))
    assert same.p_value == pytest.approx(t2_p_value(2 * math.sqrt(3)))
    assert 0.1 <= same.low < 0.2 < same.high <= 0.3
    assert (other.pairs, other.p_value, other.difference) == (0, None, pytest.approx(0.4 - 0.8 / 3))


def test_curves_average_the_seeds_that_evaluated_each_step():
    logs = [[{"step": "1", "loss": "0.5", "mig": ""}, {"step": "2", "loss": "0.4", "mig": "0.1"},
             {"step": "4", "loss": "0.3", "mig": "0.3"}],
            [{"step": "2", "loss": "0.4", "mig": "0.3", "factor_vae": "0.9"}, {"step": "3", "loss": "0.3", "mig": ""}]]
    assert score_columns(logs) == ["factor_vae", "mig"]  # evaluate's order; loss is no score
    per_factor = {"conditioning_gain_hue": "0.3", "conditioning_gain": "0.2", "dci_accuracy_shape": "0.5",
                  "dci_accuracy_hue": "0.9", "cond_loss": "0.1"}
    logs[1][0].update(per_factor)
    assert score_columns(logs) == ["factor_vae", "mig", "dci_accuracy_shape", "dci_accuracy_hue", "conditioning_gain",
                                   "conditioning_gain_hue"]
    for key in per_factor:
        del logs[1][0][key]
    curve = variant_curve("dyga", logs, "mig")
    assert curve.steps.tolist() == [2, 4]
    assert curve.mean == pytest.approx([0.2, 0.3]) and curve.std == pytest.approx([0.1, 0.0])
    assert variant_curve("dyga", logs, "sap") is None and score_columns([[{"step": "1", "loss": "1"}]]) == []


def test_shared_codes_groups_the_factors_whose_votes_peak_on_one_code():
    votes = {"hue": [90, 5, 5, 0], "scale": [0, 3, 80, 17], "shape": [1, 0, 60, 39], "turn": [0, 50, 0, 0],
             "size": [0, 48, 2, 0]}
    assert shared_codes(votes) == [("scale", "shape"), ("turn", "size")]
    assert shared_codes({"a": [9, 1], "b": [1, 9]}) == []
    assert shared_codes({"a": [0, 0], "b": [0, 0]}) == []  # every code pruned: no votes, nothing shared


# ---- hand-made artifacts: a sweep of two variants over three seeds -------------------------------

def train_log(rows: list[dict]) -> str:
    """train_log.csv as the training loop writes it: evaluation columns blank on the other rows."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return "\n".join([",".join(columns), *(",".join(str(r.get(c, "")) for c in columns) for r in rows)]) + "\n"


def make_ldm(root: Path, name: str, seed: int, label: str | None, log: list[dict], quantizer: str,
             **config) -> Artifact:
    stamp = {"fingerprint": "0" * 64, "point": {"label": label, "settings": {}}} if label else None
    with ArtifactStore(root, workflow=stamp).create(stage="train-ldm", name=name, kind="ldm", seed=seed,
                                                    config={"quantizer": quantizer, "seed": seed, **config}) as writer:
        (writer.dir / "train_log.csv").write_text(train_log(log))
        unknown = label == "dyga" and seed == 3  # as if resumed from a checkpoint that did not count time
        writer.results.update({"steps": 4, "train_seconds": None if unknown else 60.0 * seed,
                               "images_per_second": 10.0 * seed, "final_loss": 0.1 * seed})
    return writer.artifact


def make_metrics(root: Path, name: str, models: list[Artifact], mig: list[float], votes=None) -> Artifact:
    runs = [{"model": m.ref, "metrics": {"mig": v, "sap": 2 * v}} for m, v in zip(models, mig)]
    for run, model_votes in zip(runs, votes or []):
        run["factor_vae_votes"] = model_votes
    with ArtifactStore(root).create(stage="eval-metrics", name=name, kind="metrics", config={},
                                    inputs={f"model_{i}": m for i, m in enumerate(models)}) as writer:
        (writer.dir / "metrics.json").write_text(json.dumps({"summary": {}, "runs": runs}))
    return writer.artifact


def make_downstream(root: Path, name: str, models: list[Artifact], acc: list[float]) -> Artifact:
    entries = [{"model": m.ref, "summary": {"acc_32": {"mean": v, "std": 0.0}, "ratio_8": {"mean": v / 2, "std": 0.0},
                                            "ratio_8_factor_0": {"mean": 0.0, "std": 0.0}}} for m, v in zip(models, acc)]
    with ArtifactStore(root).create(stage="downstream-gbt", name=name, kind="downstream", config={},
                                    inputs={f"model_{i}": m for i, m in enumerate(models)}) as writer:
        (writer.dir / "downstream.json").write_text(json.dumps({"models": entries}))
        writer.results.update({"acc_32": 0.0, "ratio_8": 0.0, "models": len(models), "seeds": 2})
    return writer.artifact


def make_figure(root: Path, model: Artifact, what: str, name: str | None = None) -> Artifact:
    with ArtifactStore(root).create(stage="visualize", name=name or f"{model.name}-{what}", kind="viz",
                                    config={"what": what}, inputs={"model": model}) as writer:
        Image.new("RGB", (1500, 900), (200, 30, 30)).save(writer.dir / f"{what}.png")
    return writer.artifact


BASELINE_MIG, DYGA_MIG = [0.1, 0.2, 0.3], [0.2, 0.4, 0.6]


@pytest.fixture
def sweep(tmp_path):
    """Variants baseline and dyga, seeds 1-3, scored by eval-metrics and downstream-gbt; a figure of one model."""
    root = tmp_path / "store"
    for variant, quantizer, mig in (("baseline", "none", BASELINE_MIG), ("dyga", "dyga", DYGA_MIG)):
        models = []
        for seed, value in zip((1, 2, 3), mig):
            log = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "mig": value / 2, "sap": value},
                   {"step": 3, "loss": 0.3}, {"step": 4, "loss": 0.2, "mig": value, "sap": value}]
            models.append(make_ldm(root, f"study-{variant}" + (f"-s{seed}" if seed > 1 else ""), seed, variant, log,
                                   quantizer))
        make_metrics(root, f"study-{variant}", models, mig)
        make_downstream(root, f"study-{variant}", models, [0.9 + v / 10 for v in mig])
        if variant == "baseline":
            make_figure(root, models[1], "interchange")
    return root


def report(root: Path, *args: str):
    return runner.invoke(app, ["report", "--root", str(root), *args])


def test_report_of_a_sweep(sweep):
    result = report(sweep, "--metrics", "eval-metrics/study-*", "--downstream", "downstream-gbt/study-*")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == sweep / "report" / "study" / "v1"
    artifact = ArtifactStore(sweep).load(path)
    results = artifact.results
    assert results["variants"] == ["baseline", "dyga"] and results["baseline"] == "baseline"
    mig = results["summary"]["baseline"]["mig"]
    assert (mig["mean"], mig["std"], mig["n"]) == (pytest.approx(0.2), pytest.approx(math.sqrt(0.02 / 3)), 3)
    assert results["summary"]["dyga"]["acc_32"]["mean"] == pytest.approx(0.94)
    compared = {c["metric"]: c for c in results["comparisons"]}
    assert set(compared) == {"mig", "sap", "acc_32", "ratio_8"}
    assert compared["mig"]["p_value"] == pytest.approx(t2_p_value(2 * math.sqrt(3)))  # differences 0.1, 0.2, 0.3
    assert compared["mig"]["pairs"] == 3 and 0.1 <= compared["mig"]["low"] < 0.2 < compared["mig"]["high"] <= 0.3
    assert "baseline" in result.stderr and "0.200 ± 0.082" in result.stderr
    # the long table: exactly these columns, one row per model and score
    with open(path / "report.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["variant", "seed", "metric", "value"]
    assert len(table) == 1 + 2 * 3 * 4
    assert ["dyga", "3", "mig", "0.6"] in table and ["baseline", "2", "ratio_8", str(0.92 / 2)] in table
    # the curves: one PNG per evaluated metric, mean over the seeds at each evaluated step
    assert {"curve_mig.png", "curve_sap.png"} <= set(artifact.manifest["files"])
    # the figure of the baseline's seed-2 model, copied small
    (figure,) = [f for f in artifact.manifest["files"] if f.startswith("figures/")]
    assert figure == "figures/0-interchange.png" and max(Image.open(path / figure).size) <= 720
    assert [e["ref"] for e in artifact.inputs("figure_0")] == ["visualize/study-baseline-s2-interchange@v1"]
    markdown = (path / "report.md").read_text()
    assert "![mig during training](curve_mig.png)" in markdown and "| mig | 0.200 ± 0.082 | 0.400 ± 0.163 |" in markdown
    # what training cost each variant, from the models' manifests: seeds 1-3 took 1, 2 and 3 minutes
    assert ("| variant | models | steps | training minutes | images/s | final training loss |\n"
            "|---|---|---|---|---|---|\n| baseline | 3 | 4 ± 0 | 2.0 ± 0.8 | 20.0 ± 8.2 | 0.2000 ± 0.0816 |\n"
            "| dyga | 3 | 4 ± 0 | 1.5 ± 0.5 (n=2) | 20.0 ± 8.2 | 0.2000 ± 0.0816 |") in markdown


class Links(HTMLParser):
    """Every attribute that could load something from elsewhere, and the tags."""

    def __init__(self):
        super().__init__()
        self.sources, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.sources += [(name, value) for name, value in attrs if name in ("src", "href", "srcset", "data")]


def test_html_is_self_contained(sweep):
    result = report(sweep, "--metrics", "eval-metrics/study-*")
    assert result.exit_code == 0, result.output
    page = (Path(result.stdout.strip()) / "report.html").read_text()
    links = Links()
    links.feed(page)
    assert links.tags.count("img") == 3  # curves of mig and sap, one figure
    assert all(name == "src" and value.startswith("data:image/png;base64,") for name, value in links.sources)
    assert "link" not in links.tags and "script" not in links.tags and "url(" not in page


def test_the_newest_figure_of_a_model_is_shown_whatever_its_name(sweep, monkeypatch):
    """A model drawn twice (a workflow's figure, then one drawn by hand under another name, or the
    reverse): the report shows the one drawn last, not the one whose name sorts last."""
    model = ArtifactStore(sweep).load("train-ldm/study-baseline-s2")
    for name, when in (("zz-by-hand", 1), ("aa-redrawn", 2)):
        moment = datetime.datetime(2030, 1, 1, 0, 0, when, tzinfo=datetime.timezone.utc)
        monkeypatch.setattr(datetime, "datetime", type("Clock", (datetime.datetime,), {"now": lambda *_: moment}))
        make_figure(sweep, model, "interchange", name=name)
        monkeypatch.undo()
    result = report(sweep, "--metrics", "eval-metrics/study-*")
    assert result.exit_code == 0, result.output
    artifact = ArtifactStore(sweep).load(result.stdout.strip())
    assert [e["ref"] for e in artifact.inputs("figure_0")] == ["visualize/aa-redrawn@v1"]


def test_a_variant_whose_models_differ_in_more_than_the_seed_is_named_key_by_key(tmp_path, dydis_warnings):
    root = tmp_path / "store"
    log = [{"step": 1, "loss": 0.5}]
    before_psi = make_ldm(root, "m-s1", 1, "dyga", log, "dyga", dyga={"lam": 0.1})  # made before dyga.psi existed
    same = make_ldm(root, "m-s2", 2, "dyga", log, "dyga", dyga={"lam": 0.1, "psi": 0.5, "merge": None})
    other = make_ldm(root, "m-s3", 3, "dyga", log, "dyga", dyga={"lam": 0.2, "psi": 0.25, "merge": None})
    make_metrics(root, "m", [before_psi, same, other], [0.1, 0.2, 0.3])
    assert report(root, "--metrics", "eval-metrics/m").exit_code == 0
    assert [r.getMessage() for r in dydis_warnings.records] == [
        f"variant dyga: {before_psi.ref} and {other.ref} differ in more than the seed (dyga.lam, dyga.psi)"]


def test_unpaired_seeds_give_an_interval_and_no_p_value(tmp_path):
    root = tmp_path / "store"
    base = [make_ldm(root, "a", seed, None, [{"step": 1, "loss": 1.0}], "none") for seed in (1, 2)]
    other = [make_ldm(root, "b", seed, None, [{"step": 1, "loss": 1.0}], "dyga") for seed in (3, 4)]
    make_metrics(root, "a", base, [0.1, 0.3])
    make_metrics(root, "b", other, [0.5, 0.5])
    result = report(root, "--metrics", "eval-metrics/a", "--metrics", "eval-metrics/b", "--name", "ab")
    assert result.exit_code == 0, result.output
    artifact = ArtifactStore(root).load("report/ab")
    (mig, _) = artifact.results["comparisons"]
    assert artifact.results["variants"] == ["a", "b"]  # the models' names: no sweep labelled them
    assert (mig["pairs"], mig["p_value"], mig["difference"]) == (0, None, pytest.approx(0.3))
    assert 0.2 - 1e-12 <= mig["low"] < mig["high"] <= 0.4 + 1e-12
    markdown = (artifact.path / "report.md").read_text()
    assert "No curves: the models' train_log.csv have no evaluation columns" in markdown
    assert not [f for f in artifact.manifest["files"] if f.startswith("curve_")]


def test_baseline_option_picks_the_variant_compared_with(sweep):
    result = report(sweep, "--metrics", "eval-metrics/study-*", "--baseline", "dyga")
    assert result.exit_code == 0, result.output
    results = ArtifactStore(sweep).load(result.stdout.strip()).results
    assert results["baseline"] == "dyga" and {c["variant"] for c in results["comparisons"]} == {"baseline"}
    assert results["comparisons"][0]["difference"] == pytest.approx(-0.2)


def test_report_names_the_factors_that_share_a_code(tmp_path):
    """From eval-metrics' FactorVAE votes: per variant, which factors' votes peak on one code, in how many
    models; a variant scored without FactorVAE has no votes and the table says so by its count."""
    root = tmp_path / "store"
    merged = {"hue": [80, 0, 0], "scale": [0, 70, 10], "shape": [0, 60, 20]}
    apart = {"hue": [80, 0, 0], "scale": [0, 70, 10], "shape": [0, 20, 60]}
    base = [make_ldm(root, f"v-base-s{seed}", seed, "base", [{"step": 1, "loss": 1.0}], "none") for seed in (1, 2, 3)]
    dyga = [make_ldm(root, f"v-dyga-s{seed}", seed, "dyga", [{"step": 1, "loss": 1.0}], "dyga") for seed in (1, 2)]
    make_metrics(root, "v-base", base, [0.1, 0.2, 0.3], votes=[merged, apart, merged])
    make_metrics(root, "v-dyga", dyga, [0.1, 0.2], votes=[apart, apart])
    result = report(root, "--metrics", "eval-metrics/v-*")
    assert result.exit_code == 0, result.output
    markdown = (Path(result.stdout.strip()) / "report.md").read_text()
    assert ("| variant | models | factors sharing a code (models) |\n|---|---|---|\n"
            "| base | 3 | scale + shape (2 of 3) |\n| dyga | 2 | none |") in markdown


def test_no_sharing_table_without_factor_vae_votes(sweep):
    result = report(sweep, "--metrics", "eval-metrics/study-*")
    assert result.exit_code == 0, result.output
    assert "share a unit" not in (Path(result.stdout.strip()) / "report.md").read_text()


@pytest.mark.parametrize("votes, expected", [
    ([90, 5], "AttributeError"),  # a list where {factor: votes per code} belongs
    ({"hue": [90, "many"]}, "ValueError"),
    ({"hue": [90, 5], "scale": [3]}, "one count per code"),
])
def test_malformed_factor_vae_votes_are_a_one_line_error(tmp_path, votes, expected):
    root = tmp_path / "store"
    model = make_ldm(root, "v-base", 1, "base", [{"step": 1, "loss": 1.0}], "none")
    metrics = make_metrics(root, "v-base", [model], [0.1], votes=[votes])
    result = report(root, "--metrics", "eval-metrics/v-base")
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "expected the scores eval-metrics writes" in result.stderr and expected in result.stderr
    assert str(metrics.path) in result.stderr


# ---- the real eval-metrics and downstream-gbt formats -------------------------------------------

def test_report_reads_what_eval_metrics_and_downstream_gbt_write(tmp_path):
    root = tmp_path / "store"
    factors = synthetic_dataset(str(root), "2,2,2,2,2,2")
    rng = np.random.default_rng(0)
    reps = []
    for i in range(2):
        reps += ["--reps", str(tmp_path / f"r{i}.npz")]
        np.savez(reps[-1], codes=factors + 0.1 * (i + 1) * rng.standard_normal(factors.shape))
    data = ["--data", "prepare-data/synthetic", *reps, "--n-jobs", "1", "--root", str(root)]
    scored = runner.invoke(app, ["eval-metrics", *data, "--metrics", "mig,sap,dci"])
    assert scored.exit_code == 0, scored.output
    downstream = runner.invoke(app, ["downstream-gbt", *data, "--sizes", "32,8", "--test-size", "16", "--seeds", "0"])
    assert downstream.exit_code == 0, downstream.output
    result = report(root, "--metrics", "eval-metrics/synthetic", "--downstream", "downstream-gbt/synthetic")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    with open(path / "report.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    runs = json.loads((Path(scored.stdout.strip()) / "metrics.json").read_text())["runs"]
    assert [float(r["value"]) for r in table if r["metric"] == "mig"] == [run["metrics"]["mig"] for run in runs]
    per_factor = {f"dci_accuracy_{name}": name for name in ("floor_hue", "wall_hue", "object_hue", "scale", "shape",
                                                             "orientation")}
    assert {r["metric"] for r in table} == {"mig", "sap", "dci_disentanglement", "dci_completeness",
                                            "dci_informativeness", *per_factor, "acc_32", "ratio_8"}
    for metric, factor in per_factor.items():  # DCI's test accuracy of each factor, as eval-metrics wrote it
        assert [float(r["value"]) for r in table if r["metric"] == metric] == [run["dci_test_accuracy"][factor]
                                                                              for run in runs]
    assert {(r["variant"], r["seed"]) for r in table} == {("synthetic", "")}  # files: one variant, no seeds
    assert "No curves: the scores come from representation files" in (path / "report.md").read_text()


# ---- the command: help and bad input --------------------------------------------------------------

def test_help():
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    assert "--metrics" in result.output and "--downstream" in result.output and "--baseline" in result.output


@pytest.mark.parametrize("args, expected", [
    (["--metrics", "train-ldm/study-dyga"], "expected a metrics artifact, found a ldm artifact written by train-ldm"),
    (["--downstream", "eval-metrics/study-dyga"], "expected a downstream artifact, found a metrics artifact"),
    (["--metrics", "eval-metrics/none-*"], "no artifact in the store"),
    (["--metrics", "eval-metrics/study-*", "--baseline", "fsq"], "config key baseline: no variant 'fsq'"),
    ([], "config keys metrics / downstream"),
])
def test_bad_input_is_a_one_line_error(sweep, args, expected):
    before = artifact_dirs(sweep)
    result = report(sweep, *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert artifact_dirs(sweep) == before and not (sweep / ".staging").exists()
