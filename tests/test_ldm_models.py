"""The latent diffusion networks: feature extractor, U-Net with Skip Dropout, FSQ and EMA."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dydis.config import from_dict
from dydis.errors import ConfigError
from dydis.models.config import (FEATURE_EXTRACTOR_PRESETS, UNET_PRESETS, FeatureExtractorConfig, FSQConfig,
                                 UNetConfig)
from dydis.models.ema import EMA
from dydis.models.feature_extractor import FeatureExtractor
from dydis.models.fsq import FSQ
from dydis.models.unet import ChannelDropout, SpatialTransformer, UNet, record_cross_attention


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_unet(**changes) -> UNet:
    torch.manual_seed(0)
    return UNet(dataclasses.replace(UNET_PRESETS["tiny"], **changes))


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Give every parameter (zero-initialised ones included) random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


# ---- parameter counts and shapes -----------------------------------------------------------

def test_paper_presets_match_the_authors_parameter_counts():
    with torch.device("meta"):  # why: counts only; no 61M-parameter initialisation
        unet = UNet(UNET_PRESETS["paper"])
        extractor = FeatureExtractor(FEATURE_EXTRACTOR_PRESETS["paper"])
    assert count(unet) == 37_549_507
    assert count(extractor) == 23_570_324
    # the spatial transformers: 6 in the encoder, 1 in the middle, 9 in the decoder (DESIGN 5)
    assert sum(isinstance(m, SpatialTransformer) for m in unet.modules()) == 16


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_feature_extractor_shapes_and_scalars(preset):
    cfg = FEATURE_EXTRACTOR_PRESETS[preset]
    extractor = FeatureExtractor(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = extractor(x)
        assert out.units.shape == (2, cfg.latent_units, 32)
        assert out.scalars.shape == (2, cfg.latent_units)
        assert torch.equal(out.units, extractor.unit_mlps(out.scalars))
    assert (out.units >= 0).all()  # the authors' final ReLU (DESIGN 9 row 2)


def test_feature_extractor_can_drop_the_final_relu():
    torch.manual_seed(0)
    extractor = FeatureExtractor(dataclasses.replace(FEATURE_EXTRACTOR_PRESETS["tiny"], final_relu=False)).eval()
    with torch.no_grad():
        units = extractor(torch.rand(8, 3, 64, 64) * 2 - 1).units
    assert (units < 0).any()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_he_init_carries_the_images_spread_to_the_tokens(preset):
    """With PyTorch's default init every linear layer shrinks its input's spread, so the tokens of
    different images are nearly equal at step 0; He init keeps the spread (FeatureExtractorConfig.init)."""
    images = torch.rand(64, 3, 64, 64) * 2 - 1
    extractors, spread = {}, {}
    for init in ("torch", "he"):
        torch.manual_seed(0)
        extractors[init] = FeatureExtractor(dataclasses.replace(FEATURE_EXTRACTOR_PRESETS[preset], init=init)).train()
        with torch.no_grad():
            spread[init] = extractors[init](images).units.std(dim=0).mean().item()
    assert spread["he"] > 20 * spread["torch"]
    he = extractors["he"]
    for layer in [m for m in he.head if isinstance(m, nn.Linear)] + list(he.unit_mlps.layers):
        fan_in = layer.weight.shape[1]  # nn.Linear (out, in); GroupedLinear (groups, in, out)
        assert torch.count_nonzero(layer.bias) == 0
        assert abs(layer.weight.std().item() / (2.0 / fan_in) ** 0.5 - 1) < 0.2


def test_feature_extractor_init_is_checked():
    with pytest.raises(ConfigError, match="feature_extractor.init"):
        dataclasses.replace(FEATURE_EXTRACTOR_PRESETS["tiny"], init="xavier")


def test_unit_mlps_batched_equal_a_loop_over_units():
    torch.manual_seed(0)
    cfg = FEATURE_EXTRACTOR_PRESETS["tiny"]
    mlps = FeatureExtractor(cfg).unit_mlps
    scalars = torch.randn(5, cfg.latent_units)
    batched = mlps(scalars)
    for i in range(cfg.latent_units):
        layers = []
        for k, grouped in enumerate(mlps.layers):
            linear = nn.Linear(*grouped.weight.shape[1:])
            linear.weight.data = grouped.weight.data[i].t()
            linear.bias.data = grouped.bias.data[i]
            layers += [linear, nn.ReLU()]
        alone = nn.Sequential(*layers)(scalars[:, i:i + 1])
        torch.testing.assert_close(batched[:, i], alone)


def test_unit_mlp_gradients_keep_the_weights_layout():
    # DDP buckets gradients with the parameters' strides and warns on every step otherwise;
    # the first layer (1 input per unit) is where einsum used to break that
    mlps = FeatureExtractor(FEATURE_EXTRACTOR_PRESETS["tiny"]).unit_mlps
    assert mlps.layers[0].weight.shape[1] == 1
    mlps(torch.randn(3, mlps.layers[0].weight.shape[0])).square().sum().backward()
    for param in mlps.parameters():
        assert param.grad.stride() == param.stride()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_unet_shapes(preset):
    unet = UNet(UNET_PRESETS[preset]).eval()
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.rand(2, 7, 32)
    with torch.no_grad():
        assert unet(x, t, c).shape == (2, 3, 16, 16)


def test_paper_unet_forward_shape():
    unet = UNet(UNET_PRESETS["paper"]).eval()
    with torch.no_grad():
        eps = unet(torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.rand(1, 20, 32))
    assert eps.shape == (1, 3, 16, 16)


# ---- Skip Dropout ----------------------------------------------------------------------------

def test_code_and_paper_levels_pick_the_blocks_design_describes():
    paper = UNet(UNET_PRESETS["paper"])
    assert paper.output_ds == (8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1)
    assert UNET_PRESETS["paper"].dropout_ds == (1, 2)  # widths 16 and 8 are not in [1, 2, 4]
    assert paper.dropout_blocks == (6, 7, 8, 9, 10, 11)  # the last six output blocks
    paper_text = dataclasses.replace(UNET_PRESETS["paper"], skip_dropout_levels="paper")
    assert paper_text.dropout_ds == (8,)  # the only level without cross-attention
    with torch.device("meta"):
        assert UNet(paper_text).dropout_blocks == (0, 1, 2)
        assert UNet(dataclasses.replace(paper_text, skip_dropout_levels=(4,))).dropout_blocks == (3, 4, 5)
    for preset in ("small", "tiny"):  # the smaller presets keep the same levels
        assert UNET_PRESETS[preset].dropout_ds == (1, 2)


def test_channel_dropout_mask_shape_statistics_and_rescale():
    drop = ChannelDropout(0.2).train()
    x = torch.ones(400, 64, 3, 3)
    y = drop(x, torch.Generator().manual_seed(0))
    per_channel = y[:, :, :1, :1]
    assert torch.equal(y, per_channel.expand_as(y))  # one value per sample and channel
    values = set(per_channel.unique().tolist())
    assert values <= {0.0, 1.25}
    kept = (per_channel > 0).float().mean().item()
    assert kept == pytest.approx(0.8, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.015)  # rescaled: expectation preserved
    again = drop(x, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)  # masks come from the generator only
    assert torch.equal(drop.eval()(x), x)


def _block_inputs(unet: UNet, generator: torch.Generator | None):
    """Run the U-Net once; return its skips (in pop order), the middle output and each output
    block's input and output."""
    skips, inputs, outputs = [], [], []
    hooks = [m.register_forward_hook(lambda m, a, out: skips.append(out)) for m in unet.input_blocks]
    hooks += [m.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for m in unet.output_blocks]
    hooks += [m.register_forward_hook(lambda m, a, out: outputs.append(out)) for m in unet.output_blocks]
    middle = []
    hooks.append(unet.middle_block.register_forward_hook(lambda m, a, out: middle.append(out)))
    g = torch.Generator().manual_seed(1)
    x, t, c = torch.randn(4, 3, 16, 16, generator=g), torch.tensor([3, 50, 400, 999]), torch.rand(4, 6, 32, generator=g)
    with torch.no_grad():
        unet(x, t, c, generator=generator)
    for h in hooks:
        h.remove()
    return skips[::-1], [middle[0], *outputs[:-1]], inputs


def _mask_ratio(masked: torch.Tensor, clean: torch.Tensor, rate: float) -> None:
    """masked == clean * m with m in {0, 1/(1-rate)} per (sample, channel), some of each."""
    scale = 1.0 / (1.0 - rate)
    kept = (masked.abs().sum((2, 3)) > 0)
    expected = clean * kept[:, :, None, None] * scale
    torch.testing.assert_close(masked, expected)
    assert kept.any() and (~kept).any()


@pytest.mark.parametrize("variant", ["skip", "backbone"])
def test_dropout_touches_only_the_configured_blocks_and_only_in_training(variant):
    rate = 0.5
    changes = {"skip_dropout": rate, "backbone_dropout": 0.0} if variant == "skip" else \
        {"skip_dropout": 0.0, "backbone_dropout": rate}
    unet = perturb_(tiny_unet(dropout=0.0, **changes))
    assert unet.dropout_blocks == (4, 5, 6, 7)
    for mode in ("train", "eval"):
        unet.train(mode == "train")
        skips, backbones, inputs = _block_inputs(unet, torch.Generator().manual_seed(2))
        for j, (skip, backbone, block_input) in enumerate(zip(skips, backbones, inputs)):
            got_backbone, got_skip = block_input[:, :backbone.shape[1]], block_input[:, backbone.shape[1]:]
            touched = mode == "train" and j in unet.dropout_blocks
            if touched and variant == "skip":
                _mask_ratio(got_skip, skip, rate)
                torch.testing.assert_close(got_backbone, backbone)
            elif touched:
                _mask_ratio(got_backbone, backbone, rate)
                torch.testing.assert_close(got_skip, skip)
            else:
                torch.testing.assert_close(got_skip, skip, rtol=0, atol=0)
                torch.testing.assert_close(got_backbone, backbone, rtol=0, atol=0)


# ---- transformer and conditioning ---------------------------------------------------------

def test_spatial_transformer_is_the_identity_at_init():
    torch.manual_seed(0)
    block = SpatialTransformer(16, heads=2, depth=1, context_dim=32, groups=8)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block(x, torch.rand(2, 5, 32)), x, rtol=0, atol=0)


def test_conditioning_changes_the_output_once_weights_are_non_zero():
    unet = tiny_unet().eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 700])
    c1, c2 = torch.rand(2, 6, 32), torch.rand(2, 6, 32)
    with torch.no_grad():
        assert torch.equal(unet(x, t, c1), unet(x, t, c2))  # zero output conv and proj_out at init
        perturb_(unet)
        assert (unet(x, t, c1) - unet(x, t, c2)).abs().max() > 1e-3
        for module in unet.modules():  # the context enters only through the transformers
            if isinstance(module, SpatialTransformer):
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
        torch.testing.assert_close(unet(x, t, c1), unet(x, t, c2))


def test_attention_hook_gives_maps_that_sum_to_one_over_the_tokens():
    unet = perturb_(tiny_unet()).eval()
    n_tokens = 6
    with torch.no_grad(), record_cross_attention(unet) as maps:
        unet(torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3]), torch.rand(3, n_tokens, 32))
    assert len(maps) == sum(isinstance(m, SpatialTransformer) for m in unet.modules()) == 10
    sides = set()
    for calls in maps.values():
        (probs,) = calls
        b, heads, h, w, n = probs.shape
        assert (b, heads, n) == (3, 2, n_tokens) and h == w and probs.dtype == torch.float32
        sides.add(h)
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(b, heads, h, w))
    assert sides == {16, 8, 4, 2}
    assert all(layer.hook is None for _, layer in unet.cross_attention_layers())


def test_a_tiny_model_fits_a_fixed_batch():
    torch.manual_seed(0)
    unet = UNet(UNET_PRESETS["tiny"])
    extractor = FeatureExtractor(FEATURE_EXTRACTOR_PRESETS["tiny"])
    opt = torch.optim.AdamW([*unet.parameters(), *extractor.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    images, z = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, 3, 16, 16)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn(4, 3, 16, 16, generator=g)
    losses = []
    for _ in range(15):
        eps = unet(z + noise, t, extractor(images).units, generator=g)
        loss = (eps - noise).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ---- config ------------------------------------------------------------------------------

def test_config_checks_and_yaml_values():
    with pytest.raises(ConfigError, match="skip_dropout_levels"):
        UNetConfig(skip_dropout_levels=(3,))
    with pytest.raises(ConfigError, match="skip_dropout"):
        UNetConfig(skip_dropout=1.0)
    with pytest.raises(ConfigError, match="norm_groups"):
        UNetConfig(model_channels=48)
    with pytest.raises(ConfigError, match="image_size"):
        FeatureExtractorConfig(image_size=60)
    with pytest.raises(ConfigError, match="levels"):
        FSQConfig(levels=(8, 1))
    assert from_dict(UNetConfig, {"skip_dropout_levels": "paper"}).dropout_ds == (8,)
    assert from_dict(UNetConfig, {"skip_dropout_levels": [4, 8]}).dropout_ds == (4, 8)
    assert from_dict(UNetConfig, {"skip_dropout_levels": "1,2"}).dropout_ds == (1, 2)
    with pytest.raises(ConfigError):
        from_dict(UNetConfig, {"skip_dropout_levels": "papers"})


# ---- FSQ -----------------------------------------------------------------------------------

@pytest.mark.parametrize("per_unit", [False, True])
def test_fsq_values_lie_on_the_grid_and_gradients_pass(per_unit):
    torch.manual_seed(0)
    fsq = FSQ(FSQConfig(per_unit_projection=per_unit), units=6, dim=32)
    units = (3 * torch.randn(64, 6, 32)).requires_grad_()
    out = fsq(units)
    assert out.units.shape == (64, 6, 32) and out.codes.shape == (64, 6, 3) and out.indices.shape == (64, 6)
    steps = out.codes.detach() * torch.tensor([4.0, 2.0, 2.0])
    torch.testing.assert_close(steps, steps.round())
    assert (steps[..., 0] >= -4).all() and (steps[..., 0] <= 3).all()  # 8 levels: -4..3
    assert (steps[..., 1:].abs() <= 2).all()  # 5 levels: -2..2
    assert out.indices.min() >= 0 and out.indices.max() < 200
    assert len(out.indices.unique()) > 20
    out.units.sum().backward()
    assert units.grad is not None and units.grad.abs().sum() > 0  # straight-through


def test_fsq_reaches_every_code_once():
    fsq = FSQ(FSQConfig(), units=1, dim=32)
    grids = torch.meshgrid(torch.arange(-4, 4) / 4, torch.arange(-2, 3) / 2, torch.arange(-2, 3) / 2, indexing="ij")
    codes = torch.stack([g.flatten() for g in grids], -1)
    assert sorted(fsq.codes_to_indices(codes).tolist()) == list(range(200))
    # the bound's range rounds to exactly these values
    z = torch.linspace(-20, 20, 4001)[:, None].expand(-1, 3)
    q = fsq.quantize(z)
    assert set((q[:, 0] * 4).round().tolist()) == set(range(-4, 4))
    assert set((q[:, 1] * 2).round().tolist()) == set(range(-2, 3))


# ---- EMA -----------------------------------------------------------------------------------

def test_ema_warm_up_buffers_and_state_round_trip():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.0)
    ema = EMA(model)
    assert ema.current_decay() == pytest.approx(2 / 11)
    expected = torch.zeros(2, 2)
    for n in range(1, 6):
        decay = min(0.9999, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(decay)
        with torch.no_grad():
            model[0].weight.fill_(float(n))
            model[1].running_mean.fill_(float(-n))
        ema.update(model)
        expected = decay * expected + (1 - decay) * n
        torch.testing.assert_close(ema.module[0].weight, expected)
        assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied
    assert int(ema.num_updates) == 5
    big = EMA(model)
    big.num_updates.fill_(10**6)
    assert big.current_decay() == 0.9999

    restored = EMA(model)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module[0].weight, ema.module[0].weight)
    assert int(restored.num_updates) == 5

    live = model[0].weight.detach().clone()
    with ema.swapped_in(model):
        torch.testing.assert_close(model[0].weight, ema.module[0].weight)
    torch.testing.assert_close(model[0].weight, live)


def test_ema_copy_stays_in_eval_mode():
    unet = UNet(UNET_PRESETS["tiny"])
    ema = EMA(unet).train()
    assert not ema.module.training and not any(m.training for m in ema.module.modules())
