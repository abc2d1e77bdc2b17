"""The FID Inception: the weights file's exact layout, sane features, loader errors, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dydis.errors import DataError
from dydis.metrics.fid import compute_features
from dydis.models.inception import FID_WEIGHTS_FILE, FIDInceptionV3, _avg_pool, load_fid_inception

# The convolutions of pt_inception-2015-12-05-6726825d.pth (torchvision's Inception3 key names):
# "name in>out HxW", where {c} is the block's input width and {p} its pool / 7x7 width.
STEM = ("Conv2d_1a_3x3 3>32 3x3, Conv2d_2a_3x3 32>32 3x3, Conv2d_2b_3x3 32>64 3x3, "
        "Conv2d_3b_1x1 64>80 1x1, Conv2d_4a_3x3 80>192 3x3")
A = ("branch1x1 {c}>64 1x1, branch5x5_1 {c}>48 1x1, branch5x5_2 48>64 5x5, branch3x3dbl_1 {c}>64 1x1, "
     "branch3x3dbl_2 64>96 3x3, branch3x3dbl_3 96>96 3x3, branch_pool {c}>{p} 1x1")
B = "branch3x3 {c}>384 3x3, branch3x3dbl_1 {c}>64 1x1, branch3x3dbl_2 64>96 3x3, branch3x3dbl_3 96>96 3x3"
C = ("branch1x1 {c}>192 1x1, branch7x7_1 {c}>{p} 1x1, branch7x7_2 {p}>{p} 1x7, branch7x7_3 {p}>192 7x1, "
     "branch7x7dbl_1 {c}>{p} 1x1, branch7x7dbl_2 {p}>{p} 7x1, branch7x7dbl_3 {p}>{p} 1x7, "
     "branch7x7dbl_4 {p}>{p} 7x1, branch7x7dbl_5 {p}>192 1x7, branch_pool {c}>192 1x1")
D = ("branch3x3_1 {c}>192 1x1, branch3x3_2 192>320 3x3, branch7x7x3_1 {c}>192 1x1, "
     "branch7x7x3_2 192>192 1x7, branch7x7x3_3 192>192 7x1, branch7x7x3_4 192>192 3x3")
E = ("branch1x1 {c}>320 1x1, branch3x3_1 {c}>384 1x1, branch3x3_2a 384>384 1x3, branch3x3_2b 384>384 3x1, "
     "branch3x3dbl_1 {c}>448 1x1, branch3x3dbl_2 448>384 3x3, branch3x3dbl_3a 384>384 1x3, "
     "branch3x3dbl_3b 384>384 3x1, branch_pool {c}>192 1x1")
MIXED = {"Mixed_5b": (A, 192, 32), "Mixed_5c": (A, 256, 64), "Mixed_5d": (A, 288, 64), "Mixed_6a": (B, 288, 0),
         "Mixed_6b": (C, 768, 128), "Mixed_6c": (C, 768, 160), "Mixed_6d": (C, 768, 160),
         "Mixed_6e": (C, 768, 192), "Mixed_7a": (D, 768, 0), "Mixed_7b": (E, 1280, 0), "Mixed_7c": (E, 2048, 0)}
# torchvision documents 27,161,264 parameters for Inception-v3; less the auxiliary classifier
# (98,304 + 256 + 2,457,600 + 1,536 + 769,000) and the 1000-way fc (2,049,000) leaves the trunk.
TRUNK_PARAMETERS = 27_161_264 - 3_326_696 - 2_049_000  # 21,785,568


def expected_shapes() -> dict[str, tuple[int, ...]]:
    convs = [("", STEM)] + [(f"{block}.", spec.format(c=c, p=p)) for block, (spec, c, p) in MIXED.items()]
    shapes = {}
    for prefix, spec in convs:
        for item in spec.split(", "):
            name, widths, kernel = item.split()
            c_in, c_out = map(int, widths.split(">"))
            kh, kw = map(int, kernel.split("x"))
            shapes[f"{prefix}{name}.conv.weight"] = (c_out, c_in, kh, kw)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}{name}.bn.{stat}"] = (c_out,)
            shapes[f"{prefix}{name}.bn.num_batches_tracked"] = ()
    return shapes


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    """Random weights at He scale, so features stay O(1) through the 40-odd layers instead of vanishing."""
    torch.manual_seed(0)
    model = FIDInceptionV3()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_state_dict_matches_the_weights_file_layout(net):
    expected = expected_shapes()
    assert len(expected) == 94 * 6
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    assert sum(p.numel() for p in net.parameters()) == TRUNK_PARAMETERS == 21_785_568
    assert sum(np.prod(s) for k, s in expected.items() if k.endswith(("conv.weight", "bn.weight", "bn.bias"))) == (
        TRUNK_PARAMETERS)


def test_forward_gives_non_negative_pool_features(net, images, one_thread):
    with torch.no_grad():
        feats = net(as_batch(images[:2]))
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # the mean of ReLU outputs
    assert feats.mean() > 0.01 and not torch.allclose(feats[0], feats[1])


def test_average_pool_leaves_padding_out():
    # TF's SAME average pool: a constant image stays constant up to the border
    assert torch.equal(_avg_pool(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        load_fid_inception(tmp_path / "nowhere.pth")
    assert "nowhere.pth" in str(err.value) and FID_WEIGHTS_FILE in str(err.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DataError) as err:
        load_fid_inception(None)
    message = str(err.value)
    assert "--fid-weights" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_foreign_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth: not a readable torch state dict"):
        load_fid_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5), "AuxLogits.fc.bias": torch.zeros(1000),
                "fc.weight": torch.zeros(1000, 2048)}, wrong)  # torchvision's classifier, not the FID one
    with pytest.raises(DataError) as err:
        load_fid_inception(wrong)
    message = str(err.value)
    assert message.startswith(f"{wrong}: not the FID Inception state dict") and "\n" not in message
    assert "469 keys missing (e.g. Conv2d_1a_3x3.bn.weight)" in message  # 94 * 5 required, one present
    assert "1 unexpected keys (e.g. AuxLogits.fc.bias)" in message
    assert "2 of the wrong shape (e.g. Conv2d_1a_3x3.conv.weight: expected (32, 3, 3, 3), found (32, 3, 5, 5))" in (
        message)


def test_saved_weights_load_back_and_give_the_same_features(net, images, tmp_path, monkeypatch, one_thread):
    # laid out like the real file: with the unused classifier, in the torch hub cache
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    classifier = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(net.state_dict() | classifier, cache / FID_WEIGHTS_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    loaded = load_fid_inception(None)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        direct = net(as_batch(images)).double().numpy()
    seen = []
    feats = compute_features(images, load_fid_inception(cache / FID_WEIGHTS_FILE), batch_size=2,
                             progress=seen.append)
    assert feats.shape == (3, 2048) and seen == [2, 3]
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())
