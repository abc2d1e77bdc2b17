"""Do a model's DDIM samples, conditioned on an image's own units, get the background hues right? For 128
seeded images: DDIM (20 steps, eta 0, one seeded noise per image) with the artifact's U-Net (the EMA one) and
with the live U-Net of the run's last checkpoint (the one the extractor was last trained with). A wall patch
and a floor patch of each sample are classified by the nearest mean colour of that hue's value in the
originals; the score is the share of samples whose class is the image's true wall or floor hue (the
originals themselves score it as a check).

    python sample_hues.py ART_ROOT RUN_ROOT LDM_NAME    # e.g. scratch/art scratch/runs ablation-synthetic-baseline-u20
"""
import copy
import sys
from pathlib import Path

import numpy as np
import torch

from dydis.artifacts import ArtifactStore
from dydis.data.standard import DatasetFile
from dydis.training.ldm import load_model
from dydis.models.vqgan import VQGAN
from dydis.viz.sampler import Sampler

store, runs, name = ArtifactStore(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model = store.load(f"train-ldm/{name}", kind="ldm")
trained = load_model(model.file("model.pt"))
vqgan = VQGAN.from_file(store.input_of(model, "vqgan", "vqgan").file("model.pt")).eval()
with DatasetFile(store.input_of(model, "data", "dataset").file("data.h5")) as data:
    images, factors, names = data.images[()], data.factors[()], list(data.factor_names)
patches = {"wall_hue": (slice(2, 14), slice(2, 14)), "floor_hue": (slice(54, 62), slice(2, 20))}


def colours(x, factor):
    rows, cols = patches[factor]
    return x[:, rows, cols].reshape(len(x), -1, 3).mean(1)


centroids = {}  # per hue factor: its column, and the mean patch colour of each of its values in the originals
for factor in patches:
    j = names.index(factor)
    centroids[factor] = j, np.stack([colours(images[factors[:, j] == v], factor).mean(0)
                                     for v in range(factors[:, j].max() + 1)])


def hue_accuracy(x, rows, factor):
    j, means = centroids[factor]
    guess = np.abs(colours(x, factor)[:, None] - means[None]).sum(-1).argmin(1)
    return (guess == factors[rows, j]).mean()


rows = np.sort(np.random.RandomState(0).choice(len(images), 128, replace=False))
live = copy.deepcopy(trained.model)  # the checkpoint's live weights: the same extractor, the un-averaged U-Net
live.load_state_dict(torch.load(runs / f"train-ldm/{name}/checkpoint.pt", map_location="cpu", weights_only=False)["model"])
print(f"{name}: originals: wall {hue_accuracy(images[rows], rows, 'wall_hue'):.2f}, "
      f"floor {hue_accuracy(images[rows], rows, 'floor_hue'):.2f}")
for label, ldm in (("EMA U-Net", trained.model), ("live U-Net", live.eval())):
    sampler = Sampler(ldm, vqgan, trained.scale_factor, steps=20)
    samples = sampler.generate(sampler.units(images[rows]), sampler.noise(len(rows), 0))
    mse = ((samples / 255.0 - images[rows] / 255.0) ** 2).mean()
    print(f"{name}: {label}: wall {hue_accuracy(samples, rows, 'wall_hue'):.2f}, "
          f"floor {hue_accuracy(samples, rows, 'floor_hue'):.2f}, pixel mse {mse:.4f}")
