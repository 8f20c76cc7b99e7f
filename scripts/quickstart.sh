#!/usr/bin/env bash
# One command, offline: install, train a tiny BERT on the shipped sample data, then predict.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
bertcls train configs/sample.yaml --overwrite
bertcls predict --model runs/sample "a gorgeous, witty, seductive movie" "the plot is nothing but boilerplate clichés"
