"""The conditioning probe: how much the U-Net's loss depends on which image's units it gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dydis.config import TrainLDMConfig, build_config
from dydis.training.batches import to_model_input
from dydis.training.conditioning import ConditioningProbe, partner_rows
from dydis.training.ldm import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_probe():
    cfg = build_config(TrainLDMConfig, flags={"data": "unused", "preset": "tiny", "max_steps": 1})
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 64, 64, 3), generator=generator, dtype=torch.uint8).numpy()
    latents = torch.randn(12, 3, 16, 16, generator=generator).numpy()
    return build_model(cfg).train(), ConditioningProbe(images, latents, seed=0)


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
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.unet.parameters():  # open the zero-initialised output layers
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        for _ in range(30):  # BatchNorm's running statistics of these images: at init they barely differ
            model.feature_extractor(to_model_input(probe.images))
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
