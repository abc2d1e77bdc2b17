"""Model configurations and presets, kept free of torch so that configs load instantly.

Presets (DESIGN section 5): ``paper`` is the authors' configuration (Tables 7-9); ``small``
keeps the structure with fewer channels for CPU-scale studies; ``tiny`` is for tests and
smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

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
