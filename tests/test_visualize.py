"""`dydis visualize`: the figure computations on a tiny random model, and the command end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dydis.cli.main import app
from dydis.config import VisualizeConfig, build_config
from dydis.dyga import DyGA
from dydis.models.config import (FEATURE_EXTRACTOR_PRESETS, UNET_PRESETS, VQGAN_PRESETS, DiffusionConfig)
from dydis.models.ldm import LatentDiffusion
from dydis.models.unet import record_cross_attention
from dydis.models.vqgan import VQGAN
from dydis.training.ldm import Anchors
from dydis.viz import figures
from dydis.viz.attention import normalize_maps, token_maps, unit_attention
from dydis.viz.curves import run_curves
from dydis.viz.interchange import interchange_contexts, latent_interchange
from dydis.viz.interpolate import interpolation_contexts
from dydis.viz.sampler import Sampler
from dydis.viz.units import unit_anchors, unit_factor_nmi, unit_panels

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
N_UNITS = 3


@pytest.fixture(scope="module")
def sampler():
    """A tiny model with perturbed weights, so that its samples depend on the condition (an
    untrained U-Net's zero output layers predict eps = 0 whatever it is given)."""
    torch.manual_seed(0)
    model = LatentDiffusion(dataclasses.replace(FEATURE_EXTRACTOR_PRESETS["tiny"], latent_units=N_UNITS),
                            UNET_PRESETS["tiny"], DiffusionConfig())
    vqgan = VQGAN(dataclasses.replace(VQGAN_PRESETS["tiny"], ch=8, norm_groups=4, n_embed=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Sampler(model.eval(), vqgan.eval(), scale_factor=1.5, steps=3, batch_size=16)


@pytest.fixture(scope="module")
def images():
    """Two noise images, then a black and a white one (whose units differ from the first two)."""
    images = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    images[2], images[3] = 0, 255
    return images


def test_interchange_contexts_swap_one_unit_per_cell():
    source, target = torch.zeros(2, N_UNITS, 4), torch.ones(2, N_UNITS, 4)
    cells = interchange_contexts(source, target)
    assert cells.shape == (2, N_UNITS + 1, N_UNITS, 4)
    swapped = cells[..., 0]  # (p, cell, unit): 1 where the unit came from the target
    assert torch.equal(swapped[0], torch.cat([torch.zeros(1, N_UNITS), torch.eye(N_UNITS)]))


def test_interchange_with_its_own_units_reproduces_the_unchanged_sample(sampler, images):
    same = latent_interchange(sampler, images[:2], images[:2], seed=3)
    assert same.shape == (2, N_UNITS + 1, 64, 64, 3) and same.dtype == np.uint8
    assert (same == same[:, :1]).all()  # same noise, same condition: the very same image
    swapped = latent_interchange(sampler, images[:2], images[2:], seed=3)
    assert (swapped[:, 0] == same[:, 0]).all()  # the reference cell ignores the target
    assert (swapped[:, 1:] != swapped[:, :1]).any()  # a swapped unit changes the sample


def test_interpolation_runs_from_one_units_to_the_other():
    start, end = torch.zeros(2, N_UNITS, 4), torch.full((2, N_UNITS, 4), 2.0)
    line = interpolation_contexts(start, end, 5)
    assert torch.equal(line[:, 0], start) and torch.equal(line[:, -1], end)
    assert torch.allclose(line[:, 2], torch.ones(2, N_UNITS, 4))


def test_token_maps_stay_non_negative_and_normalised_over_tokens():
    probs = torch.randn(2, 4, 8, 8, N_UNITS).softmax(-1)  # what a cross-attention layer records
    maps = token_maps(probs, 64)
    assert maps.shape == (2, N_UNITS, 64, 64) and (maps >= 0).all()
    assert torch.allclose(maps.sum(1), torch.ones(2, 64, 64), atol=1e-6)


def test_recorded_maps_are_softmaxes_over_the_unit_tokens(sampler, images):
    context = sampler.units(images[:2])
    with record_cross_attention(sampler.model.unet) as recorded:
        sampler.model.unet(torch.randn(2, *sampler.latent_shape), torch.tensor([5, 500]), context)
    layers = list(recorded.values())
    assert len(layers) == len(list(sampler.model.unet.cross_attention_layers()))
    for (probs,) in layers:
        assert probs.shape[-1] == N_UNITS and (probs >= 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)


def test_unit_attention_averages_maps_that_share_out_each_pixel(sampler, images):
    result = unit_attention(sampler, images[:3])
    assert result.maps.shape == (3, N_UNITS, 64, 64) and result.regenerated.shape == (3, 64, 64, 3)
    assert (result.maps >= 0).all() and np.allclose(result.maps.sum(1), 1.0, atol=1e-5)
    shown = normalize_maps(result.maps)
    assert shown.min() >= 0 and np.allclose(shown.max(axis=(2, 3)), 1.0)


def constructed_units(n: int = 600):
    """Codes where unit 2 encodes factor 0 and unit 0 encodes factor 1; unit 1 is noise."""
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 5, n), rng.integers(0, 4, n)], axis=1)
    units = rng.normal(0, 0.05, size=(n, 3, 4))
    units[:, 2] += factors[:, :1] * np.array([1.0, 0.5, -1.0, 0.2])
    units[:, 0] += factors[:, 1:] * np.array([-0.3, 1.0, 0.4, 0.7])
    return units, factors


def test_units_plot_picks_the_unit_with_the_highest_nmi():
    units, factors = constructed_units()
    nmi = unit_factor_nmi(units, factors)
    assert nmi.shape == (3, 2) and nmi.argmax(0).tolist() == [2, 0]
    assert nmi[2, 0] > 0.9 and nmi[1].max() < 0.1
    panels, _ = unit_panels(units, factors, ("f0", "f1"), None, "pca", seed=0)
    assert [(p.factor, p.unit) for p in panels] == [("f0", 2), ("f1", 0)]
    assert panels[0].points.shape == (600, 2) and panels[0].anchors.shape == (0, 2)


def test_units_plot_marks_the_anchors_of_the_chosen_unit():
    units, factors = constructed_units(300)
    features = torch.from_numpy(units[:, [2, 0]]).float()  # (n, U, D)
    dyga = DyGA(n_init=3, max_components=6, max_iter=30, random_state=0).fit(features)
    anchors = Anchors([([2, 0], dyga)])
    expected = dyga.anchors_[0][dyga.component_mask_[0]].numpy()
    assert np.array_equal(unit_anchors(anchors, 2), expected)
    panels, _ = unit_panels(units, factors, ("f0", "f1"), anchors, "pca", seed=0)
    assert panels[0].anchors.shape == (len(expected), 2)


# ---- the command ------------------------------------------------------------------------

VQ_TINY = ["--preset", "tiny", "--max-steps", "1", "--batch-size", "8", "--set", "model.ch=8",
           "--set", "model.norm_groups=4", "--set", "model.n_embed=32", "--set", "loss.disc_width=8",
           "--set", "holdout=8"]
LDM_TINY = ["--preset", "tiny", "--max-steps", "4", "--batch-size", "8", "--latent-units", str(N_UNITS),
            "--set", "dyga.subsample=32", "--set", "dyga.max_components=4", "--set", "dyga.max_iter=5",
            "--set", "diffusion.ddim_steps=2", "--set", "sample_images=2"]
FAST = ["--ddim-steps", "2", "--pairs", "2", "--images", "2", "--frames", "3", "--points", "32"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 32-image synthetic dataset, a vqgan and an ldm (3 units, one DyGA round) trained on it."""
    root = tmp_path_factory.mktemp("store")
    runs = tmp_path_factory.mktemp("runs")  # its own: another module's run of the same name holds a checkpoint
    for args in (["prepare-data", "--dataset", "synthetic", "--grid", "2,2,2,1,2,2"],
                 ["train-vqgan", "--data", "prepare-data/synthetic", *VQ_TINY, "--runs", str(runs)],
                 ["train-ldm", "--dataset", "synthetic", *LDM_TINY, "--runs", str(runs)]):
        made = runner.invoke(app, [*args, "--root", str(root)])
        assert made.exit_code == 0, made.output
    return root


@pytest.mark.parametrize("what", ["interchange", "attention", "interpolate", "units", "curves"])
def test_visualize_writes_the_figure_into_a_viz_artifact(store, what):
    models = ["--model", "train-ldm/synthetic"] * (2 if what == "curves" else 1)
    result = runner.invoke(app, ["visualize", what, *models, *FAST, "--root", str(store)])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    assert result.stdout == path + "\n" and path.endswith(f"visualize/synthetic-{what}/v1")
    manifest = yaml.safe_load(open(f"{path}/manifest.yaml"))
    assert manifest["kind"] == "viz" and f"{what}.png" in manifest["files"]
    roles = {i["role"] for i in manifest["inputs"]}
    assert roles == ({"model", "model_1"} if what == "curves" else {"model", "data"})
    width, height = Image.open(f"{path}/{what}.png").size
    assert width > 200 and height > 150
    if what == "units":  # the figure's choice is on record: per factor, the unit of highest NMI
        results = manifest["results"]
        nmi = np.array(results["nmi"])
        assert nmi.shape == (N_UNITS, 6) and results["points"] == 32
        assert [results["best_units"][f]["unit"] for f in results["best_units"]] == nmi.argmax(0).tolist()


@pytest.mark.parametrize("args, message", [
    (["interchange", "--model", "prepare-data/synthetic"], "expected a ldm artifact, found a dataset artifact"),
    (["attention", "--model", "train-ldm/synthetic", "--model", "train-ldm/synthetic"], "attention shows one model"),
    (["interchange", "--model", "train-ldm/synthetic", "--pairs", "40"], "needs 80 distinct images"),
])
def test_visualize_bad_input_is_one_line_and_exit_2(store, args, message):
    result = runner.invoke(app, ["visualize", *args, "--root", str(store)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_the_old_name_of_frames_still_works_with_one_warning(store):
    """--frames was --steps (it counts images, and read like --ddim-steps): the old option and
    config key still set it, with a warning naming the new one; both at once is an error."""
    result = runner.invoke(app, ["visualize", "interpolate", "--model", "train-ldm/synthetic", *FAST[:4], "--steps", "3",
                                 "--name", "old-steps", "--root", str(store)])
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())
    assert stderr.count("--steps is renamed --frames") == 1
    manifest = yaml.safe_load(open(f"{result.stdout.strip()}/manifest.yaml"))
    assert manifest["config"]["frames"] == 3 and "steps" not in manifest["config"]
    both = runner.invoke(app, ["visualize", "interpolate", "--model", "train-ldm/synthetic", "--steps", "3",
                               "--frames", "3", "--root", str(store)])
    assert both.exit_code == 2 and "--steps and --frames: one setting under two names" in both.stderr
    assert build_config(VisualizeConfig, flags={"what": "interpolate", "models": ["m"]}, overrides=["steps=5"]).frames == 5


def test_curves_read_the_gradient_norm_and_delta_columns_where_they_exist(tmp_path):
    old = [{"step": "1", "epoch": "0.5", "loss": "0.9", "anchors": ""}]  # a log from before the columns
    new = [{"step": "1", "epoch": "0.5", "loss": "0.9", "anchors": "", "extractor_grad_norm": "0.2"},
           {"step": "2", "epoch": "1.0", "loss": "0.8", "anchors": "2 3", "extractor_grad_norm": "0.3",
            "delta_mean": "0.05", "delta_below_1e-3": "0.25"}]
    rounds = [{"step": "1", "epoch": "0", "anchors": "2 3"}]
    curves = run_curves("new", new, rounds)
    np.testing.assert_array_equal(curves.grad_norm, [0.2, 0.3])
    assert np.isnan(curves.delta_mean[0]) and curves.delta_mean[1] == 0.05 and curves.delta_small[1] == 0.25
    assert np.isnan(run_curves("old", old, []).grad_norm).all()
    path = tmp_path / "curves.png"
    figures.training_curves([curves, run_curves("old", old, [])], path, "t")
    assert path.stat().st_size > 0
