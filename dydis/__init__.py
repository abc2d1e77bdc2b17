"""dydis: disentangled representation learning with latent diffusion, DyGA and Skip Dropout."""

__version__ = "0.1.0"
