"""How much the feature extractor's output differs between images: the U-Net can only read what varies.

For a train-ldm checkpoint (its live extractor, eval mode) or, with --untrained, the extractor as
its config builds it (train mode: BatchNorm on the batch, as in the first step), on 256 random
rows (RandomState(0)):

- each unit's scalar (before its MLP): std across images and mean;
- each unit's token: std across images (mean over the 32 dimensions) and the fraction of exact 0s.

    python token_spread.py scratch/runs/train-ldm/x-C-units20/checkpoint.pt \
        scratch/art/prepare-data/ablation-synthetic/v1/data.h5 [--untrained]
"""
import argparse

import numpy as np
import torch

from dydis.config import TrainLDMConfig, from_dict
from dydis.data.standard import DatasetFile
from dydis.training.batches import to_model_input
from dydis.training.ldm import build_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint")
parser.add_argument("data")
parser.add_argument("--untrained", action="store_true")
args = parser.parse_args()

checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
model = build_model(from_dict(TrainLDMConfig, checkpoint["config"]))
if args.untrained:
    model.train()
else:
    model.load_state_dict(checkpoint["model"])
    model.eval()
with DatasetFile(args.data) as data:
    images = data.images[np.sort(np.random.RandomState(0).choice(len(data), 256, replace=False))]
with torch.no_grad():
    out = model.extract(to_model_input(torch.from_numpy(images)))
print(f"step {0 if args.untrained else checkpoint['step']}, units {tuple(out.units.shape[1:])}, "
      f"init {model.feature_extractor.cfg.init}")
print("scalar std across images:", np.array2string(out.scalars.std(0).numpy(), precision=3))
print("scalar mean:             ", np.array2string(out.scalars.mean(0).numpy(), precision=3))
print("token std across images: ", np.array2string(out.units.std(0).mean(-1).numpy(), precision=4))
print("token entries exactly 0: ", np.array2string((out.units == 0).float().mean((0, 2)).numpy(), precision=2))
print(f"all units: token std {out.units.std(0).mean():.4f}, zeros {(out.units == 0).float().mean():.2f}")
