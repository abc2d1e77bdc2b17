#!/usr/bin/env bash
# The project's GPU checks in one call, for a session that is lent a device machine (the
# workplace's device tool: about 15 minutes of device time in all, so each part has its own
# time limit and one slow part does not take the others down):
#
#   run(command="bash bench/gpu_check.sh", timeout_s=560)
#   bash bench/gpu_check.sh cpu        # here: the same steps at toy sizes, to check the script
#
# That machine's Python image already holds torch, typer, rich, scikit-learn, pandas, h5py,
# einops and pyyaml, and it reaches no package index, so dydis is installed without its
# dependencies. Prints, and copies under $OUT when set:
#   device.txt     the GPU, driver, torch and CUDA versions
#   dyga.txt       bench/dyga.py on the device: (a) 20 x 100,000 anchor selection, (b) one unit
#   train_ldm.txt  bench/train_ldm.py: one training step in fp32, bf16 and bf16 + torch.compile
#   smoke.txt      the smoke workflow with train-vqgan, train-ldm and eval-metrics on the GPU
set -uo pipefail
export PYTHONUNBUFFERED=1
device=${1:-cuda}
out=${OUT:-$(mktemp -d)}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
dydis="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/dydis"
gpus=1
dyga_args=(--device "$device" --skip-reference)
ldm_args=(--device "$device" --variants fp32,bf16,bf16-compile)
if [ "$device" = cpu ]; then
    gpus=0
    dyga_args+=(--quick)
    ldm_args=(--device cpu --preset tiny --batch-size 4 --steps 1 --warmup 0)
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
fi
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' | tee -a "$out/device.txt"
echo "== DyGA"
timeout 120 python3 bench/dyga.py "${dyga_args[@]}" 2>&1 | tee "$out/dyga.txt"
echo "== train-ldm step"
timeout 240 python3 bench/train_ldm.py "${ldm_args[@]}" 2>&1 | tee "$out/train_ldm.txt"
echo "== smoke workflow, gpus=$gpus"
work=$(mktemp -d)
timeout 150 "$dydis" run workflow.yaml --profile smoke --root "$work/art" --runs "$work/runs" \
    --set train-vqgan.gpus=$gpus --set train-ldm.gpus=$gpus --set eval-metrics.gpus=$gpus 2>&1 \
    | tee "$out/smoke.txt"
echo "== done; files in $out"
