#!/usr/bin/env bash
# The test command: notebook tests (nbdev_test) and integration tests (pytest tests/).
# Slow, GPU and browser cells in notebooks are skipped by nbdev_test unless asked:
#   NBDEV_FLAGS="slow" bash scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh dev
export MPLBACKEND=Agg
nbdev_test --n_workers 2 --timing ${NBDEV_FLAGS:+--flags "$NBDEV_FLAGS"}
python -m pytest tests -q -ra
