"""Benchmark: bertcls against transformers.Trainer and pipeline on a reference workload, side by side in one run.

The workload: a BERT checkpoint (MiniLM-L6 by default), the first 4,000 rows of train.tsv, 1 epoch, batch 32,
AdamW lr 1e-4, weight decay 0.01, linear schedule with 10% warmup, max_length 128, seed 0,
2 CPU threads; scored on test.tsv. Every measured job runs in its own Python process, so each
wall time includes nothing else and each peak RSS (ru_maxrss from wait4) is that job's alone.

    python scripts/bench.py --model ~/.cache/bertcls-models/minilm-l6 --data-dir ../shared/data/sst2
    python scripts/bench.py ... --json bench.json --extra     # also Trainer bf16 and bertcls fp32
    python scripts/bench.py ... --device cuda --precision bf16 --rows 20000   # on a GPU: both sides in bf16

Writes a markdown report to stdout, progress to stderr. Only the standard library is imported at
the top: worker processes import what they measure, and nothing more.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

SRC = Path(__file__).resolve().parents[1] / "src"
ONE_TEXT = "a gorgeous, witty, seductive movie"
WORKLOAD = {"rows": 4000, "epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1,
      "max_length": 128, "seed": 0, "threads": 2}


# ---------------------------------------------------------------------------- shared helpers

def read_tsv(path: Path, rows: int | None = None) -> tuple[list[str], list[int]]:
    """GLUE-style TSV (`sentence<TAB>label`, quotes are text) -> texts, integer labels."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        t, lab = header.index("sentence"), header.index("label")
        for row in reader:
            if rows is not None and len(texts) >= rows:
                break
            texts.append(row[t])
            labels.append(int(row[lab]))
    return texts, labels


def scores(gold, pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(gold, pred)), "f1_macro": float(f1_score(gold, pred, average="macro"))}


def emit(result: dict) -> None:
    """A worker's result: the last stdout line, JSON."""
    print("BENCH " + json.dumps(result), flush=True)


def run_child(argv: list[str], env: dict[str, str], label: str) -> dict:
    """Run one process; its wall time, peak RSS (MiB, from wait4) and, for workers, its JSON result."""
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"[bench] {label} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    # Linux: ru_maxrss is in KiB. CPU seconds are less disturbed than wall time by other load on the machine.
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            result.update(json.loads(line[6:]))
    print(f"[bench] {label}: {wall:.1f} s wall, {result['cpu_s']:.1f} s CPU, {result['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------- workers (one process each)

def worker_bertcls(spec: dict) -> None:
    """bertcls through its Python API: `train(load_config(...))`; times tokenising + the optimizer steps (the loop's
    seconds less its validation pass and checkpoint, which metrics.json reports apart, as Trainer's figure has neither)."""
    from bertcls import data
    from bertcls.config import load_config
    from bertcls.train import train

    original, spent, tokens = data.encode, [0.0], {}

    def timed_encode(split, *args, **kwargs):  # the run's tokenising, timed from outside
        start = time.perf_counter()
        encoded = original(split, *args, **kwargs)
        spent[0] += time.perf_counter() - start
        tokens[split.name] = sum(encoded.lengths)
        return encoded

    data.encode = timed_encode
    run = train(load_config(spec["config"]), quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())
    paused_s = metrics["train"]["validation_seconds"] + metrics["train"]["checkpoint_seconds"]
    train_s = metrics["train"]["seconds"] - paused_s + spent[0]
    emit({"train_s": train_s, "loop_s": metrics["train"]["seconds"], "paused_s": paused_s, "tokenise_s": spent[0], "real_tokens": tokens["train"],
          "samples": spec["rows"], "accuracy": metrics["test"]["accuracy"], "f1_macro": metrics["test"]["f1_macro"],
          "peak_gpu_mib": metrics["train"].get("peak_gpu_memory_mb"), "precision": metrics["train"]["precision"]})


def _hf_dataset(tokenizer, texts, labels, max_length):
    from datasets import Dataset

    ds = Dataset.from_dict({"sentence": texts, "label": labels})
    return ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=max_length), batched=True, remove_columns=["sentence"])


def worker_trainer(spec: dict) -> None:
    """transformers.Trainer with DataCollatorWithPadding and otherwise default arguments."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    torch.set_num_threads(WORKLOAD["threads"])
    data_dir = Path(spec["data_dir"])
    train_texts, train_labels = read_tsv(data_dir / "train.tsv", spec["rows"])
    test_texts, test_labels = read_tsv(data_dir / "test.tsv")
    set_seed(WORKLOAD["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    # fp32 weights whatever dtype the checkpoint was saved in (as bertcls loads them); bf16 only as Trainer's autocast.
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=2, dtype=torch.float32)
    start = time.perf_counter()
    train_ds = _hf_dataset(tokenizer, train_texts, train_labels, WORKLOAD["max_length"])
    tokenise_s = time.perf_counter() - start
    args = TrainingArguments(
        output_dir=spec["out"], per_device_train_batch_size=WORKLOAD["batch_size"], num_train_epochs=WORKLOAD["epochs"],
        learning_rate=WORKLOAD["learning_rate"], weight_decay=WORKLOAD["weight_decay"], warmup_steps=WORKLOAD["warmup_ratio"],
        lr_scheduler_type="linear", seed=WORKLOAD["seed"], use_cpu=spec["device"] == "cpu", save_strategy="no", report_to="none", disable_tqdm=True,
        train_sampling_strategy="group_by_length" if spec.get("grouped") else "random", bf16=bool(spec.get("bf16")),
    )
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer), train_dataset=train_ds,
                      processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - start
    test_ds = _hf_dataset(tokenizer, test_texts, test_labels, WORKLOAD["max_length"])
    out = trainer.predict(test_ds)
    # The rest of what `bertcls train` does in its whole process: a validation pass (its validation split is test.tsv
    # too), as eval_strategy="epoch" would make, and the saved model.
    trainer.evaluate(test_ds)
    trainer.save_model(str(Path(spec["out"]) / "model"))
    emit({"train_s": tokenise_s + loop_s, "loop_s": loop_s, "tokenise_s": tokenise_s, "precision": "bf16" if args.bf16 else "fp32",
          "real_tokens": sum(len(ids) for ids in train_ds["input_ids"]), "samples": len(train_texts),
          "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if spec["device"] == "cuda" else None,
          **scores(out.label_ids.tolist(), out.predictions.argmax(-1).tolist())})


def _best_of(n: int, fn) -> tuple[float, float, object]:
    """Fastest of `n` calls: wall seconds, CPU seconds (this process, all threads), last result."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, out


def worker_predict(spec: dict) -> None:
    """Batch prediction over test.tsv: bertcls (transformers model, and the run's traced graph) vs pipeline vs
    Trainer.predict, best of `repeat`."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        pipeline,
    )

    from bertcls import machine as bertcls_machine
    from bertcls.predict import Predictor, TorchScriptPredictor, resolve_device_precision

    torch.set_num_threads(WORKLOAD["threads"])
    texts, gold = read_tsv(Path(spec["data_dir"]) / "test.tsv")
    run, folder, repeat, device = Path(spec["run"]), Path(spec["run"]) / "model", spec["repeat"], spec["device"]
    rows = {}

    def record(name, batch, timing, labels, counted=True):
        seconds, cpu = timing
        rows[name] = {"batch": batch, "seconds": seconds, "cpu_s": cpu, "per_s": len(texts) / seconds, "labels": labels, **scores(gold, labels),
                      "counted": counted}  # False: a bertcls row `bertcls predict` does not run on this machine

    products = None  # how much of it is matrix multiplication: on the CPU, counted with the fp32 Predictor
    for precision in ("fp32", "bf16"):
        side_row = None  # the graph through the library bertcls does not pick here: timed, outside the ratio
        predictors = {"Predictor": Predictor.load(run, device=device, precision=precision)}
        graph = TorchScriptPredictor.load(run, precision=precision) if device == "cpu" else None  # the run's traced graph
        if graph is not None:
            predictors["TorchScript"] = graph
            if precision == "fp32" and torch.backends.mkldnn.is_available():
                # and through the other library (machine.onednn_fp32_matmul): the graph as traced, through MKL,
                # where bertcls rewrites it for oneDNN, and the other way round; side by side, outside the ratio
                side_row = f"TorchScript, {'MKL' if graph.onednn else 'oneDNN'}"
                with mock.patch.object(bertcls_machine, "onednn_fp32_matmul", lambda o=graph.onednn: not o):
                    predictors[side_row] = TorchScriptPredictor.load(run, precision=precision)
        for name, predictor in predictors.items():
            predictor.predict(texts[:64])  # warm-up: first-call allocations, oneDNN kernel selection
            *timing, out = _best_of(repeat, lambda p=predictor: p.predict(texts))
            record(f"bertcls {name} ({precision})", predictor.batch_size, timing, [int(o.label) for o in out], counted=name != side_row)
        if precision == "fp32" and device == "cpu":
            products = matrix_products(predictors["Predictor"], texts)

    label_id = {name: int(i) for name, i in AutoModelForSequenceClassification.from_pretrained(folder).config.label2id.items()}
    for batch in (None, 64):
        pipe = pipeline("text-classification", model=str(folder), device=-1 if device == "cpu" else 0)
        kwargs = {"truncation": True} | ({"batch_size": batch} if batch else {})
        pipe(texts[:64], **kwargs)
        *timing, out = _best_of(repeat, lambda p=pipe, k=kwargs: p(texts, **k))
        record("pipeline" + (f" (batch_size={batch})" if batch else " (defaults)"), batch or 1, timing, [label_id[o["label"]] for o in out])

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    args = TrainingArguments(output_dir=spec["out"], use_cpu=device == "cpu", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.predict(_hf_dataset(tokenizer, texts[:64], gold[:64], WORKLOAD["max_length"]))
    *timing, out = _best_of(repeat, lambda: trainer.predict(_hf_dataset(tokenizer, texts, gold, WORKLOAD["max_length"])))
    record("Trainer.predict (defaults)", args.per_device_eval_batch_size, timing, out.predictions.argmax(-1).tolist())

    reference = rows["bertcls Predictor (fp32)"]["labels"]
    for row in rows.values():
        row["same_as_bertcls_fp32"] = sum(a == b for a, b in zip(row.pop("labels"), reference, strict=True)) / len(reference)
    # What `bertcls predict` runs in by default for this run on this machine: the rows its ratio counts.
    emit({"predict": rows, "sentences": len(texts), "default_precision": resolve_device_precision(run, device, "auto")[1],
          "products": products})


def matrix_products(predictor, texts: list[str]) -> dict:
    """How much of prediction is matrix multiplication: the FLOPs of the model's matrix products over `texts`, counted
    as the Predictor runs them (its batches and padding, the last layer's first token only), and the rate this CPU
    multiplies matrices of the model's shapes at on their own (one encoder layer's mix, a typical batch), per precision."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        predictor.predict(texts)
    lengths = [len(ids) for ids in predictor.tokenizer(texts, truncation=True, max_length=predictor.max_length)["input_ids"]]
    config = predictor.model.config
    m, h, i = predictor.batch_size * round(sum(lengths) / len(lengths)), config.hidden_size, config.intermediate_size
    shapes = [(h, h)] * 4 + [(h, i), (i, h)]  # queries, keys, values, attention output; the feed-forward block's two
    def onednn(x, w, b):  # what the traced graph runs in fp32 on AMD and Intel CPUs (see bertcls.machine.onednn_fp32_matmul)
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    rates = {}
    multiplies = [("fp32", torch.float32, F.linear), ("bf16", torch.bfloat16, F.linear)]
    if torch.backends.mkldnn.is_available():
        multiplies.insert(1, ("fp32 through oneDNN", torch.float32, onednn))
    for name, dtype, multiply in multiplies:
        cases = [(torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)) for k, n in shapes]
        flops = sum(2 * m * k * n for k, n in shapes)
        for x, w, b in cases:  # warm-up: oneDNN builds its kernels on the first call of a shape
            multiply(x, w, b)
        best, _, _ = _best_of(5, lambda c=cases, f=multiply: [f(x, w, b) for x, w, b in c for _ in range(10)])
        rates[name] = 10 * flops / best / 1e9
    return {"gflop": counter.get_total_flops() / 1e9, "gemm_gflops": rates, "batch_tokens": m}


def worker_pipeline_one(spec: dict) -> None:
    """What a user runs to classify one text with transformers: import, build the pipeline, call it."""
    from transformers import pipeline

    print(pipeline("text-classification", model=spec["folder"])(spec["text"]))


WORKERS = {"bertcls": worker_bertcls, "trainer": worker_trainer, "predict": worker_predict, "pipeline_one": worker_pipeline_one}


# ---------------------------------------------------------------------------- the run

def write_config(work: Path, name: str, args, precision: str | None = None) -> Path:
    import_free_yaml = {  # JSON is YAML: no import needed here
        "seed": WORKLOAD["seed"], "output_dir": str(work / name),
        "data": {"train": str(args.data_dir / "train.tsv"), "validation": str(args.data_dir / "test.tsv"),
                 "test": str(args.data_dir / "test.tsv"), "text_column": "sentence", "label_column": "label",
                 "max_length": WORKLOAD["max_length"], "max_train_samples": args.rows},
        "model": {"name": str(args.model)},
        "training": {"epochs": WORKLOAD["epochs"], "batch_size": WORKLOAD["batch_size"], "learning_rate": WORKLOAD["learning_rate"],
                     "weight_decay": WORKLOAD["weight_decay"], "warmup_ratio": WORKLOAD["warmup_ratio"], "lr_scheduler": "linear",
                     "num_threads": WORKLOAD["threads"], "precision": precision or args.precision, "metric_for_best": "accuracy",
                     "device": args.device},
    }
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(import_free_yaml, indent=1))
    return path


def median_wall(argv: list[str], env: dict[str, str], label: str, n: int) -> dict:
    runs = [run_child(argv, env, f"{label} ({i + 1}/{n})") for i in range(n)]
    return {"wall_s": statistics.median(r["wall_s"] for r in runs), "all_s": [r["wall_s"] for r in runs],
            "cpu_s": statistics.median(r["cpu_s"] for r in runs), "rss_mib": statistics.median(r["rss_mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("~/.cache/bertcls-models/minilm-l6").expanduser(), help="checkpoint folder")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/sst2",
                        help="folder with train.tsv and test.tsv (sentence<TAB>label)")
    parser.add_argument("--rows", type=int, default=WORKLOAD["rows"], help="training rows (default: 4000)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3, help="cold-start runs per command (median) and prediction passes (best)")
    parser.add_argument("--extra", action="store_true", help="also train Trainer grouped+bf16 and bertcls fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train and predict")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="bertcls training.precision; fp32/bf16 force both sides (auto: bertcls picks bf16 where the hardware "
                             "computes it natively, Trainer keeps its default, fp32); the report says what each side ran in")
    parser.add_argument("--only", choices=["train", "predict", "startup"], action="append", help="run only these parts")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](json.loads(args.spec))
        return
    args.model, args.data_dir = args.model.expanduser().resolve(), args.data_dir.expanduser().resolve()
    for path in (args.model / "config.json", args.data_dir / "train.tsv", args.data_dir / "test.tsv"):
        if not path.is_file():
            raise SystemExit(f"bench: {path} not found (see --model, --data-dir)")
    work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bertcls-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.only or ["train", "predict", "startup"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(WORKLOAD["threads"]), "MKL_NUM_THREADS": str(WORKLOAD["threads"]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    py = [sys.executable]

    def save() -> None:  # after every job, so a failure late in the run keeps what was measured
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")

    def worker(name: str, label: str, **spec) -> dict:
        save()
        return run_child(py + [__file__, "--worker", name, "--spec", json.dumps(spec)], env, label)

    results: dict = {"workload": WORKLOAD | {"rows": args.rows}, "model": str(args.model), "machine": machine(args.device),
                     "device": args.device, "precision": args.precision}
    common = {"model": str(args.model), "data_dir": str(args.data_dir), "rows": args.rows, "device": args.device}
    trainer_bf16 = args.precision == "bf16"
    if "train" in parts:
        # bertcls and Trainer jobs alternate, so a change in the machine's load hits both sides alike.
        train = results["train"] = {}
        train["bertcls"] = worker("bertcls", "bertcls: train() via the Python API", config=str(write_config(work, "bertcls-api", args)), **common)
        train["Trainer"] = worker("trainer", "Trainer (defaults)", out=str(work / "trainer"), bf16=trainer_bf16, **common)
        cli_run = work / "bertcls-cli"
        train["bertcls train"] = run_child(py + ["-m", "bertcls", "train", str(write_config(work, "bertcls-cli", args)), "--quiet", "--overwrite"],
                                           env, "bertcls train (whole process)")
        cli_metrics = json.loads((cli_run / "metrics.json").read_text())
        train["bertcls train"].update({"loop_s": cli_metrics["train"]["seconds"], "accuracy": cli_metrics["test"]["accuracy"],
                                       "f1_macro": cli_metrics["test"]["f1_macro"], "precision": cli_metrics["train"]["precision"]})
        train["Trainer group_by_length"] = worker("trainer", "Trainer (group_by_length)", out=str(work / "trainer-g"), grouped=True,
                                                  bf16=trainer_bf16, **common)
        if args.extra:
            train["Trainer group_by_length bf16"] = worker("trainer", "Trainer (group_by_length, bf16)", out=str(work / "trainer-gb"),
                                                           grouped=True, bf16=True, **common)
            train["bertcls fp32"] = worker("bertcls", "bertcls fp32", config=str(write_config(work, "bertcls-fp32", args, "fp32")), **common)
    run = work / "bertcls-cli"
    if parts & {"predict", "startup"} and not (run / "metrics.json").is_file():
        run_child(py + ["-m", "bertcls", "train", str(write_config(work, "bertcls-cli", args)), "--quiet", "--overwrite"], env,
                  "bertcls train (a model to predict with)")
    if "predict" in parts:
        results["predict"] = worker("predict", "batch prediction", run=str(run), data_dir=str(args.data_dir),
                                    out=str(work / "trainer-predict"), repeat=args.repeat, device=args.device)
    if "startup" in parts:
        results["startup"] = {
            "bertcls predict": median_wall(py + ["-m", "bertcls", "predict", "--model", str(run), ONE_TEXT], env, "bertcls predict, one text", args.repeat),
            "pipeline": median_wall(py + [__file__, "--worker", "pipeline_one", "--spec", json.dumps({"folder": str(run / "model"), "text": ONE_TEXT})],
                                    env, "python + pipeline, one text", args.repeat),
            "bertcls --help": median_wall(py + ["-m", "bertcls", "--help"], env, "bertcls --help", args.repeat),
        }
    save()
    print(report(results))
    if args.json:
        print(f"[bench] wrote {args.json}", file=sys.stderr)


def machine(device: str = "cpu") -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = ""
    if device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        gpu = f"GPU {gpu}, "
    return (f"{gpu}{cpu} ({cpu_bf16()}), {os.cpu_count()} CPUs visible, {WORKLOAD['threads']} threads used, "
            f"Python {platform.python_version()}")


def cpu_bf16() -> str:
    """The CPU flags that decide whether bf16 is native (and so whether bertcls's precision auto picks it)."""
    flags: set[str] = set()
    if Path("/proc/cpuinfo").exists():
        line = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
        flags = set(line.partition(":")[2].split())
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512f", "avx512_bf16", "amx_bf16"))


# ---------------------------------------------------------------------------- the report

def report(r: dict) -> str:
    lines = [f"Machine: {r['machine']}. Model: {Path(r['model']).name}. Workload: {r['workload']['rows']:,} rows, 1 epoch, batch 32, "
             f"2 threads, device {r.get('device', 'cpu')}, precision {r.get('precision', 'auto')}.", ""]
    train = r.get("train")
    if train:
        trainer = train["Trainer"]
        lines += ["| training | precision | train s (tokenise + steps) | samples/s | real tokens/s | whole process s (CPU s) | peak RSS MiB | peak GPU MiB | test acc | macro-F1 | speed vs Trainer |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, t in train.items():
            train_s = t.get("train_s")
            cells = [t.get("precision", "?"), f"{train_s:.1f}" if train_s else f"({t['loop_s']:.1f} steps only)",
                     f"{t['samples'] / train_s:.1f}" if train_s else "", f"{t['real_tokens'] / train_s:,.0f}" if train_s else "",
                     f"{t['wall_s']:.1f} ({t['cpu_s']:.0f})", f"{t['rss_mib']:,.0f}", f"{t['peak_gpu_mib']:,.0f}" if t.get("peak_gpu_mib") else "",
                     f"{t['accuracy']:.3f}", f"{t['f1_macro']:.3f}",
                     f"{trainer['train_s'] / train_s:.2f}x" if train_s else f"{trainer['wall_s'] / t['wall_s']:.2f}x (whole process)"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        b, cli, grouped = train["bertcls"], train["bertcls train"], train["Trainer group_by_length"]
        lines += ["", "Ratios (same run): "
                  f"training speed bertcls / Trainer = {trainer['train_s'] / b['train_s']:.2f}x (target >= 3), "
                  f"/ Trainer group_by_length = {grouped['train_s'] / b['train_s']:.2f}x (target > 1); "
                  f"whole process Trainer / `bertcls train` = {trainer['wall_s'] / cli['wall_s']:.2f}x (target >= 2); "
                  f"peak RSS `bertcls train` / Trainer = {cli['rss_mib'] / trainer['rss_mib']:.2f} (target <= 1); "
                  f"test accuracy bertcls - Trainer = {100 * (b['accuracy'] - trainer['accuracy']):+.1f} points (target >= -1.5).",
                  f"Counting bertcls's end-of-epoch validation pass and checkpoint too ({b['paused_s']:.1f} s), which Trainer's "
                  f"figure has no counterpart of: {trainer['train_s'] / (b['train_s'] + b['paused_s']):.2f}x Trainer, "
                  f"{grouped['train_s'] / (b['train_s'] + b['paused_s']):.2f}x Trainer group_by_length.",
                  "Whole process = imports, data, model load, tokenising, training, a validation pass (test.tsv), scoring "
                  "test.tsv and saving the model, on both sides; `bertcls train` also writes its reports, figures and traced graph.", ""]
    pred = r.get("predict")
    if pred:
        rows = pred["predict"]
        ref = rows["bertcls Predictor (fp32)"]["per_s"]
        default = pred["default_precision"]
        fastest = {precision: max(v["per_s"] for k, v in rows.items() if k.startswith("bertcls") and k.endswith(f"({precision})") and v.get("counted", True))
                   for precision in ("fp32", "bf16")}  # the fastest bertcls engine in each precision, as `bertcls predict` runs it here
        best_bertcls = fastest[default]
        others = {k: v for k, v in rows.items() if not k.startswith("bertcls")}
        lines += [f"| batch prediction, test.tsv ({pred['sentences']} sentences) | batch | seconds (CPU s) | sentences/s | vs bertcls fp32 | test acc | same labels as bertcls fp32 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, p in rows.items():
            lines.append(f"| {name} | {p['batch']} | {p['seconds']:.2f} ({p['cpu_s']:.1f}) | {p['per_s']:.0f} | {p['per_s'] / ref:.2f}x | {p['accuracy']:.3f} | {100 * p['same_as_bertcls_fp32']:.1f}% |")
        fastest_other = max(others, key=lambda k: others[k]["per_s"])
        lines += ["", f"Ratio: fastest bertcls in {default} (what `bertcls predict` runs this run in here) / fastest other "
                  f"({fastest_other}) = {best_bertcls / others[fastest_other]['per_s']:.2f}x "
                  f"(target >= 3); / Trainer.predict = {best_bertcls / rows['Trainer.predict (defaults)']['per_s']:.2f}x."]
        products = pred.get("products")
        if products:
            lines += ["", f"Matrix products: the model's over test.tsv come to {products['gflop']:.0f} GFLOP as bertcls runs them. "
                      "The fastest bertcls engine computed them at "
                      + " and ".join(f"{products['gflop'] * per_s / pred['sentences']:.0f} GFLOP/s in {name}" for name, per_s in fastest.items())
                      + f"; a standalone multiply of the model's shapes ({products['batch_tokens']:,} tokens a batch, one encoder "
                      "layer's mix) ran at " + " and ".join(f"{rate:.0f} GFLOP/s in {name}" for name, rate in products["gemm_gflops"].items())
                      + " in the same process."]
        lines.append("")
    start = r.get("startup")
    if start:
        lines += ["| start-up (whole process, median) | wall s | each run, s | CPU s | peak RSS MiB |", "| --- | ---: | --- | ---: | ---: |"]
        for name, s in start.items():
            lines.append(f"| {name} | {s['wall_s']:.2f} | {', '.join(f'{x:.2f}' for x in s['all_s'])} | {s['cpu_s']:.2f} | {s['rss_mib']:,.0f} |")
        lines += ["", f"Ratio: `bertcls predict` one text / python + pipeline = {start['bertcls predict']['wall_s'] / start['pipeline']['wall_s']:.2f} "
                  f"(target <= 0.75; in CPU s {start['bertcls predict']['cpu_s'] / start['pipeline']['cpu_s']:.2f}); "
                  f"`bertcls --help` = {start['bertcls --help']['wall_s']:.2f} s (target < 0.5 s)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
