"""The first-stage VQ-GAN (Esser et al. 2021) in the configuration of the paper's Table 7.

The encoder maps a 64x64 image to a 16x16x3 latent and the decoder maps it back, through a
2048-code vector quantiser. As in latent diffusion's ``VQModelInterface``, ``encode`` returns
the latent *before* quantisation (the diffusion model works on it) and ``decode`` quantises.
The layer structure follows LDM's Encoder/Decoder, including the middle block's single
self-attention layer that the authors' configs keep even with no attention resolutions, so
the ``paper`` preset has exactly the authors' parameter count (DESIGN section 5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dydis.models.config import VQGANConfig
from dydis.torchfile import load_torch_file, load_weights, require_keys


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, h, w) -> (b, c_out, h, w)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with 1x1 convolutions for q, k, v, out."""

    def __init__(self, channels: int, *, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (rearrange(f(y), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # why: asymmetric pad keeps an even 2x reduction


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MiddleBlock(nn.Module):
    def __init__(self, channels: int, cfg: VQGANConfig):
        super().__init__()
        block = dict(dropout=cfg.dropout, groups=cfg.norm_groups)
        self.block_1 = ResnetBlock(channels, channels, **block)
        self.attn_1 = AttnBlock(channels, groups=cfg.norm_groups) if cfg.mid_attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, **block)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig, in_channels: int = 3):
        super().__init__()
        block = dict(dropout=cfg.dropout, groups=cfg.norm_groups)
        self.conv_in = nn.Conv2d(in_channels, cfg.ch, 3, padding=1)
        layers, width = [], cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(width, cfg.ch * mult, **block))
                width = cfg.ch * mult
            if level < len(cfg.ch_mult) - 1:
                layers.append(Downsample(width))
        self.down = nn.Sequential(*layers)
        self.mid = MiddleBlock(width, cfg)
        self.norm_out = _norm(width, cfg.norm_groups)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (b, 3, 64, 64) -> (b, z, 16, 16)
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig, out_channels: int = 3):
        super().__init__()
        block = dict(dropout=cfg.dropout, groups=cfg.norm_groups)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = MiddleBlock(width, cfg)
        layers = []
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):  # one more than the encoder, as LDM's decoder
                layers.append(ResnetBlock(width, cfg.ch * cfg.ch_mult[level], **block))
                width = cfg.ch * cfg.ch_mult[level]
            if level > 0:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(width, cfg.norm_groups)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # (b, z, 16, 16) -> (b, 3, 64, 64)
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantized(NamedTuple):
    z_q: Tensor  # (b, d, h, w), straight-through: gradients reach the encoder
    loss: Tensor  # () codebook + beta * commitment
    indices: Tensor  # (b, h, w) int64


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with the straight-through estimator (van den Oord et al. 2017)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)
        # hits per code since the last dead-code restart (training only)
        self.register_buffer("usage", torch.zeros(n_embed))

    def forward(self, z: Tensor) -> Quantized:  # z: (b, d, h, w)
        b, d, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d").float()  # why: distances lose codes in bf16
        codes = self.embedding.weight.float()
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e, as one matmul
        distances = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        indices = distances.argmin(1)
        if self.training:
            self.usage += torch.bincount(indices, minlength=self.usage.numel()).to(self.usage.dtype)
        z_q = rearrange(codes[indices], "(b h w) d -> b d h w", b=b, h=h, w=w)
        zf = z.float()
        loss = F.mse_loss(z_q, zf.detach()) + self.beta * F.mse_loss(zf, z_q.detach())
        z_q = zf + (z_q - zf).detach()  # straight-through: forward z_q, backward identity
        return Quantized(z_q.to(z.dtype), loss, rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w))

    @torch.no_grad()
    def restart_dead_codes_(self, encodings: Tensor, generator: torch.Generator) -> int:
        """Move codes unused since the last call onto random encodings (n, d); returns how many.

        With 3-dimensional codes initialised in a tiny box, most codes are never chosen and the
        codebook collapses to a handful (a known VQ failure); re-seeding them where the encoder
        puts its outputs brings them back into use. Off by default: the authors do not do it.
        """
        dead = (self.usage == 0).nonzero().squeeze(1)
        if len(dead):
            picks = torch.randint(len(encodings), (len(dead),), generator=generator).to(encodings.device)
            self.embedding.weight.data[dead] = encodings[picks].to(self.embedding.weight.dtype)
        self.usage.zero_()
        return len(dead)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors (b, d, h, w) of indices (b, h, w)."""
        return rearrange(self.embedding(indices), "b h w d -> b d h w")


class VQGANOutput(NamedTuple):
    reconstruction: Tensor  # (b, 3, 64, 64) in [-1, 1] (unclamped)
    codebook_loss: Tensor  # ()
    indices: Tensor  # (b, h, w)


class VQGAN(nn.Module):
    """Encoder, quantiser and decoder; images are in [-1, 1], (b, 3, 64, 64)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)

    def encode(self, x: Tensor) -> Tensor:
        """The pre-quantisation latent (b, embed_dim, 16, 16) that the diffusion model learns."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h: Tensor) -> Tensor:
        """Quantise a latent (b, embed_dim, 16, 16) and decode it to an image (b, 3, 64, 64)."""
        return self.decode_quantized(self.quantize(h).z_q)

    def decode_quantized(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: Tensor) -> VQGANOutput:
        quantized = self.quantize(self.encode(x))
        return VQGANOutput(self.decode_quantized(quantized.z_q), quantized.loss, quantized.indices)

    @classmethod
    def from_file(cls, path) -> "VQGAN":
        """The model saved in a vqgan artifact's ``model.pt`` (weights + config); a file that is
        missing, unreadable, refused (it holds more than tensors and plain values) or not a vqgan
        model is a ``DataError``."""
        saved = require_keys(load_torch_file(path, "vqgan model file"), ("model", "config"), "vqgan model file", path)
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()}
        model = cls(VQGANConfig(**fields))
        load_weights(model, saved["model"], path)
        return model.eval()

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output weight: the adaptive GAN weight compares gradient norms here."""
        return self.decoder.conv_out.weight
