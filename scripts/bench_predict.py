"""Benchmark prediction: bertcls through transformers, its traced TorchScript graph, ONNX fp32 and ONNX int8,
against transformers.pipeline, on the same texts.

    python scripts/bench_predict.py --model runs/sst2-minilm --data ../shared/data/sst2/test.tsv

Prints, for each: batch throughput (sentences/s over every text of --data, after one warm-up
batch), accuracy on the file's labels, and the cold start of a fresh process classifying one
text (median wall time of --repeats runs: `bertcls predict --model X TEXT`, which takes the traced
graph or an ONNX folder; `python -c "Predictor.load(X).predict([TEXT])"` for the transformers path;
`python -c "pipeline(...)(TEXT)"`). The ONNX folders are exported into a temporary folder first.
A benchmark, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_TEXT = "a gorgeous, witty, seductive movie."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a finished run folder")
    parser.add_argument("--data", required=True, help="a labelled csv/tsv/jsonl file, read with the run's column mapping")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="cold-start runs per variant (the median is shown)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime (default: theirs)")
    args = parser.parse_args()

    from bertcls import runs
    from bertcls.config import DataConfig
    from bertcls.data import read_split
    from bertcls.export import export_onnx
    from bertcls.predict import OnnxPredictor, Predictor, load_predictor

    saved = (runs.read_run_config(args.model) or {}).get("data") or {}
    columns = DataConfig(train=args.data, text_column=saved.get("text_column", "text"), label_column=saved.get("label_column", "label"))
    split = read_split(args.data, columns, "bench")
    texts, gold = split.texts, [str(v) for v in split.labels]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"model {args.model} | {len(texts)} texts from {args.data} | batch {args.batch_size} | "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'default'}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folders = {"onnx-fp32": Path(tmp) / "fp32", "onnx-int8": Path(tmp) / "int8"}
        for name, folder in folders.items():
            checked = export_onnx(args.model, folder, quantize="int8" if name.endswith("int8") else None)
            print(f"exported {name}: max |logit - PyTorch| on check texts {checked['max_abs_logit_diff']:.2e}", flush=True)

        predictors = {"pytorch": Predictor.load(args.model, device="cpu", batch_size=args.batch_size)}
        cold = {"pytorch": ["-c", f"from bertcls.predict import Predictor\n"
                                  f"print(Predictor.load({str(args.model)!r}, device='cpu').predict([{ONE_TEXT!r}])[0].label)"]}
        traced = load_predictor(args.model, device="cpu", batch_size=args.batch_size)
        if traced.engine == "torchscript":  # training saved the graph (training.save_torchscript)
            predictors["torchscript"] = traced
        for name in ("torchscript", *folders):
            cold[name] = ["-m", "bertcls", "predict", "--model", str(folders.get(name, args.model)), ONE_TEXT]
        for name, folder in folders.items():
            predictors[name] = OnnxPredictor.load(folder, batch_size=args.batch_size)
            if args.threads:
                _set_ort_threads(predictors[name], folder, args.threads)
        rows = []
        for name, predictor in predictors.items():
            predictor.predict(texts[: args.batch_size])  # warm-up
            start = time.perf_counter()
            labels = [p.label for p in predictor.predict(texts)]
            seconds = time.perf_counter() - start
            rows.append((name, len(texts) / seconds, _accuracy(labels, gold), _cold_start(cold[name], args.repeats)))
            print(f"  {name} done", file=sys.stderr, flush=True)
        rows.append(("transformers.pipeline", *_pipeline(args.model, texts, gold, args.batch_size, args.repeats)))

    print(f"\n{'variant':<22} {'sentences/s':>12} {'accuracy':>9} {'cold start (s)':>15} {'vs pipeline':>12}")
    base = rows[-1][3]
    for name, rate, accuracy, cold in rows:
        print(f"{name:<22} {rate:>12.1f} {accuracy:>9.4f} {cold:>15.2f} {cold / base:>11.2f}x")


def _accuracy(labels: list[str], gold: list[str]) -> float:
    return sum(a == b for a, b in zip(labels, gold, strict=True)) / len(gold)


def _cold_start(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return statistics.median(times)


def _pipeline(run: Path, texts: list[str], gold: list[str], batch_size: int, repeats: int) -> tuple[float, float, float]:
    from transformers import pipeline

    from bertcls import runs

    folder = str(runs.model_dir(run))
    clf = pipeline("text-classification", model=folder, device="cpu", truncation=True)
    clf(texts[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    labels = [o["label"] for o in clf(texts, batch_size=batch_size)]
    rate = len(texts) / (time.perf_counter() - start)
    code = f"from transformers import pipeline; print(pipeline('text-classification', model={folder!r}, device='cpu')({ONE_TEXT!r}))"
    return rate, _accuracy(labels, gold), _cold_start(["-c", code], repeats)


def _set_ort_threads(predictor, folder: Path, threads: int) -> None:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    predictor.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    main()
