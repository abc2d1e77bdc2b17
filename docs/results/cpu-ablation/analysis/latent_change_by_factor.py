"""How much each factor moves what the diffusion loss sees: the mean |difference| of the scaled VQ
latents (and of the pixels) between two images that differ in that factor only, over 400 random
pairs per factor, and the share of latent positions where some channel moves by more than 0.1.

    python latent_change_by_factor.py scratch/art/train-vqgan/ablation-synthetic/v1/latents.h5 \
        scratch/art/prepare-data/ablation-synthetic/v1/data.h5
"""
import sys

import h5py
import numpy as np

from dydis.data.standard import DatasetFile

latents_path, data_path = sys.argv[1:3]
with h5py.File(latents_path, "r") as h5:
    latents = h5["latents"][()].astype(np.float32) * float(h5.attrs["scale_factor"])  # as train-ldm trains on them
with DatasetFile(data_path) as data:
    images = data.images[()].astype(np.float32) / 127.5 - 1
    factors, sizes, names = data.factors[()], data.factor_sizes, data.factor_names
row_of = {tuple(f): i for i, f in enumerate(factors)}
rng = np.random.default_rng(0)
print(f"latents: std {latents.std():.3f}; factor | latent |d| | pixel |d| | latent positions moved")
for j, name in enumerate(names):
    latent_d, pixel_d, moved = [], [], []
    for _ in range(400):
        a = int(rng.integers(len(factors)))
        other = factors[a].copy()
        other[j] = (other[j] + rng.integers(1, sizes[j])) % sizes[j]
        b = row_of[tuple(other)]
        latent_d.append(np.abs(latents[a] - latents[b]).mean())
        pixel_d.append(np.abs(images[a] - images[b]).mean())
        moved.append((np.abs(latents[a] - latents[b]).max(0) > 0.1).mean())
    print(f"{name} | {np.mean(latent_d):.4f} | {np.mean(pixel_d):.4f} | {np.mean(moved):.2f}")
