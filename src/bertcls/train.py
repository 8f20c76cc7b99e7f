"""Training: a validated Config in, a finished run folder out (see `bertcls.runs` for its layout).

The loop is ours, on Hugging Face Accelerate: AdamW with decoupled weight decay, warmup then
decay, gradient accumulation and clipping, evaluation after each epoch, best checkpoint kept.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bertcls import checkpoint as ckpt
from bertcls import data as data_mod
from bertcls import distributed, faults, report, runs
from bertcls.config import Config, TrainingConfig
from bertcls.errors import BertclsError, ConfigError, TrainingError, first_line
from bertcls.evaluate import Evaluation, is_better, predict_logits, scalars, score
from bertcls.loss import build_loss
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
    distributed.check_launch(cfg, on_cpu, distributed.launched_processes())
    precision = resolve_precision(cfg.precision, on_cpu)
    if precision == "fp16" and on_cpu:
        raise ConfigError("training.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # cpu=True also under torchrun: Accelerate then joins the launched processes over gloo.
    return Accelerator(cpu=on_cpu, mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       step_scheduler_with_optimizer=False, fsdp_plugin=distributed.fsdp_plugin(cfg))


def build_optimizer(model, cfg: TrainingConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (every parameter with fewer than 2 dims)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def train(config: Config, *, overwrite: bool = False, quiet: bool = False, resume: bool | str | Path = False, force: bool = False) -> Path:
    """Train and evaluate as `config` says; return the finished run folder.

    `resume`: True continues from the newest checkpoint in output_dir, a path from that checkpoint;
    `force` resumes even though the config or data changed. SIGINT/SIGTERM stop after the current
    step with a checkpoint (raising `Interrupted`).
    """
    with faults.guarded(config.training) as stop:
        return _train(config, overwrite, quiet, resume, force, stop)


def _train(config: Config, overwrite: bool, quiet: bool, resume: bool | str | Path, force: bool, stop: faults.StopRequest) -> Path:
    from accelerate import skip_first_batches
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    cfg, tcfg = config, config.training
    run = Path(cfg.output_dir)
    # Validate everything cheap (files, columns, labels, resume, device) before anything expensive.
    train_split, val_split, test_split, labels = data_mod.load_splits(cfg.data, cfg.seed)
    data_id = ckpt.fingerprint(train_split.texts, train_split.pairs, train_split.labels)
    resume_from = ckpt.find(run, resume, cfg.to_dict(), data_id, force) if resume else None
    runs.check_run_dir(run, overwrite, resuming=bool(resume))  # on every process, so all stop together on a taken folder
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    # oneDNN (CPU matmuls) keeps a primitive for each of the last 1,024 shapes it ran, and length-grouped batches
    # bring dozens of shapes: a cap of 16 cut W1's peak RSS by about 190 MB at the same speed. Read at its first use.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    accelerator = make_accelerator(tcfg)
    main = accelerator.is_main_process
    stop.share(accelerator)  # many processes stop at the same step
    if main:
        runs.prepare_run_dir(run, overwrite, resuming=resume_from is not None)
        runs.write_atomic(run / runs.CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()  # the folder is ready before any process goes on
    # Build the model after seeding so the seed also controls its initialisation.
    set_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, labels.id2label, cfg.data.max_length, train_split.texts + (train_split.pairs or []),
                                  multi_label=labels.multi_label)
    encoded = {name: data_mod.encode(split, tokenizer, cfg.data.max_length, labels)
               for name, split in (("train", train_split), ("validation", val_split), ("test", test_split)) if split is not None}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampler = data_mod.LengthGroupedBatches(encoded["train"].lengths, tcfg.batch_size, cfg.seed)
    train_loader = data_mod.loader(encoded["train"], pad_id, sampler)
    eval_loaders = {name: data_mod.loader(enc, pad_id, data_mod.sorted_batches(enc.lengths, tcfg.eval_batch_size))
                    for name, enc in encoded.items() if name != "train"}

    compute_loss = build_loss(tcfg.class_weights, labels.names, encoded["train"].labels, accelerator.device)
    # Fused AdamW: on the CPU torch otherwise takes its per-tensor loop; fused made the whole W1 loop 1.3x faster.
    fused = accelerator.device.type in ("cpu", "cuda") and accelerator.distributed_type != "FSDP"
    optimizer = build_optimizer(model, tcfg, fused=fused)
    distributed.set_shard_units(accelerator, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {name: accelerator.prepare(dl) for name, dl in eval_loaders.items()}
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * tcfg.epochs
    scheduler = get_scheduler(tcfg.lr_scheduler if tcfg.lr_scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=round(tcfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    state = ckpt.restore(resume_from, run, accelerator, model, optimizer, scheduler) if resume_from else {}

    log = _Log(run / runs.LOG_FILE if main else None, quiet=quiet or not main)
    effective = tcfg.batch_size * tcfg.gradient_accumulation_steps * accelerator.num_processes
    log.say(f"train {len(train_split):,} | validation {len(val_split):,} | test {len(test_split) if test_split else 0:,} | "
            f"{len(labels.names)} labels | effective batch {effective} | {total_steps} steps | "
            f"device {accelerator.device} | precision {accelerator.mixed_precision} | model {cfg.model.name}")

    best_value, best_epoch, best_metrics, evals_since_best = (state.get(k) for k in ("best_value", "best_epoch", "best_metrics", "evals_since_best"))
    evals_since_best = evals_since_best or 0
    global_step, started = state.get("global_step", 0), time.perf_counter() - state.get("seconds", 0.0)
    real_tokens = torch.tensor(state.get("real_tokens", 0), device=accelerator.device)  # non-pad tokens trained on
    # A live bar on a terminal; in a log file (CI, nohup, a cluster job) one line per log step instead.
    bar = not quiet and main and sys.stderr.isatty()
    progress = _progress(total_steps, disable=not bar, initial=global_step)
    if resume_from:
        log.say(f"resumed from {resume_from} at step {global_step}")

    resumable = accelerator.distributed_type != "FSDP"  # sharded optimizer states are not checkpointed yet
    if not resumable:
        log.say("note: training.fsdp runs write no resumable checkpoints yet; model/ (the best weights) is still saved")

    def save_checkpoint(epoch: int, batches_done: int) -> Path | None:
        """Everything the loop needs to continue after `batches_done` micro-batches of `epoch`."""
        total = accelerator.reduce(window_loss, reduction="sum").item()  # all processes' losses: all refuse together
        if not math.isfinite(total):
            raise _nonfinite_loss(total, global_step, scheduler.get_last_lr()[0], run)
        if not resumable:
            return None
        return ckpt.save(run, accelerator, model, optimizer, scheduler, config=cfg.to_dict(), keep=tcfg.keep_checkpoints, state={
            "epoch": epoch, "batches_done": batches_done, "global_step": global_step, "best_value": best_value,
            "best_epoch": best_epoch, "best_metrics": best_metrics, "evals_since_best": evals_since_best,
            "seconds": time.perf_counter() - started, "data_fingerprint": data_id},
            own={"window": [window_loss.item(), window_batches, window_examples], "real_tokens": int(real_tokens)})

    stop.armed = True
    epoch = state.get("epoch", 0) - 1  # stays the last epoch trained when resuming after the final one
    for epoch in range(state.get("epoch", 0), tcfg.epochs):
        train_loader.set_epoch(epoch)  # accelerate sets the sampler's epoch from its own counter
        skip = state.get("batches_done", 0) if epoch == state.get("epoch") else 0
        model.train()
        loss_sum, window_batches, window_examples = state["window"] if skip else (0.0, 0, 0)
        window_loss = torch.tensor(loss_sum, device=accelerator.device)  # summed on device: no host sync per step
        window_start = time.perf_counter()
        for i, batch in enumerate(skip_first_batches(train_loader, skip) if skip else train_loader, start=skip):
            batch.pop("index")
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch)
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
                    raise _nonfinite_loss(mean_loss, global_step, scheduler.get_last_lr()[0], run)
                record = {"step": global_step, "epoch": epoch + 1, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                          "examples_per_s": round(window_examples * accelerator.num_processes / elapsed, 2)}
                log.write(record)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}", ex_s=f"{record['examples_per_s']:.1f}")
                if not bar:
                    log.say(f"step {global_step} | epoch {epoch + 1} | loss {mean_loss:.4f} | lr {record['lr']:.2e} | {record['examples_per_s']:.1f} ex/s")
                window_loss.zero_()
                window_batches, window_start, window_examples = 0, time.perf_counter(), 0
            last_batch = i + 1 == len(train_loader)  # the epoch's checkpoint comes after its evaluation
            stopping = stop.agreed()
            if stopping or (tcfg.save_every_steps and global_step % tcfg.save_every_steps == 0 and not last_batch):
                saved = save_checkpoint(epoch, i + 1)
                if stopping:
                    raise stop.interrupted(global_step, saved)

        evaluation = _evaluate(model, eval_loaders["validation"], accelerator, labels, val_split, tcfg.threshold, tcfg.tune_threshold)
        metrics = evaluation.metrics
        value = metrics[tcfg.metric_for_best]
        log.write({"step": global_step, "epoch": epoch + 1, "split": "validation", **scalars(metrics)})
        log.say(f"epoch {epoch + 1} | step {global_step} | validation loss {metrics['loss']:.4f} | "
                f"accuracy {metrics['accuracy']:.4f} | f1_macro {metrics['f1_macro']:.4f}")
        if is_better(tcfg.metric_for_best, value, best_value):
            # Only the headline numbers go into every checkpoint: per-label tables grow with the labels.
            best_value, best_epoch, best_metrics, evals_since_best = value, epoch + 1, scalars(metrics), 0
            weights = distributed.full_state_dict(accelerator, model)  # every process: a collective under FSDP
            if main:
                save_model(accelerator.unwrap_model(model), tokenizer, run / runs.MODEL_DIR, weights, threshold=evaluation.threshold)
            accelerator.wait_for_everyone()
        else:
            evals_since_best += 1
            if tcfg.early_stopping_patience and evals_since_best >= tcfg.early_stopping_patience:
                log.say(f"early stopping: no better {tcfg.metric_for_best} for {evals_since_best} evaluation(s)")
                break
        stopping = stop.agreed()
        if stopping or not tcfg.save_every_steps or global_step % tcfg.save_every_steps == 0:
            saved = save_checkpoint(epoch + 1, 0)
            if stopping:
                raise stop.interrupted(global_step, saved)
    stop.armed = False
    progress.close()
    train_seconds = time.perf_counter() - started
    optimizer.state.clear()  # the moment estimates (twice the weights) are done with: room for what follows

    # Score the best checkpoint again (its predictions feed the reports; a resumed run holds only its metrics).
    distributed.load_full_state(accelerator, model, run / runs.MODEL_DIR)
    best = _evaluate(model, eval_loaders["validation"], accelerator, labels, val_split, tcfg.threshold, tcfg.tune_threshold)
    evaluations = {"validation": best}
    if "test" in eval_loaders:
        evaluations["test"] = _evaluate(model, eval_loaders["test"], accelerator, labels, test_split, best.threshold or tcfg.threshold, False)
    result: dict[str, Any] = {"best_epoch": best_epoch, "metric_for_best": tcfg.metric_for_best,
                              **{name: evaluation.metrics for name, evaluation in evaluations.items()}}
    if main:
        _write_reports(run, evaluations, tcfg.loss_curve, log)
    tokens = int(accelerator.reduce(real_tokens, reduction="sum"))
    result["train"] = {"seconds": round(train_seconds, 2), "optimizer_steps": global_step, "epochs": epoch + 1,
                       "examples_per_s": round(len(train_split) * (epoch + 1) / train_seconds, 2),
                       "real_tokens_per_s": round(tokens / train_seconds, 1)}
    if accelerator.device.type == "cuda":
        result["train"]["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**20, 1)
    if main and tcfg.save_torchscript:
        _save_torchscript(run, log)
    if main:
        runs.write_json(run / runs.METRICS_FILE, result)  # last: its presence marks the run finished
    log.say(f"run folder: {run}")
    accelerator.end_training()
    return run


def _evaluate(model, loader, accelerator, labels: data_mod.LabelMap, split: data_mod.Split, threshold: float, tune: bool) -> Evaluation:
    """Score a split; multi-label decisions use `threshold`, or with `tune` the best one for micro-F1 on this split."""
    logits, gold, loss = predict_logits(model, loader, accelerator)
    return score(split.texts, split.pairs, labels.names, logits, gold, loss, multi_label=labels.multi_label, threshold=threshold, tune=tune)


def _write_reports(run: Path, evaluations: dict[str, Evaluation], loss_curve: bool, log: _Log) -> None:
    """RUN/reports/<split>/ for the best checkpoint's validation and test scores, loss.png, and the test table."""
    for name, evaluation in evaluations.items():
        report.write_report(run / runs.REPORTS_DIR / name, evaluation)
    if loss_curve:
        report.write_loss_curve(run)
    if not log.quiet:
        shown = "test" if "test" in evaluations else "validation"
        report.print_report(evaluations[shown].metrics, file=sys.stderr, title=f"{shown} (best checkpoint)")


def _save_torchscript(run: Path, log: _Log) -> None:
    """The traced graph that lets `bertcls predict` skip transformers; a model that does not trace keeps the slow path."""
    from bertcls.export import save_torchscript

    began = time.perf_counter()
    try:
        checked = save_torchscript(run)
    except (BertclsError, OSError, RuntimeError) as exc:  # the run itself is complete: never lose it over this
        log.say(f"note: no TorchScript graph, so predict will load transformers ({first_line(exc)})")
        return
    log.say(f"TorchScript graph saved for fast predict start-up ({time.perf_counter() - began:.1f} s, "
            f"logits within {checked['max_abs_logit_diff']:.1g} of the model's)")


def _nonfinite_loss(loss: float, step: int, lr: float, run: Path) -> TrainingError:
    kept = runs.checkpoints(run)
    last = f"; the last good checkpoint is {kept[-1]}" if kept else ""
    return TrainingError(f"the training loss became {loss} at step {step} (lr {lr:.3g}); lower training.learning_rate{last}")


def _progress(total: int, disable: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True, leave=False)


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
