#!/usr/bin/env bash
# The quick start's proxy (bench/quickstart_proxy.py) as a grid on a lent GPU machine: 15 runs at once, each the
# quick start's own recipe (CPU augmentation, fp32) with its model on the GPU. Prepare here first with
# `bash bench/make_gpu_wheels.sh` (wheels into .whl/, the shared JPEGs into .gpudata/), then through the device tool:
#
#   run(command="bash bench/quickstart_gpu.sh", carry=[".whl", ".gpudata"], timeout_s=600)
#
# Results come back in $OUT: sweep.jsonl (one line per run, per-epoch curves included) and sweep.log. Back here:
#   python bench/quickstart_proxy.py --summary --results <files_at>/sweep.jsonl
# If CUDA fails a one-epoch smoke run, the grid runs on the machine's CPUs instead (the same recipe, slower).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/sweep.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run bench/make_gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "cpus: $(nproc)"
P="python3 bench/quickstart_proxy.py --work /tmp/proxy --shared .gpudata/figshare-jpg"
DEV=cuda
timeout 120 $P --device cuda --folds 0 --seeds 0 --set '{"epochs": 2}' --results /tmp/smoke.jsonl || { DEV=cpu; echo "CUDA smoke run failed: the grid runs on the CPUs"; }
GRID=$(( ${TOTAL:-575} - SECONDS ))   # the grid ends by TOTAL s into the command; no run starts in its last 120 s
echo "grid: $GRID s"
timeout $GRID $P --device $DEV --jobs ${JOBS:-15} --deadline $(( GRID - 120 )) --seeds 11 12 13 --folds 0 1 2 3 4 \
  --results "$OUT/sweep.jsonl" \
  --set '{}' \
  --set '{"epochs": 60, "aug_boundaries": [40, 53]}' \
  --set '{"aug_boundaries": [45, 45]}' \
  --set '{"swa": true, "swa_start": 30}' \
  --set '{"mixup": true, "mixup_end": 45}' \
  --set '{"label_smoothing": 0.1}' \
  --set '{"wd": 0.005}' \
  --set '{"batch_size": 8}' \
  --set '{"lr": 0.0015}'
$P --summary --results "$OUT/sweep.jsonl"
