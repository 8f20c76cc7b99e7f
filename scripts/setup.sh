#!/usr/bin/env bash
# Create .venv (if missing) and install bertcls into it, with the dev tools when given `dev`.
# torch comes first and pinned: an unpinned `pip install torch` pulls a multi-GB CUDA build. Where the package index
# has only that build for torch==2.13.0 too (PyPI on Linux), ask PyTorch's CPU index for a CPU-only install:
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh
# or another build, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124".
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
echo "setting up .venv: torch, then bertcls${extra:+ with its $extra extra} (pip; a few minutes the first time)" >&2
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
if [ "$extra" = "dev" ]; then
  python -m pip install --quiet -e ".[dev]"
else
  python -m pip install --quiet -e .
fi
