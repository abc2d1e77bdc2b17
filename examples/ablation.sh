#!/usr/bin/env bash
# Table 4's ablation on one dataset: the EncDiff baseline, +DyGA, +Skip Dropout and both, each
# trained on the same dataset and VQ-GAN artifacts, then one metrics table per variant.
#
#   bash examples/ablation.sh shapes3d            # after prepare-data and train-vqgan for it
#   PRESET=tiny EPOCHS=2 GPUS=0 EXTRA="--batch-size 16" bash examples/ablation.sh synthetic   # a CPU smoke version
set -euo pipefail
DATASET=${1:-shapes3d}
PRESET=${PRESET:-paper}
EPOCHS=${EPOCHS:-50}
GPUS=${GPUS:-1}
EXTRA=${EXTRA:-}  # more train-ldm flags, e.g. --batch-size 16
declare -A VARIANTS=(
  [baseline]="--no-dyga --skip-dropout 0"
  [dyga]="--dyga --skip-dropout 0"
  [sd]="--no-dyga --skip-dropout 0.2"
  [dyga-sd]="--dyga --skip-dropout 0.2"
)
for variant in baseline dyga sd dyga-sd; do
  # shellcheck disable=SC2086  # the flags are meant to split
  model=$(dydis train-ldm --dataset "$DATASET" --preset "$PRESET" --epochs "$EPOCHS" --gpus "$GPUS" \
            ${VARIANTS[$variant]} $EXTRA --name "$DATASET-$variant")
  dydis eval-metrics --model "$model" --gpus "$GPUS" --name "$DATASET-$variant" > /dev/null
done
# one table: a row per variant, a column per metric (the `metrics` results of each artifact)
python - "$DATASET" <<'PY'
import sys
from dydis.artifacts import ArtifactStore
store, dataset = ArtifactStore(), sys.argv[1]
rows = {v: store.load(f"eval-metrics/{dataset}-{v}", kind="metrics").results["metrics"]
        for v in ("baseline", "dyga", "sd", "dyga-sd")}
metrics = [m for m in next(iter(rows.values())) if not m.endswith("_active")]
print("variant".ljust(10) + "".join(m[:12].rjust(13) for m in metrics))
for variant, scores in rows.items():
    print(variant.ljust(10) + "".join(f"{scores[m]['mean']:13.3f}" for m in metrics))
PY
