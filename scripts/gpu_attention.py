"""Where a GPU's bf16 training time goes when texts come in many lengths: MiniLM training steps on real SST-2
batches, twice over the same batches (the first pass meets each text length for the first time, the second
has seen them all), under each of torch's attention kernels, in one process.

    python scripts/gpu_attention.py --model MODEL_DIR --data-dir SST2_DIR [--steps 80]

Each row: the first pass's and the second pass's seconds, and their difference per new batch shape. The
order matters: a kernel's per-shape set-up is paid once a process, so 'cudnn only' after 'default' costs
nothing new where the default already ran cuDNN's kernels.
"""

from __future__ import annotations

import argparse
import csv
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def batches(tokenizer, data_dir: Path, steps: int, batch_size: int, multiple: int | None):
    with open(data_dir / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:][: steps * batch_size]
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tokenizer([r[0] for r in chunk], truncation=True, max_length=128, padding=True, pad_to_multiple_of=multiple,
                        return_tensors="pt")
        enc["labels"] = torch.tensor([int(r[1]) for r in chunk])
        out.append({k: v.cuda() for k, v in enc.items()})
    return out


def passes(model, optimizer, data, dtype, kernels):
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in data:
            with torch.autocast("cuda", dtype=dtype) if dtype else nullcontext(), sdpa_kernel(kernels) if kernels else nullcontext():
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2, dtype=torch.float32).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    exact = batches(tokenizer, args.data_dir, args.steps, 32, None)
    by8 = batches(tokenizer, args.data_dir, args.steps, 32, 8)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}, "
          f"attention {model.config._attn_implementation}; {args.steps} steps of 32 texts a pass")
    print(f"{'setting':<34} {'shapes':>6} {'pass 1 s':>9} {'pass 2 s':>9} {'ms/step 2':>10} {'s per new shape':>16}")
    settings = [  # (name, batches, dtype, kernels)
        ("fp32, default kernels", exact, None, None),
        ("bf16, default, padded to 8", by8, torch.bfloat16, None),
        ("bf16, default", exact, torch.bfloat16, None),
        ("bf16, efficient only", exact, torch.bfloat16, [SDPBackend.EFFICIENT_ATTENTION]),
        ("bf16, cudnn only", exact, torch.bfloat16, [SDPBackend.CUDNN_ATTENTION]),
        ("bf16, math only", exact, torch.bfloat16, [SDPBackend.MATH]),
    ]
    for name, data, dtype, kernels in settings:
        shapes = len({tuple(b["input_ids"].shape) for b in data})
        try:
            first, second = passes(model, optimizer, data, dtype, kernels)
        except RuntimeError as exc:
            print(f"{name:<34} failed: {str(exc).splitlines()[0][:100]}", flush=True)
            continue
        print(f"{name:<34} {shapes:>6} {first:>9.2f} {second:>9.2f} {1000 * second / len(data):>10.1f} {(first - second) / shapes:>16.3f}", flush=True)


if __name__ == "__main__":
    main()
