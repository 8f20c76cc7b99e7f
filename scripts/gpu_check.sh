#!/usr/bin/env bash
# GPU check: train configs/sst2-minilm.yaml in fp32 and bf16 on this machine's GPU(s); print
# samples/s and real (non-pad) tokens/s over the optimizer steps, peak GPU memory, MFU (model FLOPs, 6 x non-embedding
# parameters per real token, against the GPU's dense bf16 peak; PEAK_TFLOPS=N sets it) and test accuracy for each.
#
# Usage: scripts/gpu_check.sh MODEL_DIR SST2_DIR [NPROC] [--set KEY=VALUE ...]
#   MODEL_DIR  all-MiniLM-L6-v2 as a model folder (bash ../shared/scripts/get-minilm.sh makes one)
#   SST2_DIR   holds train.tsv, dev.tsv, test.tsv (header `sentence<TAB>label`)
#   NPROC      processes (GPUs) to launch with torchrun; default 1 (no launcher)
# Uses the torch already installed (a CUDA build) and bertcls from this checkout; where a dependency is missing it
# installs bertcls with `pip install -e .` (offline: WHEELHOUSE=DIR installs from the wheels in DIR).
# Run folders go to $OUT (default: gpu-check).
set -euo pipefail
usage="usage: gpu_check.sh MODEL_DIR SST2_DIR [NPROC] [--set KEY=VALUE ...]"
model="$(realpath "${1:?$usage}")"
data="$(realpath "${2:?$usage}")"
shift 2
nproc=1
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then nproc="$1"; shift; fi
out="$(realpath -m "${OUT:-gpu-check}")"
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '|', torch.cuda.device_count(), 'GPU(s)')"
# bertcls runs from this checkout's src/; its dependencies are installed only where one is missing (an editable
# install would build in an isolated environment, which needs the package index even when they are all there)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "import transformers, accelerate, datasets, sklearn, typer, pydantic, safetensors, tokenizers, yaml, matplotlib, tqdm, rich, huggingface_hub" 2>/dev/null; then
  "$python" -m pip install --quiet ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} -e .
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

launch=("$python" -m bertcls)
if [ "$nproc" -gt 1 ]; then launch=("$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m bertcls); fi

for precision in fp32 bf16; do
  echo "== $precision: ${launch[*]} train configs/sst2-minilm.yaml" >&2
  "${launch[@]}" train configs/sst2-minilm.yaml --overwrite --quiet \
    --set model.name="$model" --set data.train="$data/train.tsv" --set data.validation="$data/dev.tsv" \
    --set data.test="$data/test.tsv" --set output_dir="$out/$precision" --set training.precision="$precision" \
    --set training.device=cuda --set training.num_threads=null "$@" >/dev/null
done

"$python" - "$out" "$nproc" <<'PY'
import json, math, os, sys
from pathlib import Path

import torch
from safetensors import safe_open

# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s per GPU, by a part of the name torch
# reports (the H100 SXM reports itself as "H100 80GB HBM3"; first match wins); PEAK_TFLOPS overrides.
BF16_PEAK = {"H200": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
out, nproc = Path(sys.argv[1]), int(sys.argv[2])
name = torch.cuda.get_device_name(0)
peak = float(os.environ["PEAK_TFLOPS"]) if os.environ.get("PEAK_TFLOPS") else \
    next((tflops for key, tflops in BF16_PEAK.items() if key in name), None)


def nonembedding_params(model_dir: Path) -> int:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys() if "embeddings" not in key)


print(f"GPU: {name}; bf16 peak {peak or 'unknown (set PEAK_TFLOPS)'} TFLOP/s per GPU")
print("Rates over the optimizer steps: the training loop's seconds less its validation passes and checkpoint writes.")
print(f"{'precision':<10} {'processes':>9} {'steps s':>8} {'loop s':>7} {'samples/s':>10} {'tokens/s':>11} {'peak GPU MiB':>13} {'MFU':>6} {'test acc':>9}")
for precision in ("fp32", "bf16"):
    m = json.loads((out / precision / "metrics.json").read_text())
    t = m["train"]
    steps_s = t["seconds"] - t.get("validation_seconds", 0) - t.get("checkpoint_seconds", 0)
    samples, tokens = t["examples_per_s"] * t["seconds"], t["real_tokens_per_s"] * t["seconds"]
    # model FLOPs per real (non-pad) token: forward 2 and backward 4 per non-embedding parameter
    flops = 6 * nonembedding_params(out / precision / "model") * tokens / steps_s
    mfu = f"{100 * flops / (peak * 1e12 * nproc):.1f}%" if peak else "n/a"
    print(f"{precision:<10} {nproc:>9} {steps_s:>8.1f} {t['seconds']:>7.1f} {samples / steps_s:>10.1f} {tokens / steps_s:>11.0f} "
          f"{t.get('peak_gpu_memory_mb', float('nan')):>13.0f} {mfu:>6} {m['test']['accuracy']:>9.4f}")
PY
