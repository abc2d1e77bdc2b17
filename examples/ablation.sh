#!/usr/bin/env bash
# Table 4's ablation on one dataset: the EncDiff baseline, +DyGA, +Skip Dropout and both, each
# trained with every seed, as one sweep of workflow.yaml. The dataset and the VQ-GAN are made
# once and shared; each variant's models are evaluated, scored downstream and drawn, and the run
# ends with one report (report.md, report.html, report.csv: mean ± std per variant, each variant
# minus the baseline with a paired t-test and a bootstrap interval, the curves, the figures)
# whose path it prints on stdout. Running it again finds every finished job up to date.
#
#   bash examples/ablation.sh shapes3d --set data_dir=/data      # the paper profile, one GPU
#   PROFILE=smoke SEEDS=42,43 bash examples/ablation.sh synthetic # a CPU smoke version
#   LABEL_SUFFIX=-u20 PROFILE=cpu-ablation bash examples/ablation.sh synthetic  # 2 CPU cores, ~8 h
#   LABEL_SUFFIX=-short PROFILE=cpu-ablation bash examples/ablation.sh synthetic \
#     --set train-ldm.epochs=40                                    # the same four on another recipe
#
# Further arguments go to `dydis run` (e.g. --set train-ldm.epochs=50). LABEL_SUFFIX is appended to
# the four labels, so that a study on another recipe gets its own artifacts (baseline-short, ...)
# instead of new versions of the first study's. A study run again with the same labels and only a
# longer length (--set train-ldm.epochs=120) trains its finished models on from their checkpoints
# instead (each gives exactly the longer run) and reports the new versions. To report again, on
# other inputs or with another baseline: dydis report --metrics 'eval-metrics/<name>-*' --baseline sd
set -euo pipefail
DATASET=${1:-shapes3d}
shift $(($# > 0))
PROFILE=${PROFILE:-paper}
SEEDS=${SEEDS:-42,43,44}
WORKFLOW=${WORKFLOW:-"$(dirname "$0")/../workflow.yaml"}
S=${LABEL_SUFFIX:-}
# quantizer none is train-ldm's --no-dyga; unet.skip_dropout its --skip-dropout
dydis run "$WORKFLOW" --profile "$PROFILE" --set dataset="$DATASET" --seeds "$SEEDS" \
  --variant baseline$S:train-ldm.quantizer=none,train-ldm.unet.skip_dropout=0 \
  --variant dyga$S:train-ldm.quantizer=dyga,train-ldm.unet.skip_dropout=0 \
  --variant sd$S:train-ldm.quantizer=none,train-ldm.unet.skip_dropout=0.2 \
  --variant dyga-sd$S:train-ldm.quantizer=dyga,train-ldm.unet.skip_dropout=0.2 \
  "$@"
