#!/usr/bin/env bash
# One command: install bertcls with its dev tools into .venv and run the default test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# -n 2: the suite on two worker processes; --dist loadscope keeps a module's tests on one worker, so a
# module-scoped training runs once, not once per worker (each worker still builds its own shared tiny run)
workers="${BERTCLS_TEST_WORKERS:-2}"
# One torch thread per worker (unless OMP_NUM_THREADS says otherwise): two workers that each ran torch on every core
# oversubscribed the cores, and the suite took 162-183 s on 2 cores instead of about 140 s.
if [ "$workers" != 0 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
python -m pytest -n "$workers" --dist loadscope "$@"
