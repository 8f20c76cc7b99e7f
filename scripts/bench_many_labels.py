"""Benchmark: `bertcls train`, `bertcls evaluate` and `bertcls predict --file` on a synthetic task with many labels.

A tiny model, one epoch, ROWS training rows spread over LABELS labels (validation and test: a
tenth of that each), every job in its own process: wall time, CPU time and peak RSS (ru_maxrss
from wait4, so each figure is that process's alone), and the sizes of what the run wrote.

    python scripts/bench_many_labels.py --labels 1000 --rows 20000
    python scripts/bench_many_labels.py --labels 1000 10000 --rows 20000    # side by side

Only the standard library: the measured processes import bertcls, this one does not.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = ["the", "film", "was", "plot", "acting", "story", "really", "quite", "and", "a", "movie", "cast", "ticket", "queue"]


def write_split(path: Path, rows: int, labels: int, seed: int) -> None:
    """`rows` rows; row i has label i mod `labels` and a cue word naming it, among filler words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = f"label_{i % labels:05d}"
            writer.writerow([" ".join(rng.sample(WORDS, 6) + [f"cue{i % labels}"]), label])


def write_config(folder: Path, rows: int, labels: int) -> Path:
    held = max(rows // 10, 2)
    for name, n, seed in (("train", rows, 0), ("validation", held, 1), ("test", held, 2)):
        write_split(folder / f"{name}.csv", n, labels, seed)
    config = folder / "config.yaml"
    config.write_text(
        f"seed: 0\noutput_dir: {folder / 'run'}\n"
        f"data: {{train: {folder / 'train.csv'}, validation: {folder / 'validation.csv'}, test: {folder / 'test.csv'}, max_length: 32}}\n"
        "model: {name: tiny}\n"
        "training: {epochs: 1, batch_size: 64, eval_batch_size: 256, learning_rate: 1.0e-3, precision: fp32, num_threads: 2, log_every_steps: 100}\n",
        encoding="utf-8")
    return config


def run_child(argv: list[str], label: str) -> dict:
    """One process: wall seconds, CPU seconds and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"[bench] {label} failed:\n{err.read().decode(errors='replace')[-3000:]}")
    # Linux: ru_maxrss is in KiB.
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def sizes(run: Path) -> dict[str, float]:
    """MiB of metrics.json, the newest checkpoint's state.json and the test split's predictions.csv."""
    mib = lambda p: p.stat().st_size / 2**20 if p.is_file() else float("nan")  # noqa: E731
    states = sorted(run.glob("checkpoint-*/state.json"))
    return {"metrics_mib": mib(run / "metrics.json"), "state_mib": mib(states[-1]) if states else float("nan"),
            "predictions_mib": mib(run / "reports" / "test" / "predictions.csv")}


def bench(labels: int, rows: int, evaluate: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, rows, labels)
        python = [sys.executable, "-m", "bertcls"]
        result = {"labels": labels, "rows": rows, **run_child(python + ["train", str(config)], f"train, {labels} labels")}
        result.update(sizes(folder / "run"))
        if evaluate:
            timed = run_child(python + ["evaluate", str(folder / "test.csv"), "--model", str(folder / "run"),
                                        "--output", str(folder / "eval"), "--device", "cpu"], f"evaluate, {labels} labels")
            result.update({f"evaluate_{k}": v for k, v in timed.items()})
            timed = run_child(python + ["predict", "--model", str(folder / "run"), "--file", str(folder / "test.csv"), "--top-k", "5",
                                        "--output", str(folder / "predicted.csv"), "--device", "cpu"], f"predict --file, {labels} labels")
            result.update({f"predict_{k}": v for k, v in timed.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[1000], help="label counts to measure, side by side")
    parser.add_argument("--rows", type=int, default=20000, help="training rows (validation and test: a tenth each)")
    parser.add_argument("--no-evaluate", action="store_true", help="time only `bertcls train` (not evaluate and predict)")
    args = parser.parse_args()
    results = [bench(n, args.rows, not args.no_evaluate) for n in args.labels]
    nan = float("nan")
    print("| labels | rows | train wall s | train CPU s | train peak RSS MiB | evaluate wall s | evaluate peak RSS MiB "
          "| predict --file wall s | predict --file peak RSS MiB | metrics.json MiB | state.json MiB | test predictions.csv MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['labels']:,} | {r['rows']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_mib']:.0f} | "
              f"{r.get('evaluate_wall_s', nan):.1f} | {r.get('evaluate_rss_mib', nan):.0f} | "
              f"{r.get('predict_wall_s', nan):.1f} | {r.get('predict_rss_mib', nan):.0f} | "
              f"{r['metrics_mib']:.2f} | {r['state_mib']:.2f} | {r['predictions_mib']:.2f} |")


if __name__ == "__main__":
    main()
