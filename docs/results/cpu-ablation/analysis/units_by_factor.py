"""Which factors a train-ldm checkpoint's units hold, and where.

For every unit (reduced by PCA(1), as eval-metrics does, and by its pre-MLP scalar): DCI's
importance row normalised over the factors, its share of all importance, and |Spearman| with
each factor; per factor, DCI's test accuracy. All 3,840 rows of the dataset, the protocol's
10,000/5,000 samples scaled to them (3,840/1,920), RandomState(0).

    python units_by_factor.py scratch/runs/train-ldm/x-L1-base/checkpoint.pt \
        scratch/art/prepare-data/ablation-synthetic/v1/data.h5 [--untrained]

--untrained: the same model as built before any step (torch seed 42), for what training adds.
"""
import sys

import numpy as np
import torch
from scipy.stats import spearmanr

from dydis.config import TrainLDMConfig, from_dict
from dydis.data.standard import DatasetFile
from dydis.metrics import GroundTruth
from dydis.metrics.dci import dci_importance, dci_scores
from dydis.metrics.reduce import reduce_units
from dydis.training.ldm import build_model, represent

checkpoint_path, data_path = sys.argv[1:3]
untrained = "--untrained" in sys.argv[3:]
checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
torch.manual_seed(42)
model = build_model(from_dict(TrainLDMConfig, checkpoint["config"]))
if not untrained:
    model.load_state_dict(checkpoint["model"])  # the live extractor, as train-ldm publishes it
model.eval()
with DatasetFile(data_path) as data:
    images, factors, sizes, names = data.images[()], data.factors[()], data.factor_sizes, data.factor_names
units, scalars = represent(model, lambda rows: images[rows], len(images), torch.device("cpu"))
truth = GroundTruth(factors, sizes)
print(f"step {0 if untrained else checkpoint['step']}; factors: {', '.join(names)}")
for label, codes in (("pca", reduce_units(units.astype(np.float64), "pca")), ("scalar", scalars.astype(np.float64))):
    fit = dci_importance(codes, truth, n_train=len(images), n_test=len(images) // 2, n_jobs=1)
    print(f"\n{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in dci_scores(fit).items()))
    print("test accuracy per factor: " + " ".join(f"{a:.2f}" for a in fit.test_accuracy))
    share = fit.importance.sum(1) / fit.importance.sum()
    rows = fit.importance / fit.importance.sum(1, keepdims=True).clip(1e-12)
    rho = [[abs(spearmanr(codes[:, i], factors[:, j])[0]) for j in range(len(names))] for i in range(codes.shape[1])]
    print("unit | importance over the factors | share | |Spearman| with each factor")
    for i in range(codes.shape[1]):
        print(f"u{i} | " + " ".join(f"{v:.2f}" for v in rows[i]) + f" | {share[i]:.2f} | "
              + " ".join(f"{v:.2f}" for v in rho[i]))
