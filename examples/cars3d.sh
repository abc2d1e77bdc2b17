#!/usr/bin/env bash
# The paper's pipeline for Cars3D, one stage at a time, each reading the artifact the one before
# printed on stdout. Needs the original download (nips2015-analogy-data.tar.gz, unpacked or not)
# under $DATA_DIR (`dydis download cars3d --dest "$DATA_DIR"`), and a GPU for the two training stages.
#
#   DATA_DIR=~/downloads bash examples/cars3d.sh
set -euo pipefail
DATA_DIR=${DATA_DIR:-downloads}
GPUS=${GPUS:-1}
SEEDS=${SEEDS:-"42 43 44"}

DATA=$(dydis prepare-data --dataset cars3d --source "$DATA_DIR/nips2015-analogy-data.tar.gz")
VQGAN=$(dydis train-vqgan --data "$DATA" --gpus "$GPUS" --epochs 100)
MODELS=()
for seed in $SEEDS; do
  # --dataset cars3d gives the paper's Cars3D settings (DyGA every 5 epochs); --data/--vqgan pin the inputs
  MODELS+=(--model "$(dydis train-ldm --dataset cars3d --data "$DATA" --vqgan "$VQGAN" --gpus "$GPUS" \
                        --epochs 500 --seed "$seed" --name "cars3d-s$seed")")
done
METRICS=$(dydis eval-metrics "${MODELS[@]}" --gpus "$GPUS")
DOWNSTREAM=$(dydis downstream-gbt "${MODELS[@]}")
dydis visualize interchange --model "${MODELS[1]}" --gpus "$GPUS" > /dev/null
echo "metrics: $METRICS"
echo "downstream: $DOWNSTREAM"
