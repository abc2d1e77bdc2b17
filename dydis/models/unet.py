"""The conditional denoising U-Net of Table 8, with Skip Dropout (paper section 3.3).

Structure as LDM's ``UNetModel`` in the authors' configuration (``use_spatial_transformer``,
``use_scale_shift_norm``, ``resblock_updown``, legacy head width = channels / heads), so the
``paper`` preset has exactly their 37,549,507 parameters: residual blocks with a FiLM-like
scale-shift from the timestep embedding, a spatial transformer (self-attention,
cross-attention on the N latent-unit tokens, GEGLU feed-forward; starts as the identity because
its output projection is zero) after every res block of an attention level and in the middle
block, and residual blocks that resample. The unit tokens enter only through cross-attention:
nothing is pooled into the timestep embedding, and the tokens carry no positional embedding.

Skip Dropout zeroes whole channels of the skip features (one Bernoulli draw per sample and
channel, rescaled by 1 / (1 - rate), train mode only) before the decoder concatenates them, at
the levels ``UNetConfig.dropout_ds`` names; backbone dropout (Table 12) masks the decoder's own
input of the same blocks instead. Masks come from the ``generator`` passed to ``forward``.

Attention maps: every cross-attention layer has a ``hook`` attribute; when set, it receives the
softmax probabilities over the N tokens, (b, heads, h, w, n) in float32. ``record_cross_attention``
sets and clears them for a visualiser.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dydis.models.config import UNetConfig

AttentionHook = Callable[[Tensor], None]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (b,) -> (b, dim) in float32: cosines then sines, as LDM's.

    Frequencies run geometrically from 1 to 1/max_period over the dim/2 pairs.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = rearrange(t.float(), "b -> b 1") * freqs  # (b, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place and return it (LDM's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (LDM's ``normalization``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning on the timestep embedding; optionally resamples.

    ``resample="down"`` average-pools and ``"up"`` nearest-upsamples both paths by 2 between the
    first normalisation and the first convolution (LDM's ``resblock_updown``).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, dropout: float, groups: int,
                 resample: Literal["none", "up", "down"] = "none"):
        super().__init__()
        self.resample = resample
        self.norm_in = GroupNorm32(groups, c_in)
        self.conv_in = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)  # scale and shift
        self.norm_out = GroupNorm32(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))  # why: the block starts as its shortcut
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x: (b, c_in, h, w), emb: (b, e)
        h = self.conv_in(self._resample(F.silu(self.norm_in(x))))
        x = self._resample(x)
        scale, shift = rearrange(self.emb(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.shortcut(x) + h  # (b, c_out, h', w')


class CrossAttention(nn.Module):
    """Multi-head attention of queries (b, i, c) on a context (b, j, e); self-attention without one.

    Cross-attention computes its logits and softmax in float32 explicitly and hands the
    probabilities to ``hook`` when one is set. Self-attention uses torch's fused kernel, whose
    softmax statistics are kept in float32 too, unless a hook asks for the probabilities.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, *, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.hook: AttentionHook | None = None

    def forward(self, x: Tensor, context: Tensor | None = None, *, size: tuple[int, int] | None = None) -> Tensor:
        # x: (b, i, c); context: (b, j, e) or None; size: the (h, w) with i = h * w, for the hook
        source = x if context is None else context
        q, k, v = (rearrange(f(s), "b n (h d) -> b h n d", h=self.heads)
                   for f, s in ((self.to_q, x), (self.to_k, source), (self.to_v, source)))
        if context is None and self.hook is None:
            out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, i, d)
        else:
            logits = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * self.scale
            probs = logits.softmax(dim=-1)  # (b, heads, i, j) float32
            if self.hook is not None:
                h, w = size if size is not None else (probs.shape[2], 1)
                self.hook(rearrange(probs.detach(), "b k (h w) j -> b k h w j", h=h, w=w))
            out = torch.einsum("bhij,bhjd->bhid", probs.to(v.dtype), v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (b, i, c)


class FeedForward(nn.Module):
    """GEGLU feed-forward: dim -> 2 x 4 dim (value, gate) -> value * gelu(gate) -> dim."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (b, n, dim) -> (b, n, dim)
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the context, GEGLU feed-forward; residual each."""

    def __init__(self, dim: int, *, heads: int, context_dim: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads=heads, dim_head=dim // heads)
        self.attn2 = CrossAttention(dim, context_dim, heads=heads, dim_head=dim // heads)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, size: tuple[int, int]) -> Tensor:  # x: (b, hw, c)
        x = x + self.attn1(self.norm1(x), size=size)
        x = x + self.attn2(self.norm2(x), context, size=size)
        return x + self.ff(self.norm3(x))  # (b, hw, c)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on the context tokens.

    Starts as the identity: ``proj_out`` is zero-initialised (LDM's ``SpatialTransformer``).
    """

    def __init__(self, channels: int, *, heads: int, depth: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads=heads, context_dim=context_dim)
                                    for _ in range(depth))
        self.proj_out = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:  # x: (b, c, h, w), context: (b, n, e)
        b, c, h, w = x.shape
        y = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.blocks:
            y = block(y, context, (h, w))
        return x + self.proj_out(rearrange(y, "b (h w) c -> b c h w", h=h, w=w))  # (b, c, h, w)


class ChannelDropout(nn.Module):
    """Zero whole channels, one Bernoulli(rate) draw per sample and channel, x 1/(1 - rate).

    The mask has shape (b, c, 1, 1) (the authors' ``CustomChannelDropout``; paper eq. 7 with
    the rescaling of their code, DESIGN 9 row 4). Identity in eval mode or at rate 0.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def mask(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The rescaled mask (b, c, 1, 1): entries 0 or 1 / (1 - rate), in x's dtype and device."""
        b, c = x.shape[:2]
        device = generator.device if generator is not None else x.device
        keep = torch.rand((b, c, 1, 1), generator=generator, device=device) >= self.rate
        return keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.rate)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:  # (b, c, h, w)
        if not self.training or self.rate == 0.0:
            return x
        return x * self.mask(x, generator)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class TimestepSequential(nn.ModuleList):
    """Runs its layers in order, giving res blocks the embedding and transformers the context."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """eps_theta(x_t, t, c): the noise in a latent (b, 3, 16, 16) at step t given unit tokens (b, N, 32)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, groups = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * mc
        block = dict(emb_dim=emb_dim, dropout=cfg.dropout, groups=groups)
        transformer = dict(heads=cfg.num_heads, depth=cfg.transformer_depth, context_dim=cfg.context_dim,
                           groups=groups)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepSequential([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        skip_channels, ch, ds = [mc], mc, 1
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, **block)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(SpatialTransformer(ch, **transformer))
                self.input_blocks.append(TimestepSequential(layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential([ResBlock(ch, ch, **block, resample="down")]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential([ResBlock(ch, ch, **block), SpatialTransformer(ch, **transformer),
                                                ResBlock(ch, ch, **block)])

        self.output_blocks = nn.ModuleList()
        output_ds = []  # the ds at which each output block concatenates its skip
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * mc, **block)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(SpatialTransformer(ch, **transformer))
                output_ds.append(ds)
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, ch, **block, resample="up"))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(layers))
        self.output_ds: tuple[int, ...] = tuple(output_ds)
        # output blocks whose skip (Skip Dropout) or backbone input (backbone dropout) is masked
        self.dropout_blocks: tuple[int, ...] = tuple(j for j, d in enumerate(output_ds) if d in cfg.dropout_ds)
        self.skip_dropout = ChannelDropout(cfg.skip_dropout)
        self.backbone_dropout = ChannelDropout(cfg.backbone_dropout)

        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(),
                                 zero_(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Predict the noise.

        Parameters
        ----------
        x : (b, in_channels, h, w) noisy latent x_t.
        t : (b,) integer timesteps in [0, T).
        context : (b, n, context_dim) latent-unit tokens.
        generator : source of the Skip / backbone dropout masks (train mode only).

        Returns
        -------
        (b, out_channels, h, w) predicted noise eps.
        """
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))  # (b, 4 mc)
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for j, module in enumerate(self.output_blocks):
            skip = skips.pop()
            if j in self.dropout_blocks:
                skip = self.skip_dropout(skip, generator)
                h = self.backbone_dropout(h, generator)
            h = module(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h)  # (b, out_channels, h, w)

    def cross_attention_layers(self) -> Iterator[tuple[str, CrossAttention]]:
        """(name, layer) of every cross-attention on the context, in forward order."""
        for name, module in self.named_modules():
            if isinstance(module, TransformerBlock):
                yield f"{name}.attn2", module.attn2


@contextlib.contextmanager
def record_cross_attention(unet: UNet) -> Iterator[dict[str, list[Tensor]]]:
    """Collect the cross-attention maps of every forward pass run inside the block.

    Yields a dict from layer name to a list with one (b, heads, h, w, n) float32 tensor per
    call: the softmax over the n unit tokens, so each map is non-negative and sums to 1 over n
    (the DAAM-style maps of paper section 4; DESIGN 9 row 16). Hooks are removed on exit.
    """
    maps: dict[str, list[Tensor]] = {}
    layers = list(unet.cross_attention_layers())

    def hook_for(name: str) -> AttentionHook:
        return lambda probs: maps.setdefault(name, []).append(probs)

    for name, layer in layers:
        layer.hook = hook_for(name)
    try:
        yield maps
    finally:
        for _, layer in layers:
            layer.hook = None
