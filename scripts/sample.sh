#!/usr/bin/env bash
# The quick start: install, then prepare, train and evaluate on the bundled real sample (data/sample).
# Extra arguments go to brainmri_train, e.g.  bash scripts/sample.sh --epochs 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
export MPLBACKEND=Agg
brainmri_train --data-dir data/sample --run-dir runs/sample --overwrite --preset sample "$@"
