"""The conditioning probe: how much the U-Net's loss depends on which image's units it gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dydis.config import TrainLDMConfig, build_config
from dydis.training.batches import to_model_input
from dydis.metrics.ground_truth import grid_factors
from dydis.training.conditioning import ConditioningProbe, FactorGrid, partner_rows, single_factor_partners
from dydis.training.ldm import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_probe():
    cfg = build_config(TrainLDMConfig, flags={"data": "unused", "preset": "tiny", "max_steps": 1})
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 64, 64, 3), generator=generator, dtype=torch.uint8).numpy()
    latents = torch.randn(12, 3, 16, 16, generator=generator).numpy()
    return build_model(cfg).train(), ConditioningProbe(images, latents, seed=0)


def _opened(model, images: torch.Tensor):
    """The U-Net's zero-initialised output layers opened, and BatchNorm's running statistics those
    of ``images`` (at init they barely tell images apart)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.unet.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.train()
        for _ in range(30):
            model.feature_extractor(to_model_input(images))
    return model.eval()


@pytest.mark.parametrize("n", [2, 3, 17, 256])
def test_partners_are_a_seeded_permutation_without_fixed_points(n):
    partner = partner_rows(n, seed=0)
    assert sorted(partner) == list(range(n)) and not np.any(partner == np.arange(n))
    np.testing.assert_array_equal(partner, partner_rows(n, seed=0))


def test_units_the_u_net_cannot_see_give_no_gain():
    """At initialisation the U-Net's output layers (the transformers' and the last) are zero, so
    the units do not change its output: both losses are equal and the gain is exactly 0."""
    model, probe = _model_and_probe()
    scores = probe.measure(model, torch.device("cpu"))
    assert scores["cond_loss"] == scores["shuffled_loss"] > 0 and scores["conditioning_gain"] == 0.0


def test_units_the_u_net_reads_change_the_loss_and_the_probe_leaves_training_alone():
    model, probe = _model_and_probe()
    model = _opened(model, probe.images).train()
    rng, buffers = torch.get_rng_state(), {k: v.clone() for k, v in model.state_dict().items()}
    first = probe.measure(model, torch.device("cpu"))
    assert first["cond_loss"] != first["shuffled_loss"]
    assert first["conditioning_gain"] == pytest.approx(1 - first["cond_loss"] / first["shuffled_loss"])
    assert probe.measure(model, torch.device("cpu")) == first  # fixed batch, timesteps, noise and pairs
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    for name, value in model.state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(value, buffers[name]), name
    assert probe.timesteps(1000).tolist() == [41, 125, 208, 291, 375, 458, 541, 625, 708, 791, 875, 958]


def test_the_probe_rows_are_a_seeded_sample_of_all_rows():
    """Not the first rows: in a grid's canonical order those share their slow factors."""
    images = np.repeat((np.arange(600) % 256).astype(np.uint8)[:, None, None, None], 64, 1).repeat(64, 2).repeat(3, 3)
    latents = np.arange(600, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 16, 16), np.float32)
    probe = ConditioningProbe(images, latents, seed=0)
    rows = probe.latents[:, 0, 0, 0].long()
    assert len(rows) == 256 and rows.unique().numel() == 256 and rows.max() > 500 and rows.tolist() != list(range(256))
    assert torch.equal(probe.images[:, 0, 0, 0], (rows % 256).to(torch.uint8))  # images and latents stay paired
    assert torch.equal(rows, ConditioningProbe(images, latents, seed=0).latents[:, 0, 0, 0].long())


def test_single_factor_partners_differ_in_that_factor_only():
    sizes = (2, 3, 4)
    factors = grid_factors(sizes)
    rows = np.arange(0, 24, 5)
    partners = single_factor_partners(factors, sizes, rows, seed=0)
    assert partners.shape == (3, len(rows))
    for j in range(3):
        differ = factors[partners[j]] != factors[rows]
        assert differ[:, j].all() and not np.delete(differ, j, axis=1).any()
    np.testing.assert_array_equal(partners, single_factor_partners(factors, sizes, rows, seed=0))
    subset = np.flatnonzero(factors[:, 0] == 0)  # half the grid: the first factor's partners are missing
    found = single_factor_partners(factors[subset], sizes, np.arange(len(subset)), seed=0)
    assert (found[0] == -1).all() and (found[1:] >= 0).all()


def test_the_gain_per_factor_swaps_each_image_for_its_single_factor_partner():
    """A grid of two factors drawn into the images: the per-factor gain is the probe's loss with the
    units of the image that differs in that factor only; 0 at initialisation; a factor without
    partners in the dataset (a subset of the grid) has no column, one with some is measured on those."""
    sizes = (4, 5)
    factors = grid_factors(sizes)
    images = np.zeros((20, 64, 64, 3), np.uint8)
    images[:, :32] = (factors[:, 0] * 60)[:, None, None, None]  # top half: factor 0; bottom half: factor 1
    images[:, 32:] = (factors[:, 1] * 50)[:, None, None, None]
    latents = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    cfg = build_config(TrainLDMConfig, flags={"data": "unused", "preset": "tiny", "max_steps": 1})
    model = build_model(cfg).eval()
    grid = FactorGrid(images.__getitem__, factors, sizes, ("top", "bottom"), np.arange(20))
    probe = ConditioningProbe(images, latents, seed=0, grid=grid)
    assert probe.columns == ("cond_loss", "shuffled_loss", "conditioning_gain", "conditioning_gain_top",
                             "conditioning_gain_bottom")
    at_init = probe.measure(model, torch.device("cpu"))
    assert at_init["conditioning_gain_top"] == at_init["conditioning_gain_bottom"] == 0.0

    scores = probe.measure(_opened(model, probe.images), torch.device("cpu"))
    keep, partners = probe.swaps["top"]
    assert len(keep) == 20 and np.all(partners[:, 0, 0, 0].numpy() != probe.images[:, 0, 0, 0].numpy())
    assert np.all(partners[:, 40, 0, 0].numpy() == probe.images[:, 40, 0, 0].numpy())  # the other factor kept
    with torch.no_grad():
        t = probe.timesteps(model.diffusion.num_timesteps)
        swapped = model.diffusion.training_loss(model.unet, probe.latents, model.condition(to_model_input(partners)),
                                                t=t, noise=probe.noise).loss.item()
    assert scores["conditioning_gain_top"] == pytest.approx(1 - scores["cond_loss"] / swapped)
    assert scores["conditioning_gain_top"] != 0 and scores["conditioning_gain_bottom"] != 0

    half = np.flatnonzero(factors[:, 1] < 3)  # bottom values 3 and 4 missing: some rows lack a bottom partner
    sub = FactorGrid(images[half].__getitem__, factors[half], sizes, ("top", "bottom"), np.arange(len(half)))
    partial = ConditioningProbe(images[half], latents[half], seed=0, grid=sub)
    keep, _ = partial.swaps["bottom"]
    assert 0 < len(keep) < len(half) and set(partial.measure(model, torch.device("cpu"))) == set(partial.columns)
    only_top = FactorGrid(images[:4].__getitem__, factors[:4], sizes, ("top", "bottom"), np.arange(4))  # bottom 0..3, top 0
    assert ConditioningProbe(images[:4], latents[:4], seed=0, grid=only_top).factor_columns == (
        "conditioning_gain_bottom",)
