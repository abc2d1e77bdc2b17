"""The diffusion process: schedule, q_sample, loss and DDIM sampling / inversion with oracle models."""

from __future__ import annotations

import math

import pytest
import torch

from dydis.models.config import UNET_PRESETS, DiffusionConfig
from dydis.models.diffusion import GaussianDiffusion
from dydis.models.unet import UNet

DIFFUSION = GaussianDiffusion(DiffusionConfig())


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def gaussian_oracle(diffusion: GaussianDiffusion, mean: float, std: float):
    """The exact eps model for data x0 ~ N(mean, std^2) per element:
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mean) / (a std^2 + 1 - a), a = abar_t."""
    def model(x, t, context):
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * std ** 2 + 1 - a)
    return model


def point_oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The exact eps model when the data is the single latent x0."""
    def model(x, t, context):
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return model


def test_beta_schedule_values_at_both_ends():
    betas = DIFFUSION.betas
    assert betas.dtype == torch.float32 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-6)
    assert betas[-1].item() == pytest.approx(0.0155, rel=1e-6)
    mid = (math.sqrt(0.0015) + 499 / 999 * (math.sqrt(0.0155) - math.sqrt(0.0015))) ** 2
    assert betas[499].item() == pytest.approx(mid, rel=1e-6)
    assert (betas.diff() > 0).all()
    expected_last = torch.cumprod(1 - DIFFUSION.betas.double(), 0)[-1].item()
    assert DIFFUSION.alphas_cumprod[-1].item() == pytest.approx(expected_last, rel=1e-4)
    assert DIFFUSION.alphas_cumprod[-1].item() < 1e-3  # x_T is nearly pure noise


def test_q_sample_statistics():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4000, 3, 4, 4), 2.0)
    t = torch.full((4000,), 300)
    noise = torch.randn(x0.shape, generator=g)
    xt = DIFFUSION.q_sample(x0, t, noise)
    a = DIFFUSION.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(2.0 * math.sqrt(a), abs=0.01)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - a), abs=0.01)
    torch.testing.assert_close(DIFFUSION.q_sample(x0, torch.zeros(4000, dtype=torch.long), noise)[:1],
                               math.sqrt(DIFFUSION.alphas_cumprod[0].item()) * x0[:1]
                               + math.sqrt(1 - DIFFUSION.alphas_cumprod[0].item()) * noise[:1])


@pytest.mark.parametrize("kind, zero_model_loss", [("l1", math.sqrt(2 / math.pi)), ("l2", 1.0)])
def test_training_loss(kind, zero_model_loss):
    diffusion = GaussianDiffusion(DiffusionConfig(loss=kind))
    x0 = torch.randn(512, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = diffusion.training_loss(lambda x, t, c: torch.zeros_like(x), x0, None,
                                  generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(zero_model_loss, rel=0.02)
    assert out.per_sample.shape == (512,) and out.t.min() >= 0 and out.t.max() < 1000
    assert len(out.t.unique()) > 100
    again = diffusion.training_loss(lambda x, t, c: torch.zeros_like(x), x0, None,
                                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.t, again.t) and torch.equal(out.noise, again.noise)
    oracle = point_oracle(diffusion, x0)
    assert diffusion.training_loss(oracle, x0, None, generator=torch.Generator().manual_seed(0)).loss < 1e-3


def test_loss_drives_a_unet_with_its_generator():
    unet = UNet(UNET_PRESETS["tiny"]).train()
    x0, context = torch.randn(2, 3, 16, 16), torch.rand(2, 6, 32)
    out = DIFFUSION.training_loss(unet, x0, context, generator=torch.Generator().manual_seed(0),
                                  model_kwargs={"generator": torch.Generator().manual_seed(1)})
    out.loss.backward()
    assert out.loss.ndim == 0 and next(unet.parameters()).grad is not None


def test_ddim_grid():
    grid = DIFFUSION.ddim_timesteps(100)
    assert grid.tolist() == list(range(1, 1000, 10))  # LDM's uniform grid
    assert DIFFUSION.ddim_timesteps(1000).tolist() == list(range(1, 1000))
    assert DIFFUSION.ddim_timesteps(1).tolist() == [1]


def test_ddim_with_a_point_oracle_recovers_the_point():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 4, 4, generator=g)
    for eta in (0.0, 1.0):
        out = DIFFUSION.ddim_sample(point_oracle(DIFFUSION, x0), None, shape=(3, 3, 4, 4), steps=100, eta=eta,
                                    generator=g)
        torch.testing.assert_close(out.pred_x0, x0, atol=1e-4, rtol=1e-4)
        a0 = DIFFUSION.alphas_cumprod[0].item()
        assert (out.x - math.sqrt(a0) * x0).abs().max() < 0.2  # the last level abar_0 keeps a little noise


def test_ddim_1000_steps_eta_0_and_1_sample_the_data_distribution():
    mean, std = 0.5, 0.3
    model = gaussian_oracle(DIFFUSION, mean, std)
    x_T = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a0 = DIFFUSION.alphas_cumprod[0].item()
    want_mean, want_std = math.sqrt(a0) * mean, math.sqrt(a0 * std ** 2 + 1 - a0)  # the marginal at abar_0
    runs = {}
    for eta, seed in ((0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)):
        x = DIFFUSION.ddim_sample(model, None, x_T=x_T, steps=1000, eta=eta,
                                  generator=torch.Generator().manual_seed(seed)).x
        assert x.mean().item() == pytest.approx(want_mean, abs=0.02)
        assert x.std().item() == pytest.approx(want_std, rel=0.05)
        runs[eta, seed] = x
    assert torch.equal(runs[0.0, 1], runs[0.0, 2])  # eta 0: deterministic given x_T
    assert not torch.allclose(runs[1.0, 1], runs[1.0, 2])  # eta 1: fresh noise from the generator
    again = DIFFUSION.ddim_sample(model, None, x_T=x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x, runs[1.0, 1])  # ... and reproducible


def test_ddim_inversion_then_sampling_reconstructs_x0():
    mean, std = 0.5, 0.3
    model = gaussian_oracle(DIFFUSION, mean, std)
    x0 = mean + std * torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (100, 1000):
        x_T = DIFFUSION.ddim_invert(model, x0, None, steps=steps)
        assert x_T.std().item() == pytest.approx(1.0, abs=0.1)  # the data is mapped onto noise
        back = DIFFUSION.ddim_sample(model, None, x_T=x_T, steps=steps, eta=0.0).x
        errors[steps] = (back - x0).abs().mean().item()
    # both directions are first-order (Euler) steps of the same ODE: the round trip is exact only
    # in the limit, and its error shrinks like 1 / steps
    assert errors[100] < 0.04 and errors[1000] < 5e-3
    assert errors[1000] < errors[100] / 5


def test_ddim_inversion_is_exact_for_a_point_oracle():
    x0 = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = point_oracle(DIFFUSION, x0)
    x_T = DIFFUSION.ddim_invert(model, x0 * math.sqrt(DIFFUSION.alphas_cumprod[0].item()), None, steps=50)
    back = DIFFUSION.ddim_sample(model, None, x_T=x_T, steps=50).pred_x0
    torch.testing.assert_close(back, x0, atol=1e-4, rtol=1e-4)


def test_ddim_runs_the_ema_copy_of_a_unet():
    from dydis.models.ema import EMA

    torch.manual_seed(0)
    unet = UNet(UNET_PRESETS["tiny"])
    ema = EMA(unet)
    ema.update(unet)
    context = torch.rand(2, 6, 32)
    calls = []
    out = DIFFUSION.ddim_sample(ema.module, context, shape=(2, 3, 16, 16), steps=5,
                                generator=torch.Generator().manual_seed(0), callback=lambda i, n: calls.append((i, n)))
    assert out.x.shape == out.pred_x0.shape == (2, 3, 16, 16) and torch.isfinite(out.x).all()
    assert calls == [(i, 5) for i in range(1, 6)]
    x_T = DIFFUSION.ddim_invert(ema.module, out.x, context, steps=5)
    assert x_T.shape == (2, 3, 16, 16)
