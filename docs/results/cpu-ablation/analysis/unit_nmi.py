"""Which factors get a unit of their own? For each model an eval-metrics artifact scored: each unit
reduced as the metrics reduce it (PCA(1)), discretised into MIG's 20 bins, and its mutual information
with each factor divided by the factor's entropy (MIG's normalised mutual information). Prints, per
model, the best unit's value for each factor and how many units exceed 0.3 for some factor; then the
mean over each artifact's models.

    python unit_nmi.py ART_ROOT EVAL_NAME...    # e.g. scratch/art ablation-synthetic-baseline-u20@v1
"""
import json
import sys

import numpy as np

from dydis.artifacts import ArtifactStore
from dydis.data.standard import DatasetFile
from dydis.metrics._common import discrete_entropy, discrete_mutual_info, histogram_discretize
from dydis.metrics.reduce import reduce_codes

INFORMATIVE = 0.3
store = ArtifactStore(sys.argv[1])
for name in sys.argv[2:]:
    scored = store.load(f"eval-metrics/{name}", kind="metrics")
    best = []
    for run in json.loads(scored.file("metrics.json").read_text())["runs"]:
        model = store.load(run["model"], kind="ldm")
        with DatasetFile(store.input_of(model, "data", "dataset").file("data.h5")) as data:
            factors, names = data.factors[()], list(data.factor_names)
        codes = reduce_codes(np.load(scored.file(run["file"]))["codes"])
        nmi = discrete_mutual_info(histogram_discretize(codes), factors) / discrete_entropy(factors)
        best.append(nmi.max(0))
        print(f"{run['model']}: informative units {int((nmi.max(1) > INFORMATIVE).sum())}; best unit per factor "
              + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, best[-1])))
    print(f"{name}, mean over {len(best)}: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, np.mean(best, 0))))
