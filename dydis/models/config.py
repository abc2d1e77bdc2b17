"""Model configurations and presets, kept free of torch so that configs load instantly.

Presets (DESIGN section 5): ``paper`` is the authors' configuration (Tables 7-9); ``small``
keeps the structure with fewer channels for CPU-scale studies; ``tiny`` is for tests and
smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dydis.errors import ConfigError


@dataclass(frozen=True)
class VQGANConfig:
    ch: int = 32  # base channels; Table 7
    ch_mult: tuple[int, ...] = (1, 2, 4)  # 64 -> 32 -> 16: two downsamplings
    num_res_blocks: int = 2
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 2048
    dropout: float = 0.0
    mid_attention: bool = True  # LDM's Encoder/Decoder always have it; the authors' count includes it
    beta: float = 0.25  # why: weights the commitment term ||z - sg(q)||^2 only; the codebook term keeps weight 1
    norm_groups: int = 32

    def __post_init__(self) -> None:
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"vqgan.norm_groups: {self.norm_groups} must divide every level width {widths}")
        if self.n_embed < 2:
            raise ConfigError(f"vqgan.n_embed must be at least 2, got {self.n_embed}")

    @property
    def latent_size(self) -> int:
        """Side of the latent for 64x64 images."""
        return 64 // 2 ** (len(self.ch_mult) - 1)


VQGAN_PRESETS: dict[str, VQGANConfig] = {
    "paper": VQGANConfig(),
    "small": VQGANConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, n_embed=1024),
    "tiny": VQGANConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=256, norm_groups=8),
}


@dataclass(frozen=True)
class VQLossConfig:
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0  # used only when LPIPS weights are available
    disc_start: int = 0  # the authors' configs train the discriminator from the first step
    disc_weight: float = 0.75
    disc_factor: float = 1.0
    disc_layers: int = 3
    disc_width: int = 64


@dataclass(frozen=True)
class FeatureExtractorConfig:
    """The feature extractor of Table 9 as the authors' code builds it (DESIGN sections 5 and 9).

    A CNN maps the image to one scalar per latent unit; an independent MLP per unit lifts the
    scalar to a ``unit_dim``-dimensional token. The ``paper`` preset (N = 20) has exactly the
    23,570,324 parameters of the authors' ``FeatureExtractor``.
    """

    latent_units: int = 20  # N; the paper's default for every dataset
    unit_dim: int = 32  # D, the token width and the U-Net's context dimension (paper section 3.1)
    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 64  # d: conv widths d, 2d, 4d, 4d, 4d
    fc_hidden: int = 4096  # FC 4096 x 4096 of Table 9
    fc_bottleneck: int = 256  # FC 4096 x 256 of Table 9
    mlp_hidden: tuple[int, ...] = (256, 512)  # per-unit MLP 1 -> 256 -> 512 -> D
    final_relu: bool = True  # why: the authors' MLP ends in a ReLU (DESIGN 9 row 2); False drops it
    # "torch": PyTorch's default init of every linear layer, as the authors. Each layer shrinks the
    # spread of its input, so at step 0 the tokens hardly differ between images (std 0.0013 across
    # the synthetic grid) and the U-Net takes hundreds of steps to find anything in them. "he":
    # He-normal weights and zero biases in the FC head and the unit MLPs (the conv stack keeps its
    # init: BatchNorm rescales it), which carries the image's variation through to the tokens (0.35).
    init: Literal["torch", "he"] = "torch"

    def __post_init__(self) -> None:
        if self.latent_units < 1:
            raise ConfigError(f"feature_extractor.latent_units must be at least 1, got {self.latent_units}")
        for key in ("unit_dim", "in_channels", "base_channels", "fc_hidden", "fc_bottleneck"):
            if getattr(self, key) < 1:
                raise ConfigError(f"feature_extractor.{key} must be at least 1, got {getattr(self, key)}")
        if self.image_size < 16 or self.image_size % 16:
            raise ConfigError(f"feature_extractor.image_size must be a multiple of 16 (four stride-2 convs), "
                              f"got {self.image_size}")
        if any(h < 1 for h in self.mlp_hidden):
            raise ConfigError(f"feature_extractor.mlp_hidden widths must be positive, got {self.mlp_hidden}")
        if self.init not in ("torch", "he"):
            raise ConfigError(f"feature_extractor.init must be 'torch' or 'he', got {self.init!r}")

    @property
    def flat_features(self) -> int:
        """Width of the flattened CNN output: 4d channels at image_size / 16 (4096 for the paper)."""
        return 4 * self.base_channels * (self.image_size // 16) ** 2


FEATURE_EXTRACTOR_PRESETS: dict[str, FeatureExtractorConfig] = {
    "paper": FeatureExtractorConfig(),
    # the conv stack at 1/8 of the width: ~3.5 GFLOP per batch-64 training step instead of 153
    "small": FeatureExtractorConfig(latent_units=10, base_channels=8, fc_hidden=512, fc_bottleneck=128,
                                    mlp_hidden=(64, 128)),
    "tiny": FeatureExtractorConfig(latent_units=6, base_channels=4, fc_hidden=64, fc_bottleneck=32,
                                   mlp_hidden=(16, 32)),
}

SkipLevels = Literal["code", "paper"]


@dataclass(frozen=True)
class UNetConfig:
    """The denoising U-Net of Table 8 with Skip Dropout (paper section 3.3, DESIGN sections 5 and 9).

    Levels are named by their downsampling factor ``ds`` (1, 2, 4, ...; level i has ds = 2^i).
    Skip Dropout masks whole channels of the skip features that the decoder concatenates at the
    chosen levels (train mode only, rescaled by 1 / (1 - rate)); ``skip_dropout_levels``:

    - ``"code"`` (default): what the authors' code does, which produced the published numbers: it
      compares each skip's spatial *width* with the ds list ``attention_resolutions``, so it drops
      the levels whose width ``image_size / ds`` is not in that list (widths 16 and 8, i.e. ds 1
      and 2, for the paper configuration: the six skips feeding the last six output blocks);
    - ``"paper"``: the paper's text, "the levels without cross-attention" (ds 8 only here);
    - a tuple of ds values.

    Backbone dropout (Table 12) masks the decoder's own input of the same blocks instead;
    both rates are independent and 0 switches either off.
    """

    image_size: int = 16  # the VQ-GAN latent side
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (1, 2, 4)  # ds values with a spatial transformer (+ the middle block)
    num_heads: int = 8  # head width = channels / heads at every level, as LDM's legacy setting
    transformer_depth: int = 1
    context_dim: int = 32  # = the feature extractor's unit_dim
    dropout: float = 0.1  # ordinary dropout inside the res blocks
    norm_groups: int = 32
    skip_dropout: float = 0.2  # Table 8; 0 = off (the EncDiff baseline)
    skip_dropout_levels: SkipLevels | tuple[int, ...] = "code"
    backbone_dropout: float = 0.0  # Table 12 uses 0.1 (without Skip Dropout)

    def __post_init__(self) -> None:
        if self.model_channels < 1 or self.num_res_blocks < 1 or self.transformer_depth < 1:
            raise ConfigError("unet.model_channels, num_res_blocks and transformer_depth must be at least 1")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(f"unet.channel_mult must be positive multipliers, got {self.channel_mult}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(f"unet.image_size {self.image_size} must be divisible by 2^{len(self.channel_mult) - 1} "
                              f"(one halving per extra level of channel_mult)")
        widths = [self.model_channels * m for m in self.channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"unet.norm_groups: {self.norm_groups} must divide every level width {widths}")
        if any(w % self.num_heads for w in widths):
            raise ConfigError(f"unet.num_heads: {self.num_heads} must divide every level width {widths}")
        for key in ("dropout", "skip_dropout", "backbone_dropout"):
            rate = getattr(self, key)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"unet.{key} must be a rate in [0, 1), got {rate}")
        bad = [ds for ds in self.attention_resolutions if ds not in self.level_ds]
        if bad:
            raise ConfigError(f"unet.attention_resolutions: {bad} are not level ds values {self.level_ds}")
        if isinstance(self.skip_dropout_levels, str):
            if self.skip_dropout_levels not in ("code", "paper"):
                raise ConfigError(f"unet.skip_dropout_levels must be 'code', 'paper' or a list of ds values, "
                                  f"got {self.skip_dropout_levels!r}")
        else:
            bad = [ds for ds in self.skip_dropout_levels if ds not in self.level_ds]
            if bad:
                raise ConfigError(f"unet.skip_dropout_levels: {bad} are not level ds values {self.level_ds}")

    @property
    def level_ds(self) -> tuple[int, ...]:
        """The downsampling factor of each level: (1, 2, 4, 8) for the paper."""
        return tuple(2 ** i for i in range(len(self.channel_mult)))

    @property
    def dropout_ds(self) -> tuple[int, ...]:
        """The ds values whose skip connections Skip / backbone dropout masks, sorted."""
        levels = self.skip_dropout_levels
        if levels == "code":  # the authors compare the skip's width with the ds list (DESIGN 9 row 3)
            return tuple(ds for ds in self.level_ds if self.image_size // ds not in self.attention_resolutions)
        if levels == "paper":  # "where conditions are not injected through cross attention" (section 3.3)
            return tuple(ds for ds in self.level_ds if ds not in self.attention_resolutions)
        return tuple(sorted(set(levels)))


UNET_PRESETS: dict[str, UNetConfig] = {
    "paper": UNetConfig(),
    # same four levels, attention layout and skip-dropout levels; a quarter of the width and one res
    # block per level. Two heads: CPU attention with 4-wide heads costs more than the convolutions.
    "small": UNetConfig(model_channels=16, num_heads=2, norm_groups=16, num_res_blocks=1),
    "tiny": UNetConfig(model_channels=8, channel_mult=(1, 1, 1, 1), num_heads=2, norm_groups=8, num_res_blocks=1),
}


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process of the authors' LDM config (DESIGN section 5, Table 8)."""

    timesteps: int = 1000
    linear_start: float = 0.0015  # beta_1; betas = linspace(sqrt(start), sqrt(end), T)^2 (LDM's "linear")
    linear_end: float = 0.0155
    loss: Literal["l1", "l2"] = "l1"  # why: the authors' loss_type l1, unweighted mean (DESIGN 9 row 5)
    ddim_steps: int = 100
    ddim_eta: float = 0.0

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ConfigError(f"diffusion.timesteps must be at least 2, got {self.timesteps}")
        if not 0.0 < self.linear_start < self.linear_end < 1.0:
            raise ConfigError(f"diffusion: need 0 < linear_start < linear_end < 1, got {self.linear_start}, "
                              f"{self.linear_end}")
        if self.loss not in ("l1", "l2"):
            raise ConfigError(f"diffusion.loss must be 'l1' or 'l2', got {self.loss!r}")
        if not 1 <= self.ddim_steps <= self.timesteps:
            raise ConfigError(f"diffusion.ddim_steps must be in [1, {self.timesteps}], got {self.ddim_steps}")
        if self.ddim_eta < 0:
            raise ConfigError(f"diffusion.ddim_eta must be non-negative, got {self.ddim_eta}")


@dataclass(frozen=True)
class FSQConfig:
    """Finite scalar quantisation of the latent units (Mentzer et al. 2023; paper Table 11).

    Each D-dimensional unit token is projected to ``len(levels)`` dimensions, each bounded and
    rounded to its own grid (8 x 5 x 5 = 200 codes: one codebook), and projected back to D.
    """

    levels: tuple[int, ...] = (8, 5, 5)
    per_unit_projection: bool = False  # why: False = one projection for all units, as FSQ on a token sequence

    def __post_init__(self) -> None:
        if not self.levels or any(level < 2 for level in self.levels):
            raise ConfigError(f"fsq.levels must be at least 2 each, got {self.levels}")

    @property
    def codebook_size(self) -> int:
        size = 1
        for level in self.levels:
            size *= level
        return size
