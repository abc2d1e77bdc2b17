"""Is the VQ-GAN what keeps scale and shape apart from the U-Net? For 600 random pairs of images
that differ in one factor only, the mean squared pixel difference of the originals and of their
VQ-GAN reconstructions (decoded from the cached latents the U-Net learns): a ratio near 1 means
the reconstructions keep that factor's difference.

    python vq_keeps_factors.py scratch/art/train-vqgan/ablation-synthetic/v1 \
        scratch/art/prepare-data/ablation-synthetic/v1/data.h5
"""
import sys

import h5py
import numpy as np
import torch

from dydis.data.standard import DatasetFile
from dydis.models.vqgan import VQGAN
from dydis.training.conditioning import single_factor_partners

vqgan_dir, data_path = sys.argv[1:3]
with DatasetFile(data_path) as data:
    images = data.images[()].astype(np.float32) / 127.5 - 1
    factors, sizes, names = data.factors[()], data.factor_sizes, data.factor_names
with h5py.File(f"{vqgan_dir}/latents.h5", "r") as h5:
    latents = torch.from_numpy(h5["latents"][()].astype(np.float32))  # unscaled: what decode() takes
vqgan = VQGAN.from_file(f"{vqgan_dir}/model.pt").eval()
with torch.no_grad():
    decoded = torch.cat([vqgan.decode(chunk) for chunk in latents.split(128)]).clamp(-1, 1)
decoded = decoded.permute(0, 2, 3, 1).numpy()
print(f"reconstruction mse {((decoded - images) ** 2).mean():.4f}; factor | pixel diff | reconstruction diff | ratio")
a = np.random.RandomState(0).randint(len(factors), size=600)
partners = single_factor_partners(factors, sizes, a, seed=0)  # the dataset is the full grid: no -1
for j, name in enumerate(names):
    b = partners[j]
    pixel = ((images[a] - images[b]) ** 2).mean()
    kept = ((decoded[a] - decoded[b]) ** 2).mean()
    print(f"{name:12s} | {pixel:.4f} | {kept:.4f} | {kept / pixel:.2f}")
