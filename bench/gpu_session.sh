#!/usr/bin/env bash
# The one command for a lent GPU machine (issue 10). Prepare here first: `bash bench/make_gpu_wheels.sh`
# (wheels into .whl/, the shared JPEGs into .gpudata/; both ignored), then through the device tool:
#
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=540)
#
# It installs the carried wheels (albumentations & co.; torch 2.11 is there), checks the DeviceLoader
# notebook's tests (its #| gpu cell included), prepares the 2.4k shared images, then measures, most
# important first, within BUDGET seconds (each result is saved as soon as it is measured, so a run cut
# short still returns what it got):
#   1. the (a) ceiling / (b) kit / (c) original-style table at depths 1 and 2, plus the ablations that
#      reuse the compiled graphs (compile off, cudnn.benchmark off, worker DataLoader, eval every 5th
#      epoch, fused AdamW, bare learner);
#   2. a full default run (brainmri.run.run_training, TrainConfig defaults, 60 epochs) on the 2.4k images;
#   3. the ablations that compile new graphs (channels_last off, fp16, fp32) at depth 2;
#   4. a full run with compile=True.
# Results land in $OUT (at most 8 files come back): session.log and one JSON per step. Back here:
#   python bench/render.py <files_at>/throughput.json <files_at>/ablations2.json
#   python bench/render.py <files_at>/full_run*.json --title "<card>: full runs"
# rewrite this card's block in docs/benchmarks.md ("## Training throughput").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-470}          # seconds of measurements; keep timeout_s about 60 s above it
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
exec > >(tee -a "$OUT/session.log") 2>&1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run bench/make_gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache   # shared by every step: a graph compiled once is reused
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, albumentations, cv2, fastcore; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(), '| albumentations', albumentations.__version__, '| cv2', cv2.__version__)" \
  || { echo "imports failed"; exit 1; }

echo "== DeviceLoader notebook tests (CPU and GPU cells)"
timeout 120 python3 - <<'EOF' || echo "notebook tests FAILED (see above)"
import json, time, traceback
nb = json.load(open('nbs/09_device_loader.ipynb'))
g = {}
exec('from fastcore.test import *', g)
t0, n = time.time(), 0
for c in nb['cells']:
    src = ''.join(c['source'])
    if c['cell_type'] != 'code' or 'nbdev.showdoc' in src: continue
    exec(compile('from __future__ import annotations\n' + src, 'nb-cell', 'exec'), g); n += 1
print(f'ok: {n} code cells (the #| gpu cell on CUDA included) in {time.time() - t0:.0f}s')
EOF

DATA=.gpudata/figshare-jpg; [ -d "$DATA" ] || { echo "no $DATA: using data/sample"; DATA=data/sample; }
python3 -c "from brainmri.data import prepare; prepare('$DATA', '/tmp/store', size=256)" || exit 1
C="--device cuda --data /tmp/store --quiet-fit --max-seconds 40"

echo "== 1. table and cheap ablations ($(left)s left)"
python3 bench/throughput.py $C --depths 1 2 --sync-audit --ablations compile cudnn_benchmark loader eval_every fused recipe \
  --json "$OUT/throughput.json" --deadline $(( $(left) - 150 ))
echo "== 2. full default run ($(left)s left)"
[ "$(left)" -gt 100 ] && python3 bench/full_run.py $C --configs default --json "$OUT/full_run.json" --deadline 30
echo "== 3. ablations with new graphs ($(left)s left)"
[ "$(left)" -gt 90 ] && python3 bench/throughput.py $C --no-main --ablation-depth 2 --ablations dynreg channels_last amp \
  --json "$OUT/ablations2.json" --deadline $(( $(left) - 20 ))
echo "== 4. full run with compile ($(left)s left)"
[ "$(left)" -gt 110 ] && python3 bench/full_run.py $C --configs compile=True --json "$OUT/full_run_compile.json" --deadline 30
echo "== done in $(( $(date +%s) - START ))s"
ls -la "$OUT"
