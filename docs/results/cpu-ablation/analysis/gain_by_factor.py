"""How much the U-Net of a train-ldm checkpoint reads each factor from the units: the conditioning
probe's gain (dydis/training/conditioning.py) with each image's units swapped for those of the
image that differs from it in one factor only,

    gain(factor) = 1 - loss(own units) / loss(units of the image with another value of that factor)

on 256 random rows (RandomState(0)), the probe's fixed timesteps and noise, eval mode; and, for
reference, the probe's own gain with a random other image's units.

    python gain_by_factor.py scratch/runs/train-ldm/x-L1-base/checkpoint.pt \
        scratch/art/train-vqgan/ablation-synthetic/v1/latents.h5 scratch/art/prepare-data/ablation-synthetic/v1/data.h5
"""
import sys

import h5py
import numpy as np
import torch

from dydis.config import TrainLDMConfig, from_dict
from dydis.data.standard import DatasetFile
from dydis.training.batches import to_model_input
from dydis.training.conditioning import ConditioningProbe
from dydis.training.ldm import build_model

checkpoint_path, latents_path, data_path = sys.argv[1:4]
checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
model = build_model(from_dict(TrainLDMConfig, checkpoint["config"]))
model.load_state_dict(checkpoint["model"])  # the live extractor and U-Net, as the probe sees them in training
model.eval()
with h5py.File(latents_path, "r") as h5:
    latents = h5["latents"][()].astype(np.float32) * float(h5.attrs["scale_factor"])
with DatasetFile(data_path) as data:
    images, factors, sizes, names = data.images[()], data.factors[()], data.factor_sizes, data.factor_names
row_of = {tuple(f): i for i, f in enumerate(factors)}
rng = np.random.RandomState(0)
rows = np.sort(rng.choice(len(images), 256, replace=False))
probe = ConditioningProbe(images[rows], latents[rows], 0)  # its timesteps and noise for these rows
print(f"step {checkpoint['step']}; random partner: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                              probe.measure(model, torch.device("cpu")).items()))
with torch.no_grad():
    t = probe.timesteps(model.diffusion.num_timesteps)
    loss = lambda units: model.diffusion.training_loss(model.unet, probe.latents, units, t=t, noise=probe.noise).loss.item()
    own = loss(model.condition(to_model_input(probe.images)))
    for j, name in enumerate(names):
        partners = []
        for f in factors[rows]:
            other = f.copy()
            other[j] = (other[j] + rng.randint(1, sizes[j])) % sizes[j]
            partners.append(row_of[tuple(other)])
        swapped = loss(model.condition(to_model_input(torch.from_numpy(images[partners]))))
        print(f"{name}: loss own {own:.4f}, swapped {swapped:.4f}, gain {1 - own / swapped:.3f}")
