"""The VQ-GAN: shapes, the authors' parameter count, loss pieces, training, resume, DDP start-up."""

from __future__ import annotations

import dataclasses
import signal

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import InterruptAt
from dydis.config import TrainVQGANConfig, build_config
from dydis.distributed import launch
from dydis.errors import TrainingDiverged, TrainingInterrupted
from dydis.models.config import VQGAN_PRESETS, VQLossConfig
from dydis.models.lpips import LPIPS
from dydis.models.vqgan import VQGAN, VectorQuantizer
from dydis.models.vqgan_loss import VQGANLoss, adaptive_weight, hinge_d_loss
from dydis.training import vqgan as training
from dydis.training.checkpoint import load_checkpoint


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_preset_matches_the_authors_parameter_count():
    model = VQGAN(VQGAN_PRESETS["paper"])
    assert count(model.encoder) == 1_403_363 and count(model.decoder) == 2_068_547
    assert count(model) == 3_478_078


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_shapes_through_encode_quantise_decode(preset):
    model = VQGAN(VQGAN_PRESETS[preset])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    h = model.encode(x)
    assert h.shape == (2, 3, 16, 16)
    quantized = model.quantize(h)
    assert quantized.z_q.shape == h.shape and quantized.indices.shape == (2, 16, 16)
    codes = model.quantize.embedding.weight
    np.testing.assert_allclose(quantized.z_q.detach().numpy(), model.quantize.lookup(quantized.indices).detach().numpy(),
                               atol=1e-6)  # straight-through adds and subtracts z: equal up to rounding
    # each latent vector maps to its nearest code (ties among the tiny initial codes aside)
    flat = h.detach().permute(0, 2, 3, 1).reshape(-1, 3).double()
    distances = torch.cdist(flat, codes.detach().double())
    chosen = distances.gather(1, quantized.indices.reshape(-1, 1)).squeeze(1)
    assert torch.allclose(chosen, distances.min(1).values, atol=1e-7)
    assert model.decode(h).shape == (2, 3, 64, 64)
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.codebook_loss.ndim == 0


def test_quantizer_loss_weights_commitment_by_beta():
    quantizer = VectorQuantizer(4, 2, beta=0.25)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = quantizer(z)
    distance = ((out.z_q.detach() - z.detach()) ** 2).mean()
    assert out.loss.item() == pytest.approx(1.25 * distance.item(), rel=1e-5)
    out.z_q.sum().backward()  # straight-through: d z_q / d z is the identity
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_adaptive_weight_hand_checked():
    last = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (3.0 * last).sum()  # gradient (3, 3): norm 3*sqrt(2)
    adversarial = (last ** 2).sum()  # gradient (2, 4): norm sqrt(20)
    weight = adaptive_weight(nll, adversarial, last, scale=0.75)
    expected = 0.75 * (3 * 2 ** 0.5) / (20 ** 0.5 + 1e-4)
    assert weight.item() == pytest.approx(expected, rel=1e-6)
    flat = adaptive_weight((0 * last).sum(), adversarial, last, scale=1.0)
    assert flat.item() == 0.0
    assert hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])).item() == pytest.approx(0.5 * (0.5 + 0.75))


def test_lpips_path_with_random_backbone():
    torch.manual_seed(0)
    lpips = LPIPS()
    for head in lpips.heads:
        head.weight.data.abs_()  # LPIPS heads are non-negative
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.allclose(lpips(x, x), torch.zeros(2))
    assert (lpips(x, y) > 0).all()
    loss = VQGANLoss(VQLossConfig(), lpips)
    model = VQGAN(VQGAN_PRESETS["tiny"])
    out = model(x)
    terms = loss.generator(x, out.reconstruction, out.codebook_loss, model.last_layer, step=0)
    assert "lpips" in terms.logs and terms.logs["lpips"] > 0
    terms.loss.backward()
    assert all(p.grad is None for p in lpips.parameters())  # LPIPS stays frozen


def _tiny_images(n: int = 48) -> torch.Tensor:
    from dydis.data.synthetic import SyntheticSource

    with SyntheticSource((2, 2, 2, 2, 3, 2)) as source:
        return torch.from_numpy(source.read(np.arange(n)).images)


def _config(**changes) -> TrainVQGANConfig:
    # smaller than the tiny preset, so that training tests take seconds
    base = dict(data="unused", preset="tiny", batch_size=8, accumulate=2, max_steps=4, checkpoint_every=2,
                log_every=1, base_lr=1e-4, model={"ch": 8, "norm_groups": 4, "n_embed": 64},
                loss={"disc_width": 8, "disc_layers": 2})
    base.update(changes)
    return build_config(TrainVQGANConfig, flags=base)


def test_training_reduces_reconstruction_loss(tmp_path):
    images = _tiny_images(16)
    cfg = _config(max_steps=30, batch_size=8, accumulate=1, base_lr=1e-3, loss={"disc_start": 1000})
    ctx = training.Context(0, 1, torch.device("cpu"))
    training.fit(ctx, cfg, images, torch.arange(16), tmp_path, resume=False)
    rows = (tmp_path / training.LOG_CSV).read_text().splitlines()
    l1 = [float(r.split(",")[rows[0].split(",").index("l1")]) for r in rows[1:]]
    assert l1[-1] < 0.5 * l1[0], l1  # a tiny model overfits 16 images: L1 at least halves in 30 steps


def test_resume_continues_bit_for_bit(tmp_path):
    images, rows = _tiny_images(), torch.arange(48)
    ctx = training.Context(0, 1, torch.device("cpu"))
    training.fit(ctx, _config(max_steps=4), images, rows, tmp_path / "straight", resume=False)
    training.fit(ctx, _config(max_steps=2), images, rows, tmp_path / "split", resume=False)
    training.fit(ctx, _config(max_steps=4), images, rows, tmp_path / "split", resume=True)
    straight = load_checkpoint(tmp_path / "straight" / training.CHECKPOINT)
    split = load_checkpoint(tmp_path / "split" / training.CHECKPOINT)
    assert straight["step"] == split["step"] == 4
    for key in straight["model"]:
        torch.testing.assert_close(straight["model"][key], split["model"][key], rtol=1e-5, atol=1e-6)
    log = (tmp_path / "split" / training.LOG_CSV).read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2", "3", "4"]


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    images = _tiny_images(16)
    images[:] = 0
    cfg = _config(max_steps=2, base_lr=1e-4)
    ctx = training.Context(0, 1, torch.device("cpu"))
    poisoned = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, codebook_weight=float("nan")))
    with pytest.raises(TrainingDiverged) as caught:
        training.fit(ctx, poisoned, images, torch.arange(16), tmp_path, resume=False)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: the loss became non-finite at step 0 (ae nan, d ")
    assert message.endswith("); no checkpoint was saved; lower base_lr and start over with --restart")


def test_ctrl_c_checkpoints_and_stops_cleanly(tmp_path):
    """As train-ldm: Ctrl-C after step 2 stops after step 3 with a checkpoint there, to resume."""
    images, rows = _tiny_images(16), torch.arange(16)
    ctx = training.Context(0, 1, torch.device("cpu"))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in a background job
    with pytest.raises(TrainingInterrupted) as caught:
        training.fit(ctx, _config(max_steps=6, accumulate=1), images, rows, tmp_path, resume=False,
                     progress=InterruptAt("train-vqgan", 2))
    assert str(caught.value) == f"{tmp_path / training.CHECKPOINT}: stopped at step 3 of 6; continue with --resume"
    assert load_checkpoint(tmp_path / training.CHECKPOINT)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    training.fit(ctx, _config(max_steps=6, accumulate=1), images, rows, tmp_path, resume=True)
    assert load_checkpoint(tmp_path / training.CHECKPOINT)["step"] == 6


def _ddp_worker(ctx, cfg, images, rows, run_dir):
    model = training.fit(ctx, cfg, images, rows, run_dir, resume=False)
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(checksum) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, checksum)
    if ctx.is_main:
        torch.save(torch.stack(gathered), run_dir / "replicas.pt")


def test_ddp_starts_on_cpu_with_gloo(tmp_path):
    images = _tiny_images(32)
    cfg = _config(max_steps=2, batch_size=4, accumulate=1)
    launch(_ddp_worker, 2, "gloo", cfg, images, torch.arange(32), tmp_path)
    assert load_checkpoint(tmp_path / training.CHECKPOINT)["step"] == 2
    replicas = torch.load(tmp_path / "replicas.pt", weights_only=True)
    assert replicas.shape[0] == 2
    torch.testing.assert_close(replicas[0], replicas[1], rtol=0, atol=1e-9)  # averaged gradients keep them in step
    untrained, _ = training.build_models(cfg, None)
    initial = torch.stack([p.detach().double().sum() for p in untrained.parameters()])
    assert not torch.allclose(replicas[0], initial)  # and they did train


def test_dead_codes_restart_onto_encodings():
    quantizer = VectorQuantizer(16, 3, beta=0.25).train()
    z = torch.randn(2, 3, 4, 4) * 3
    quantizer(z)
    used = quantizer.usage > 0
    before = quantizer.embedding.weight.detach().clone()
    encodings = z.permute(0, 2, 3, 1).reshape(-1, 3)
    restarted = quantizer.restart_dead_codes_(encodings, torch.Generator().manual_seed(0))
    after = quantizer.embedding.weight.detach()
    assert restarted == int((~used).sum()) > 0
    assert torch.equal(after[used], before[used])  # codes in use stay where they are
    for code in after[~used]:  # each restarted code sits on one of the encodings
        assert torch.isclose(encodings, code).all(1).any()
    assert quantizer.usage.sum() == 0
    spread = quantizer(z).indices.unique().numel()
    assert spread > int(used.sum())  # the restarted codes are taken up
