#!/usr/bin/env bash
# Prepare what bench/gpu_session.sh needs on a lent GPU machine, which reaches no package registry:
#   .whl/      wheels of the packages brainmri needs that the machine's image lacks (Python 3.12, x86-64)
#   .gpudata/  a copy of the shared figshare JPEGs (the ../shared beside the checkout does not travel)
# Both folders are ignored through .git/info/exclude and travel with `carry`:
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=560)
# The image already has torch 2.11, numpy, scipy, opencv-python-headless, PyYAML, pandas, scikit-learn,
# h5py, rich, matplotlib and packaging (see /work/.library/device/KINDS.md); pins below are the versions
# the dev venv runs (pip show), so the GPU run uses the same albumentations as the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
PYVER=${PYVER:-3.12}
WHEELS=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2 fastcore==1.14.5)
SHARED=${SHARED:-../shared/data/figshare-jpg}

for d in .whl .gpudata; do
  grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
mkdir -p .whl
for w in "${WHEELS[@]}"; do
  name=${w%%==*}
  if ls .whl/ | grep -qi "^${name//-/_}-${w##*==}-"; then continue; fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$w"
done
# one version of each package: two would stop the install on the machine
dups=$(ls .whl/*.whl | xargs -n1 basename | sed 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dups" ] || { echo "more than one wheel of: $dups (remove the extra ones from .whl/)"; exit 1; }

if [ -d "$SHARED" ]; then
  mkdir -p .gpudata
  rsync -a --delete "$SHARED/" .gpudata/figshare-jpg/ 2>/dev/null || { rm -rf .gpudata/figshare-jpg; cp -r "$SHARED" .gpudata/figshare-jpg; }
else
  echo "warning: $SHARED not found: gpu_session.sh falls back to data/sample"
fi
du -sh .whl .gpudata 2>/dev/null || true
echo "working tree that travels (must stay under 64 MiB with the carried folders):"
git ls-files -co --exclude-standard -z | du -ch --files0-from=- | tail -1
