#!/usr/bin/env bash
# Make .venv with brainmri and everything it needs. Safe to run again (it only installs what is missing).
# Usage: source scripts/setup.sh [dev]     (dev: also the test tools and Debian's chromium for the browser test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# torch: keep one that is there; else a GPU machine takes the normal (CUDA) build, and a
# CPU-only machine the CPU build of 2.13.0 (on the dev/CI machines it lies on local disk).
if ! python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then python -m pip install -q torch
  else python -m pip install -q torch==2.13.0; fi
fi
# The rest with uv, which resolves to the same versions as pip and installs them in about 45 s on 2 cores,
# where pip takes about 90 s (bytecode compiled either way: without it, where PYTHONDONTWRITEBYTECODE is set,
# every start of the kit would compile its imports again, about 10 s). pip where uv can't be had.
# uv reads no pip.conf: an index set there (or in PIP_INDEX_URL) is passed on.
target=.; [ "${1:-}" = dev ] && target='.[dev]'
index=${PIP_INDEX_URL:-$(python -m pip config get global.index-url 2>/dev/null || true)}
uv_log=$(mktemp)
if ! { python -m pip install -q uv && python -m uv pip install -q --compile-bytecode ${index:+--index-url "$index"} -e "$target"; } >"$uv_log" 2>&1; then
  tail -n 5 "$uv_log" >&2
  echo "uv could not install the requirements (above); installing them with pip" >&2
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q -e "$target"
fi
rm -f "$uv_log"
if [ "${1:-}" = dev ]; then
  # nbdev's own hooks: JupyterLab cleans a notebook on every save (jupyter_hooks = True in settings.ini;
  # the pre-save hook goes into ~/.jupyter) and git resolves notebook merge conflicts with nbdev_merge
  # (.gitattributes and .gitconfig, committed). In a git worktree nbdev sets the Jupyter hook, then
  # stops at the git hooks (.git is a file there).
  nbdev_install_hooks >/dev/null 2>&1 || echo "nbdev_install_hooks set the JupyterLab save hook but not the git hooks (a git worktree?)" >&2
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
    else echo "Debian's chromium is missing: sudo apt-get install chromium (the browser test needs it)" >&2; fi
  fi
fi
