"""Training: a validated Config in, a finished run folder out (see `bertcls.runs` for its layout).

The loop is ours, on Hugging Face Accelerate: AdamW with decoupled weight decay, warmup then
decay, gradient accumulation and clipping, evaluation after each epoch, best checkpoint kept.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bertcls import data as data_mod
from bertcls import runs
from bertcls.config import Config, TrainingConfig
from bertcls.errors import ConfigError, TrainingError
from bertcls.evaluate import compute_metrics, format_report, is_better, predict_logits
from bertcls.model import load_model, resolve_precision, save_model


def make_accelerator(cfg: TrainingConfig):
    """An Accelerator on the configured device, with the configured (or best native) precision."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cfg.device.startswith("cuda") and not cuda:
        raise ConfigError(f"training.device: {cfg.device} was asked for but no CUDA device is available; use auto or cpu")
    if cfg.device.startswith("cuda:"):
        index = int(cfg.device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"training.device: {cfg.device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
        torch.cuda.set_device(index)
    on_cpu = cfg.device == "cpu" or not cuda
    precision = resolve_precision(cfg.precision, on_cpu)
    if precision == "fp16" and on_cpu:
        raise ConfigError("training.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(cpu=on_cpu, mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       step_scheduler_with_optimizer=False)


def build_optimizer(model, cfg: TrainingConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (every parameter with fewer than 2 dims)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def train(config: Config, *, overwrite: bool = False, quiet: bool = False) -> Path:
    """Train and evaluate as `config` says; return the finished run folder."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    cfg, tcfg = config, config.training
    run = Path(cfg.output_dir)
    # Validate everything cheap (files, columns, labels, device) before anything expensive.
    train_split, val_split, test_split, labels = data_mod.load_splits(cfg.data, cfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    accelerator = make_accelerator(tcfg)
    main = accelerator.is_main_process
    if main:
        runs.prepare_run_dir(run, overwrite)
        runs.write_atomic(run / runs.CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # Build the model after seeding so the seed also controls its initialisation.
    set_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, labels.id2label, cfg.data.max_length, train_split.texts)
    encoded = {name: data_mod.encode(split, tokenizer, cfg.data.max_length, labels)
               for name, split in (("train", train_split), ("validation", val_split), ("test", test_split)) if split is not None}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampler = data_mod.LengthGroupedBatches(encoded["train"].lengths, tcfg.batch_size, cfg.seed)
    train_loader = data_mod.loader(encoded["train"], pad_id, sampler)
    eval_loaders = {name: data_mod.loader(enc, pad_id, data_mod.sorted_batches(enc.lengths, tcfg.eval_batch_size))
                    for name, enc in encoded.items() if name != "train"}

    optimizer = build_optimizer(model, tcfg, fused=accelerator.device.type == "cuda")
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {name: accelerator.prepare(dl) for name, dl in eval_loaders.items()}
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * tcfg.epochs
    scheduler = get_scheduler(tcfg.lr_scheduler if tcfg.lr_scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=round(tcfg.warmup_ratio * total_steps), num_training_steps=total_steps)

    log = _Log(run / runs.LOG_FILE if main else None, quiet=quiet or not main)
    effective = tcfg.batch_size * tcfg.gradient_accumulation_steps * accelerator.num_processes
    log.say(f"train {len(train_split):,} | validation {len(val_split):,} | test {len(test_split) if test_split else 0:,} | "
            f"{len(labels.names)} labels | effective batch {effective} | {total_steps} steps | "
            f"device {accelerator.device} | precision {accelerator.mixed_precision} | model {cfg.model.name}")

    best_value, best_epoch, best_metrics, evals_since_best = None, None, None, 0
    global_step, started = 0, time.perf_counter()
    real_tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # non-pad tokens trained on
    progress = _progress(total_steps, disable=quiet or not main)
    for epoch in range(tcfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        window_loss = torch.zeros((), device=accelerator.device)  # summed on device: no host sync per step
        window_batches, window_start, window_examples = 0, time.perf_counter(), 0
        for batch in train_loader:
            batch.pop("index")
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and tcfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach()
            window_batches += 1
            window_examples += batch["input_ids"].shape[0]
            real_tokens += batch["attention_mask"].sum()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            global_step += 1
            progress.update(1)
            if global_step % tcfg.log_every_steps == 0 or global_step == total_steps:
                elapsed = time.perf_counter() - window_start
                mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_batches  # note: host sync, only here
                if not math.isfinite(mean_loss):
                    raise TrainingError(f"the training loss became {mean_loss} at step {global_step} (lr {scheduler.get_last_lr()[0]:.3g}); lower training.learning_rate")
                record = {"step": global_step, "epoch": epoch + 1, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                          "examples_per_s": round(window_examples * accelerator.num_processes / elapsed, 2)}
                log.write(record)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}", ex_s=f"{record['examples_per_s']:.1f}")
                window_loss.zero_()
                window_batches, window_start, window_examples = 0, time.perf_counter(), 0

        metrics = _evaluate(model, eval_loaders["validation"], accelerator, labels)
        value = metrics[tcfg.metric_for_best]
        log.write({"step": global_step, "epoch": epoch + 1, "split": "validation",
                   **{k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}})
        log.say(f"epoch {epoch + 1} | step {global_step} | validation loss {metrics['loss']:.4f} | "
                f"accuracy {metrics['accuracy']:.4f} | f1_macro {metrics['f1_macro']:.4f}")
        if is_better(tcfg.metric_for_best, value, best_value):
            best_value, best_epoch, best_metrics, evals_since_best = value, epoch + 1, metrics, 0
            if main:
                save_model(accelerator.unwrap_model(model), tokenizer, run / runs.MODEL_DIR)
            accelerator.wait_for_everyone()
        else:
            evals_since_best += 1
            if tcfg.early_stopping_patience and evals_since_best >= tcfg.early_stopping_patience:
                log.say(f"early stopping: no better {tcfg.metric_for_best} for {evals_since_best} evaluation(s)")
                break
    progress.close()
    train_seconds = time.perf_counter() - started

    result: dict[str, Any] = {"best_epoch": best_epoch, "metric_for_best": tcfg.metric_for_best, "validation": best_metrics}
    if "test" in eval_loaders:
        _load_best(accelerator.unwrap_model(model), run / runs.MODEL_DIR)
        result["test"] = _evaluate(model, eval_loaders["test"], accelerator, labels)
        log.say("test (best checkpoint)\n" + format_report(result["test"]))
    tokens = int(accelerator.reduce(real_tokens, reduction="sum"))
    result["train"] = {"seconds": round(train_seconds, 2), "optimizer_steps": global_step, "epochs": epoch + 1,
                       "examples_per_s": round(len(train_split) * (epoch + 1) / train_seconds, 2),
                       "real_tokens_per_s": round(tokens / train_seconds, 1)}
    if main:
        runs.write_json(run / runs.METRICS_FILE, result)  # last: its presence marks the run finished
    log.say(f"run folder: {run}")
    accelerator.end_training()
    return run


def _evaluate(model, loader, accelerator, labels: data_mod.LabelMap) -> dict[str, Any]:
    logits, gold, loss = predict_logits(model, loader, accelerator)
    return compute_metrics(gold.tolist(), logits.argmax(-1).tolist(), labels.names, loss)


def _load_best(model, folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    model.load_state_dict(state, strict=False)


def _progress(total: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", disable=disable, dynamic_ncols=True, leave=False)


class _Log:
    """JSON lines to log.jsonl (main process only) and short lines to stderr."""

    def __init__(self, path: Path | None, quiet: bool) -> None:
        self.file = open(path, "a", encoding="utf-8") if path else None
        self.quiet = quiet

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
