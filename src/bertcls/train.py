"""Training: a validated Config in, a finished run folder out (see `bertcls.runs` for its layout).

    check     the run folder, data, labels, class weights, model source, resume point: everything
              cheap, before anything is written or loaded
    set up    device and precision, the run folder (locked for the whole run), seed, model and
              tokenizer, length-grouped batches, AdamW, the warmup schedule, a checkpoint's state
    loop      optimizer steps (a log line every log_every_steps) until the last (epochs, or max_steps);
              after each epoch, or every eval_every_steps, and after the last step: evaluate, keep the
              best model, checkpoint; callbacks hear the start, each log line and evaluation, and may stop it
    finish    the best model scored on validation and test, reports, its traced graph, the model
              card, the manifest's end time, and metrics.json last (its presence marks the run finished)

The loop is ours, on Hugging Face Accelerate: AdamW with decoupled weight decay, warmup then decay,
gradient accumulation and clipping. SIGINT/SIGTERM stop it after the current step with a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from bertcls import atomic, card, cpu_training, distributed, faults, longtext, machine, manifest, report, runlock, runs, track
from bertcls import checkpoint as ckpt
from bertcls import data as data_mod
from bertcls.callbacks import Callback
from bertcls.check import warnings as data_warnings
from bertcls.checkpoint import LoopState
from bertcls.config import Config, TrainingConfig
from bertcls.errors import (
    BertclsError,
    Interrupted,
    RunError,
    Terminated,
    TrainingError,
    checked_by_every_process,
    first_line,
)
from bertcls.evaluate import Evaluation, scalars, score
from bertcls.inference import predict_logits
from bertcls.loss import build_loss, check_class_weights
from bertcls.model import THRESHOLD_KEY, check_model_source, load_model, save_model


class EarlyStopping(Callback):
    """Stop after `patience` evaluations without a better `metric_for_best` (the count is part of the loop state)."""

    def __init__(self, cfg: TrainingConfig, log: _Log) -> None:
        self.patience, self.metric, self.log = cfg.early_stopping_patience, cfg.metric_for_best, log

    def on_evaluate(self, state: LoopState, metrics: dict[str, Any]) -> bool:
        if self.patience and state.evals_since_best >= self.patience:
            self.log.say(f"early stopping: no better {self.metric} for {state.evals_since_best} evaluation(s)")
            return True
        return False


def train(config: Config, *, overwrite: bool = False, quiet: bool = False, resume: bool | str | Path = False, force: bool = False,
          config_file: str | Path | None = None, callbacks: tuple[Callback, ...] = (), warn_data: bool = True) -> Path:
    """Train and evaluate as `config` says; return the finished run folder.

    `resume`: True continues from the newest checkpoint in output_dir, a path from that checkpoint;
    `force` resumes even though the config or data changed. SIGINT/SIGTERM stop after the current
    step with a checkpoint, or during the final evaluation (raising `Interrupted`); a second one at once
    (an `Interrupted` naming the newest checkpoint). `config_file`,
    the file `config` was read from, is one of the inputs output_dir must not hold. `warn_data`: print the
    data checks' warning lines (leakage, conflicts, truncation); a search says them once, not per trial.
    """
    tcfg, started = config.training, manifest.utc_now()
    with faults.guarded(tcfg) as stop, ExitStack() as resources:
        with checked_by_every_process():
            inputs = check_inputs(config, config_file, resume, force, overwrite)
        tracking = track.Tracking(config, inputs.resume_from)
        job = set_up(config, inputs, overwrite, quiet, stop, resources, log_with=tracking.trackers, warn_data=warn_data)
        resources.push(tracking.close)  # an error or a stop ends the trackers' runs too
        resources.push(partial(_stopped_at_once, stop, job))  # before the trackers hear it: a second signal is a stop too
        if job.main:
            manifest.begin(job.run, config, config_file, started, inputs.resume_from, inputs.config_changes)
        acc, state = job.accelerator, job.state
        listeners = [EarlyStopping(tcfg, job.log), tracking, *callbacks]
        for listener in listeners:
            listener.on_start(job)
        stop.arm()
        with cpu_training.freed_memory_kept(acc.device):
            for epoch in job.epochs_left():
                skip = state.batches_done if epoch == state.epoch else 0
                window = job.window if skip else LossWindow(acc.device)
                job.train_loader.set_epoch(epoch)  # accelerate sets the sampler's epoch from its own counter
                job.model.train()
                for i, batch in job.batches(skip):
                    with acc.accumulate(job.model):
                        loss = job.compute_loss(job.model, batch)
                        acc.backward(loss)
                        if acc.sync_gradients and tcfg.max_grad_norm:
                            clip_gradients(acc, job.model, job.optimizer, tcfg.max_grad_norm)
                        job.optimizer.step()
                        job.optimizer.zero_grad(set_to_none=True)
                    window.add(loss, batch)
                    job.real_tokens += batch["attention_mask"].sum()
                    if not acc.sync_gradients:
                        continue
                    job.scheduler.step()
                    state.global_step += 1
                    job.progress.update(1)
                    if state.global_step % tcfg.log_every_steps == 0 or state.global_step == job.total_steps:
                        record = job.log_step(window, epoch)
                        for listener in listeners:
                            listener.on_log(record)
                    state.epoch, state.batches_done = (epoch + 1, 0) if i + 1 == len(job.train_loader) else (epoch, i + 1)
                    evaluated = job.evaluation_due()
                    if evaluated and job.validate(epoch, window, listeners):  # a listener stopped training: no checkpoint after it
                        break
                    stopping = stop.agreed()
                    if stopping or job.checkpoint_due(evaluated):  # after the evaluation: it holds what the evaluation decided
                        job.save_checkpoint(window)
                        if stopping:
                            raise stop.interrupted(state.global_step, job.last_checkpoint)
                    if state.global_step == job.total_steps:
                        break
            job.optimizer.state.clear()  # the moment estimates (twice the weights) are done with: room for what follows
        return finish(job, inputs, stop, listeners)


def _stopped_at_once(stop: faults.StopRequest, job: Job, exc_type, exc, traceback) -> None:
    """For the run's ExitStack: a second SIGINT or SIGTERM (`faults.StopRequest` raises KeyboardInterrupt or Terminated)
    stops the loop or the finish at once, even mid-checkpoint (whose half-written folder goes): raised on as an
    `Interrupted` that names the newest checkpoint, the one `--resume` takes, when there is one."""
    if exc_type is KeyboardInterrupt:
        second = signal.SIGINT
    elif exc_type is Terminated:
        second = signal.SIGTERM
    else:
        return
    kept = runs.checkpoints(job.run)
    if stop.requested and kept and not runs.is_finished(job.run):
        raise Interrupted(f"a second {second.name}", job.state.global_step, kept[-1], 128 + second) from None


@dataclass
class Inputs:
    """What the cheap checks read: the splits, their label map, and where a resume starts."""

    train: data_mod.Split
    validation: data_mod.Split
    test: data_mod.Split | None
    labels: data_mod.LabelMap
    data_id: str
    texts_id: str  # of the training texts alone, in any order: what `tiny` builds its vocabulary from
    resume_from: Path | None
    resume_step: int  # the checkpoint's step (0 when not resuming)
    config_changes: list[str]  # `key: old -> new` for every key that differs from the checkpoint's config (the manifest's record)
    resume_threads: int | None = None  # the CPU threads the checkpoint was trained on, where it says


def check_inputs(config: Config, config_file: str | Path | None, resume: bool | str | Path, force: bool, overwrite: bool) -> Inputs:
    """Everything that can be checked cheaply, on every process (so that all stop together), before
    anything is written or loaded: output_dir against the run's inputs, the data and labels, class
    weights, the model source and max_length, the checkpoint to resume from, and the run folder."""
    run = Path(config.output_dir)
    atomic.check_folder_path(run, "output_dir")  # before its files are looked at: a link to nowhere, or in a loop
    runs.check_output_dir(run, _inputs(config, config_file))
    track.check_installed(config.training.report_to)
    train_split, val_split, test_split, labels = data_mod.load_splits(config.data, config.seed)
    check_class_weights(config.training.class_weights, labels.names)
    check_model_source(config.model, config.data.max_length)
    data_id = ckpt.fingerprint(train_split.texts, train_split.pairs, train_split.labels)
    texts_id = ckpt.fingerprint(sorted(train_split.texts + (train_split.pairs or [])), None, None)  # what tiny's vocabulary counts
    resume_from = ckpt.find(run, resume, config.to_dict(), data_id, force, list(labels.names), texts_id) if resume else None
    saved = ckpt.read_state(resume_from) if resume_from else {"global_step": 0}
    changes = ckpt.config_differences(saved["config"], config.to_dict(), ignored=frozenset()) if "config" in saved else []
    runs.check_run_dir(run, overwrite, resuming=bool(resume))
    return Inputs(train_split, val_split, test_split, labels, data_id, texts_id, resume_from, saved["global_step"], changes,
                  saved.get("threads"))


def _inputs(cfg: Config, config_file: str | Path | None) -> dict[str, str]:
    """The run's local inputs by the key that names them (config.py made their paths absolute); output_dir may hold none."""
    named = {"data.train": cfg.data.train, "data.validation": cfg.data.validation, "data.test": cfg.data.test, "model.name": cfg.model.name}
    inputs = {key: value for key, value in named.items() if value and Path(value).is_absolute()}
    own_config = Path(cfg.output_dir) / runs.CONFIG_FILE  # the run's own config.yaml is ours: `train RUN/config.yaml --resume`
    if config_file is not None and not (Path(config_file).resolve() == own_config.resolve() and runs.wrote(cfg.output_dir, runs.CONFIG_FILE)):
        inputs["the config file"] = str(config_file)
    return inputs


class LossWindow:
    """The training loss since the last log line, summed on the device (no host sync per step)."""

    def __init__(self, device, loss_sum: float = 0.0, batches: int = 0, examples: int = 0) -> None:
        self.loss = torch.tensor(loss_sum, device=device)
        self.batches, self.examples, self.started = batches, examples, time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.loss += loss.detach()
        self.batches += 1
        self.examples += batch["input_ids"].shape[0]

    def saved(self) -> list[float | int]:
        """What a checkpoint keeps of it, so a resumed run logs the same mean (the examples, for older bertcls)."""
        return [self.loss.item(), self.batches, self.examples]

    def reset(self) -> None:
        self.loss.zero_()
        self.batches, self.examples, self.started = 0, 0, time.perf_counter()


class Job:
    """One training run's working parts, built by `set_up`: the accelerator and prepared model,
    optimizer, schedule and loaders, the log, and the loop state."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    eval_loaders: dict[str, Any]
    compute_loss: Any
    total_steps: int  # optimizer steps of the whole run
    steps_per_epoch: int
    epochs: int  # epochs they take, the last one cut short by max_steps
    real_tokens: torch.Tensor
    state: LoopState
    window: LossWindow  # the restored window of a checkpoint taken mid-epoch
    readings: dict[str, longtext.Reading]  # per split, how its texts were read (windows pooled back per text)
    long_texts: dict[str, Any]  # texts over max_length per split, and how they are read: metrics.json's "data"
    log: _Log
    started: float
    precision: str
    warn_data: bool  # print the data checks' warnings
    bar: bool
    progress: Any

    def __init__(self, config: Config, inputs: Inputs, accelerator) -> None:
        self.config, self.cfg, self.inputs, self.accelerator = config, config.training, inputs, accelerator
        self.run = Path(config.output_dir)
        self.main = accelerator.is_main_process
        self.last_checkpoint = inputs.resume_from  # the one a stop signal names
        self.resumable = not distributed.is_sharded(accelerator)  # sharded optimizer states are not checkpointed yet
        self.stopped_early = False  # by a listener (early stopping)
        self.best_evaluation: Evaluation | None = None  # the best model's validation scores, when this process computed them
        self.paused = {"validation": 0.0, "checkpoint": 0.0}  # seconds of the loop not spent training (metrics.json)

    def epochs_left(self):
        """The epochs to train, from the one in progress, until the last step or a listener stops training
        (none for a run resumed from the checkpoint after its last step)."""
        epoch = self.state.epoch
        while epoch < self.epochs and self.state.global_step < self.total_steps and not self.stopped_early:
            yield epoch
            epoch += 1

    def evaluation_due(self) -> bool:
        """Whether the step just taken is evaluated: every eval_every_steps steps, else at each epoch's end; and the last step."""
        step, every = self.state.global_step, self.cfg.eval_every_steps
        return step == self.total_steps or (step % every == 0 if every else self.state.batches_done == 0)

    def checkpoint_due(self, evaluated: bool) -> bool:
        """Whether a checkpoint follows the step just taken: every save_every_steps steps, else after each evaluation."""
        every = self.cfg.save_every_steps
        return self.state.global_step % every == 0 if every else evaluated

    def validate(self, epoch: int, window: LossWindow, listeners: list[Callback]) -> bool:
        """Score validation after a step of `epoch`, keep the best model, tell the listeners; whether one of them stops training."""
        state, began = self.state, time.perf_counter()
        evaluation = self.evaluate("validation")
        self.model.train()  # the evaluation may come mid-epoch
        self.log_evaluation(evaluation.metrics, epoch)
        if state.offer(evaluation.metrics, self.cfg.metric_for_best, epoch + 1):
            self.save_best(evaluation.threshold)
            self.best_evaluation = evaluation
        self.stopped_early = any([listener.on_evaluate(state, evaluation.metrics) for listener in listeners])  # every listener hears it
        spent = time.perf_counter() - began
        window.started += spent  # the next log line's examples/s counts training time only
        self.paused["validation"] += spent
        return self.stopped_early

    def batches(self, skip: int):
        """(micro-batch index, batch) of this epoch from `skip` on: a resumed epoch skips the batches already trained."""
        from accelerate import skip_first_batches

        loader = skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        for i, batch in enumerate(loader, start=skip):
            batch.pop("index")
            yield i, batch

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def log_step(self, window: LossWindow, epoch: int) -> dict[str, Any]:
        """The mean loss of the window (all processes), as a log line and a log.jsonl record; the window restarts."""
        acc, step = self.accelerator, self.state.global_step
        mean_loss = acc.reduce(window.loss, reduction="mean").item() / window.batches  # note: a host sync, once per log line
        lr = self.scheduler.get_last_lr()[0]
        if not math.isfinite(mean_loss):
            raise _nonfinite_loss(mean_loss, step, lr, self.run)
        speed = round(window.examples * acc.num_processes / (time.perf_counter() - window.started), 2)
        record = {"step": step, "epoch": epoch + 1, "loss": round(mean_loss, 6), "lr": lr, "examples_per_s": speed}
        self.log.write(record)
        self.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{speed:.1f}")
        if not self.bar:
            self.log.say(f"step {step} | epoch {epoch + 1} | loss {mean_loss:.4f} | lr {lr:.2e} | {speed:.1f} ex/s")
        window.reset()
        return record

    def log_evaluation(self, metrics: dict[str, Any], epoch: int) -> None:
        step = self.state.global_step
        self.log.write({"step": step, "epoch": epoch + 1, "split": "validation", **scalars(metrics)})
        self.log.say(f"epoch {epoch + 1} | step {step} | validation loss {metrics['loss']:.4f} | "
                     f"accuracy {metrics['accuracy']:.4f} | f1_macro {metrics['f1_macro']:.4f}")

    def evaluate(self, split: str, threshold: float | None = None) -> Evaluation:
        """Score a split; multi-label decisions use `threshold` (default training.threshold), tuned on validation when asked."""
        logits, gold, loss = predict_logits(self.model, self.eval_loaders[split], self.accelerator, self.readings[split])
        rows, labels = getattr(self.inputs, split), self.inputs.labels
        tune = split == "validation" and self.cfg.tune_threshold
        return score(rows.texts, rows.pairs, labels.names, logits, gold, loss, multi_label=labels.multi_label,
                     threshold=threshold or self.cfg.threshold, tune=tune, label_separator=self.config.data.label_separator)

    def save_checkpoint(self, window: LossWindow) -> None:
        """Everything the loop needs to continue from where `state` stands (a collective: every process calls it)."""
        acc, state, began = self.accelerator, self.state, time.perf_counter()
        total = acc.reduce(window.loss, reduction="sum").item()  # all processes' losses: all refuse together
        if not math.isfinite(total):
            raise _nonfinite_loss(total, state.global_step, self.scheduler.get_last_lr()[0], self.run)
        if not self.resumable:
            return
        saved = {**state.saved(), "seconds": self.seconds(), "data_fingerprint": self.inputs.data_id, "texts_fingerprint": self.inputs.texts_id,
                 "labels": list(self.inputs.labels.names), "threads": torch.get_num_threads()}
        self.last_checkpoint = ckpt.save(self.run, acc, self.model, self.optimizer, self.scheduler, config=self.config.to_dict(),
                                         keep=self.cfg.keep_checkpoints, state=saved,
                                         own={"window": window.saved(), "real_tokens": int(self.real_tokens), "paused": self.paused})
        self.paused["checkpoint"] += time.perf_counter() - began

    def release(self) -> None:
        """Free the prepared model, optimizer and loaders now, while the process group and the interpreter are alive.
        Left to the interpreter's exit, a DDP model's pending gloo work was sometimes destroyed during finalisation,
        and the process died with SIGABRT ("terminate called without an active exception") after a finished run."""
        self.model = self.optimizer = self.scheduler = self.train_loader = self.compute_loss = None
        self.eval_loaders = {}
        self.accelerator.free_memory()  # accelerate's own references, then the garbage collector

    def save_best(self, threshold: float | None) -> None:
        """model/ <- the weights now, the best so far; the run's record notes the step (`runs.record_best`)."""
        weights = distributed.full_state_dict(self.accelerator, self.model)  # every process: a collective under FSDP

        def write() -> None:
            save_model(self.accelerator.unwrap_model(self.model), self.tokenizer, self.run / runs.MODEL_DIR, weights, threshold=threshold)
            runs.record_best(self.run, self.state.global_step)

        distributed.on_main(self.accelerator, write)  # the others wait; a failure stops them too


def set_up(config: Config, inputs: Inputs, overwrite: bool, quiet: bool, stop: faults.StopRequest, resources: ExitStack,
           log_with: list | None = None, warn_data: bool = True) -> Job:
    """The accelerator (with the experiment trackers `log_with`, not yet started), the model (after seeding), the
    claimed run folder, then the batches, optimizer and schedule, the checkpoint's state, whose random states the loop
    continues from (a checkpoint past the schedule's end is refused first), and last the run's config.yaml."""
    from accelerate.utils import set_seed

    tcfg, run = config.training, Path(config.output_dir)
    if tcfg.num_threads:  # for this run only: a process that trains again (a search, a notebook) gets its own count back
        resources.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(tcfg.num_threads)
    accelerator = make_accelerator(tcfg, log_with)
    stop.share(accelerator)  # many processes stop at the same step
    set_seed(config.seed)  # build the model after seeding so the seed also controls its initialisation
    # ... and before the run folder is touched: a model that cannot load leaves the folder (an earlier run) as it was
    model, tokenizer = load_model(config.model, inputs.labels.id2label, config.data.max_length,
                                  inputs.train.texts + (inputs.train.pairs or []), multi_label=inputs.labels.multi_label)
    _claim_run_dir(run, overwrite, inputs.resume_from is not None, accelerator, resources)
    job = Job(config, inputs, accelerator)
    job.warn_data = warn_data
    job.model, job.tokenizer = model, tokenizer
    _build(job)
    if inputs.resume_step > job.total_steps:  # --force with fewer steps: what the checkpoint trained cannot be untrained
        raise RunError(f"--resume: {inputs.resume_from} is at step {inputs.resume_step}, past the end of this config's schedule "
                       f"(step {job.total_steps}); start over with --overwrite, or resume with a schedule that goes past step "
                       f"{inputs.resume_step} (training.epochs, training.max_steps, training.batch_size)")
    job.state = LoopState()
    job.window = LossWindow(accelerator.device)
    restored = ckpt.restore(inputs.resume_from, run, accelerator, job.model, job.optimizer, job.scheduler) if inputs.resume_from else None
    if restored:
        job.state = LoopState.from_saved(restored)
        loss_sum, batches, _ = restored.get("window", (0.0, 0, 0))  # the mean loss goes on; the speed counts from the resume
        job.window = LossWindow(accelerator.device, loss_sum, batches)
        job.real_tokens += restored.get("real_tokens", 0)
        job.paused.update(restored.get("paused", {}))
    # once the checkpoint loaded: a refused resume leaves the run's config as it was; the folder is ready before any
    # process goes on, and a failed write stops them all
    saved_config = yaml.safe_dump(config.to_dict(), sort_keys=False)
    distributed.on_main(accelerator, partial(atomic.write_atomic, run / runs.CONFIG_FILE, saved_config))
    # Opened after `restore`, which trims log.jsonl back to the checkpoint's step.
    job.log = resources.enter_context(_Log(run / runs.LOG_FILE if job.main else None, quiet=quiet or not job.main))
    job.started = time.perf_counter() - job.state.seconds
    job.bar = not quiet and job.main and sys.stderr.isatty()  # a live bar on a terminal; one line per log step in a log file
    job.progress = resources.enter_context(_progress(job.total_steps, disable=not job.bar, initial=job.state.global_step))
    _say_header(job)
    if restored:
        _place_in_schedule(job)
        _keep_best_on_resume(job)
    return job


def _build(job: Job) -> None:
    """On the loaded model and tokenizer: the tokenised splits and their loaders, the loss, AdamW and the schedule,
    prepared by Accelerate."""
    from transformers import get_scheduler

    config, tcfg, inputs, acc = job.config, job.cfg, job.inputs, job.accelerator
    long_text = longtext.LongText.of(config.data)
    if long_text.mode != "truncate":  # saved with the model, which then reads long texts so wherever it goes
        setattr(job.model.config, longtext.LONG_TEXT_KEY, long_text.to_saved(config.data.max_length))
    elif hasattr(job.model.config, longtext.LONG_TEXT_KEY):  # fine-tuning a bertcls model that read them otherwise
        delattr(job.model.config, longtext.LONG_TEXT_KEY)
    if inputs.labels.multi_label:  # outputs join a row's labels with it, also from a copy of model/ without the run
        setattr(job.model.config, runs.LABEL_SEPARATOR_KEY, config.data.label_separator)
    for key in () if inputs.labels.multi_label else (runs.LABEL_SEPARATOR_KEY, THRESHOLD_KEY):  # a multi-label model's, fine-tuned
        if hasattr(job.model.config, key):  # as a single-label one
            delattr(job.model.config, key)
    encoded = {name: data_mod.encode(split, job.tokenizer, config.data.max_length, inputs.labels, long_text)
               for name, split in (("train", inputs.train), ("validation", inputs.validation), ("test", inputs.test)) if split is not None}
    job.readings = {name: enc.reading for name, enc in encoded.items()}
    job.long_texts = longtext.summary(long_text, config.data.max_length, job.readings)
    truncated = encoded["train"].reading.over if long_text.mode == "truncate" else ()  # the other modes read the ends they promise
    if job.main and job.warn_data:  # leakage, conflicting labels, heavy truncation: a line each, also with --quiet; `bertcls check` has the details
        for line in data_warnings((inputs.train, inputs.validation, inputs.test), truncated, config.data.max_length):
            tell(line)
    pad_id = job.tokenizer.pad_token_id if job.tokenizer.pad_token_id is not None else 0
    sampler = data_mod.LengthGroupedBatches(encoded["train"].lengths, tcfg.batch_size, config.seed)
    train_loader = data_mod.loader(encoded["train"], pad_id, sampler)
    eval_loaders = {name: data_mod.loader(enc, pad_id, data_mod.sorted_batches(enc.lengths, tcfg.eval_batch_size))
                    for name, enc in encoded.items() if name != "train"}
    job.compute_loss = build_loss(tcfg.class_weights, inputs.labels.names, encoded["train"].labels, acc.device, inputs.labels.multi_label)
    # Fused AdamW: on the CPU torch otherwise takes its per-tensor loop; fused made the whole reference loop 1.3x faster.
    fused = acc.device.type in ("cpu", "cuda") and not distributed.is_sharded(acc)
    optimizer = build_optimizer(job.model, tcfg, fused=fused)
    distributed.set_shard_units(acc, job.model)
    job.model, job.optimizer, job.train_loader = acc.prepare(job.model, optimizer, train_loader)
    job.eval_loaders = {name: acc.prepare(loader) for name, loader in eval_loaders.items()}
    job.steps_per_epoch = math.ceil(len(job.train_loader) / tcfg.gradient_accumulation_steps)
    job.total_steps = tcfg.max_steps or job.steps_per_epoch * tcfg.epochs
    job.epochs = math.ceil(job.total_steps / job.steps_per_epoch)
    job.scheduler = get_scheduler(tcfg.lr_scheduler if tcfg.lr_scheduler != "constant" else "constant_with_warmup", job.optimizer,
                                  num_warmup_steps=round(tcfg.warmup_ratio * job.total_steps), num_training_steps=job.total_steps)
    job.real_tokens = torch.tensor(0, device=acc.device)  # non-pad tokens trained on


def _say_header(job: Job) -> None:
    acc, inputs, tcfg = job.accelerator, job.inputs, job.cfg
    job.precision = {"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision)  # what the loop runs in
    effective = tcfg.batch_size * tcfg.gradient_accumulation_steps * acc.num_processes
    tested = len(inputs.test) if inputs.test else 0
    job.log.say(f"train {len(inputs.train):,} | validation {len(inputs.validation):,} | test {tested:,} | "
                f"{len(inputs.labels.names)} labels | effective batch {effective} | {job.total_steps} steps | "
                f"device {acc.device} | precision {job.precision} | model {job.config.model.name}")
    job.log.say(longtext.header_line(job.long_texts))
    if inputs.resume_from:
        job.log.say(f"resumed from {inputs.resume_from} at step {job.state.global_step}")
        threads, was = torch.get_num_threads(), inputs.resume_threads
        if acc.device.type == "cpu" and was is not None and was != threads:  # a CPU sums a product's terms by thread
            job.log.say(f"note: {inputs.resume_from.name} trained on {was} CPU thread(s), this run on {threads}: the weights differ "
                        f"from a run never stopped in their last digits (set training.num_threads: {was} to resume exactly)")
    if not job.resumable:
        job.log.say("note: training.fsdp runs write no resumable checkpoints yet; model/ (the best weights) is still saved")


def _place_in_schedule(job: Job) -> None:
    """The checkpoint's place in the data (epoch, micro-batch) as this config's schedule has it. A forced change of
    batch_size, gradient_accumulation_steps or the training rows gives an epoch another number of steps: the step
    count is kept (the learning rate follows it), and the place in the data is where that step falls now."""
    state, per_epoch, accumulation = job.state, job.steps_per_epoch, job.cfg.gradient_accumulation_steps
    if state.batches_done < len(job.train_loader) and state.epoch * per_epoch + math.ceil(state.batches_done / accumulation) == state.global_step:
        return
    epoch, steps = divmod(state.global_step, per_epoch)
    job.log.say(f"note: {job.inputs.resume_from.name} stopped at epoch {state.epoch + 1}, micro-batch {state.batches_done}, which "
                f"this config's schedule ({per_epoch} steps an epoch) does not have; step {state.global_step} goes on from "
                f"epoch {epoch + 1}, micro-batch {steps * accumulation}")
    state.epoch, state.batches_done = epoch, steps * accumulation
    if state.best_step is not None:  # metrics.json counts the new schedule's epochs: the one the best step falls in now
        state.best_epoch = (state.best_step - 1) // per_epoch + 1


def _keep_best_on_resume(job: Job) -> None:
    """model/ must be the best model the resumed checkpoint knows, never one saved after it."""
    source = job.inputs.resume_from.parent  # the run folder the checkpoint is in: another output_dir's, when resumed into a new one
    kept = _best_on_resume(job.run, job.state, job.accelerator, source)
    if kept == "resave":
        job.save_best((job.state.best_metrics or {}).get("threshold"))
    elif kept == "copied":
        job.log.say(f"note: model/ is {source}'s best model (step {job.state.best_step}), the best {job.inputs.resume_from.name} knew")
    elif kept == "lost":
        job.log.say(f"note: model/ was saved after {job.inputs.resume_from.name}, and the best model that checkpoint knew "
                    "is gone; the best is chosen again from the next evaluation")
        job.state.forget_best()


def finish(job: Job, inputs: Inputs, stop: faults.StopRequest, listeners: list[Callback]) -> Path:
    """Score the best model on validation and test, write the reports, its traced graph, the model card and metrics.json (last).

    From here a stop signal ends the run after the current stage, and the last checkpoint resumes into this finish.
    """
    acc, state, run, tcfg = job.accelerator, job.state, job.run, job.cfg
    if state.evaluated_step != state.global_step:  # resumed after the last step from a checkpoint not evaluated there
        job.validate(state.epoch_number - 1, job.window, listeners)  # (--force with fewer steps, or an older checkpoint)
    train_seconds = job.seconds()
    job.progress.close()
    if state.best_epoch is None:  # resumed after its last evaluation with the best model lost: the model now is the best there is
        evaluation = job.evaluate("validation")
        state.offer(evaluation.metrics, tcfg.metric_for_best, state.epoch_number)
        job.save_best(evaluation.threshold)
        job.best_evaluation = evaluation
    stop.finishing = True

    def stop_if_asked() -> None:
        if stop.agreed():  # every process calls it at the same points
            raise stop.interrupted(state.global_step, job.last_checkpoint)

    # The best model's predictions feed the reports: kept from its evaluation, else (a resumed run holds only
    # its metrics) scored again. The model in memory is the best one when the last evaluation was.
    if job.best_evaluation is None or state.best_step != state.global_step:
        distributed.load_full_state(acc, job.model, run / runs.MODEL_DIR)
    evaluations = {"validation": job.best_evaluation or job.evaluate("validation")}
    if inputs.test is not None:
        stop_if_asked()
        evaluations["test"] = job.evaluate("test", evaluations["validation"].threshold)
    stop_if_asked()
    if job.main:
        _write_reports(run, evaluations, tcfg, job.log)
    stop_if_asked()
    result = {"best_epoch": state.best_epoch, "best_step": state.best_step, "metric_for_best": tcfg.metric_for_best,
              **{name: evaluation.metrics for name, evaluation in evaluations.items()},
              "train": _train_summary(job, train_seconds), "data": job.long_texts}
    if job.main and tcfg.save_torchscript:
        _save_torchscript(run, job.log)
    stop_if_asked()
    for listener in listeners:
        listener.on_end(result)
    if job.main:
        card.write_card(run, job.config, (inputs.train, inputs.validation, inputs.test), inputs.labels, result, job.log.say)
        manifest.end(run)
    stop.finished, stop.signum = True, None  # a signal from here on does not make a finished run look stopped
    if job.main:
        atomic.write_json(run / runs.METRICS_FILE, result)  # last: its presence marks the run finished
        if not tcfg.keep_checkpoints_at_end:  # only an unfinished run resumes: the finished one keeps model/
            for folder in runs.checkpoints(run) + runs.checkpoints(run, complete=False):
                runs.remove_ours(run, folder.name)
    job.log.say(f"run folder: {run}")
    job.release()
    acc.end_training()
    return run


def _train_summary(job: Job, seconds: float) -> dict[str, Any]:
    acc, state = job.accelerator, job.state
    tokens = int(acc.reduce(job.real_tokens, reduction="sum"))
    epochs = state.epoch + state.batches_done / len(job.train_loader)  # a fraction when max_steps or early stopping cut an epoch short
    summary = {"seconds": round(seconds, 2), "optimizer_steps": state.global_step, "epochs": round(epochs, 3) if state.batches_done else state.epoch,
               "examples_per_s": round(len(job.inputs.train) * epochs / seconds, 2),
               "real_tokens_per_s": round(tokens / seconds, 1), "device": str(acc.device), "precision": job.precision,
               # of `seconds`, the time spent scoring validation and writing checkpoints rather than training
               **{f"{name}_seconds": round(spent, 2) for name, spent in job.paused.items()}}
    if acc.device.type == "cuda":
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(acc.device) / 2**20, 1)
    return summary


def make_accelerator(cfg: TrainingConfig, log_with: list | None = None):
    """An Accelerator on the configured device, with the configured (or best native) precision, and the trackers `log_with` (`bertcls.track`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not distributed.launched():  # one process may train many times (a notebook, a search), each run in its own precision
        AcceleratorState._reset_state(reset_partial_state=True)
    device = machine.pick_device(cfg.device, "training.device")
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))
    machine.gpu_attention_kernels(device)
    on_cpu = device == "cpu"
    distributed.check_launch(cfg, on_cpu, distributed.launched_processes())
    precision = machine.resolve_precision(cfg.precision, device, "training.precision")
    # oneDNN (bf16 CPU matmuls) keeps a compiled primitive for each of the last 1,024 shapes it ran, about 0.6 MB
    # each, and length-grouped batches bring hundreds. In bf16, 64 holds the ~40 shapes of one step (a step reuses
    # those every step has, and the last steps' of the same length): on AMX, where compiling one takes ~1 ms, steps
    # were 1.03-1.09x faster than with 16 for 45-70 MB more peak RSS; 1,024, 1.23x for 330 MB more. fp32 training
    # multiplies through MKL: 16 there, as fast as 64 and 20-40 MB smaller. Read at oneDNN's first use.
    if on_cpu:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64" if precision == "bf16" else "16")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # cpu=True also under torchrun: Accelerate then joins the launched processes over gloo.
    return Accelerator(cpu=on_cpu, mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       step_scheduler_with_optimizer=False, fsdp_plugin=distributed.fsdp_plugin(cfg), log_with=log_with or None)


def clip_gradients(acc, model, optimizer, max_norm: float) -> None:
    """Scale the gradients down to an L2 norm of `max_norm` where it is above, as `torch.nn.utils.clip_grad_norm_` does.

    On the CPU, unsharded and unscaled, the norm is summed from BLAS dot products (2.3 ms for MiniLM's 22.7 M
    gradients on two cores, against 8.3 ms for torch's norms), gradients already under it are left as they are,
    and a fused AdamW scales the others in its own pass over them (the `grad_scale` torch's GradScaler hands it
    too), which spares a pass over every gradient: 4 ms a step for MiniLM. Elsewhere Accelerate clips (it
    unscales fp16 and gathers shards first).
    """
    if acc.device.type != "cpu" or distributed.is_sharded(acc) or acc.scaler is not None:
        acc.clip_grad_norm_(model.parameters(), max_norm)
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    squares = [torch.dot(g.view(-1), g.view(-1)) if g.dtype == torch.float32 and g.is_contiguous() else torch.linalg.vector_norm(g) ** 2
               for g in grads]
    divisor = (math.sqrt(sum(float(square) for square in squares)) + 1e-6) / max_norm
    inner = getattr(optimizer, "optimizer", optimizer)  # AdamW, under Accelerate's wrapper
    scaled = not divisor <= 1  # a non-finite norm scales by 0 or nan, as torch's clipping does
    if inner.defaults.get("fused"):
        inner.grad_scale = torch.tensor(divisor, dtype=torch.float32) if scaled else None  # the step divides by it
    elif scaled:
        torch._foreach_mul_(grads, 1 / divisor)


def build_optimizer(model, cfg: TrainingConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (every parameter with fewer than 2 dims)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def _claim_run_dir(run: Path, overwrite: bool, resuming: bool, accelerator, resources: ExitStack) -> None:
    """The main process locks the run folder for the whole run (`resources`), checks it again under the lock,
    and clears what a fresh start replaces (`runs.prepare_run_dir`); a refusal stops every process."""

    def claim() -> None:
        resources.enter_context(runlock.locked(run))
        runs.prepare_run_dir(run, overwrite, resuming)

    distributed.on_main(accelerator, claim)


def _best_on_resume(run: Path, state: LoopState, accelerator, source: Path) -> str:
    """Whether model/ is the best model the resumed checkpoint knows ("kept"); else whether that is the
    checkpoint's own weights ("resave"), or the model/ of `source`, the run folder the checkpoint is in, when that
    is another ("copied" into `run`); or lost ("lost"): model/ was saved after the checkpoint (by the run that went
    on from it), and is removed. The main process looks; every process gets the answer."""

    def look() -> str:
        known = state.best_value is not None and state.best_step is not None
        if known and runs.best_model_step(run) == state.best_step:
            return "kept"
        if known and state.best_step == state.global_step:
            return "resave"
        if known and os.path.realpath(source) != os.path.realpath(run) and runs.best_model_step(source) == state.best_step:
            _copy_model(source, run)
            runs.record_best(run, state.best_step)
            return "copied"
        runs.remove_ours(run, runs.MODEL_DIR)
        return "lost" if state.best_value is not None else "kept"

    return distributed.on_main(accelerator, look)


def _copy_model(source: Path, run: Path) -> None:
    """RUN/model <- the files bertcls wrote in `source`'s model/ (a folder put in place whole)."""
    dest = run / runs.MODEL_DIR
    with atomic.writing(dest):
        tmp = atomic.temp_dir_for(dest)
        try:
            for name in runs.read_record(source)["files"]:
                folder, _, rest = name.partition("/")
                if folder == runs.MODEL_DIR and rest and (source / name).is_file():
                    (tmp / rest).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / name, tmp / rest)
            runs.publish_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write_reports(run: Path, evaluations: dict[str, Evaluation], cfg: TrainingConfig, log: _Log) -> None:
    """RUN/reports/<split>/ for the best checkpoint's validation and test scores, loss.png, and the test table."""
    files = report.REPORT_FILES if cfg.report_figures else (report.PREDICTIONS_FILE,)
    for name, evaluation in evaluations.items():
        runs.record_files(run, *(f"{runs.REPORTS_DIR}/{name}/{file}" for file in files))
        report.write_report(run / runs.REPORTS_DIR / name, evaluation, figures=cfg.report_figures)
    if cfg.loss_curve:
        runs.record_files(run, runs.LOSS_FILE)
        report.write_loss_curve(run)
    if not log.quiet:
        shown = "test" if "test" in evaluations else "validation"
        report.print_report(evaluations[shown].metrics, file=sys.stderr, title=f"{shown} (best checkpoint)",
                            multi_label=evaluations[shown].multi_label)


def _save_torchscript(run: Path, log: _Log) -> None:
    """The traced graph that lets `bertcls predict` skip transformers; a model that does not trace keeps the slow path."""
    from bertcls.export import save_torchscript

    began = time.perf_counter()
    runs.record_files(run, f"{runs.MODEL_DIR}/{runs.TORCHSCRIPT_FILE}")
    try:
        checked = save_torchscript(run)
    except (BertclsError, OSError, RuntimeError) as exc:  # the run itself is complete: never lose it over this
        log.say(f"note: no TorchScript graph, so predict will load transformers ({first_line(exc)})")
        return
    log.say(f"TorchScript graph saved for fast predict start-up ({time.perf_counter() - began:.1f} s; its logits differ from "
            f"the model's by {checked['max_abs_logit_diff']:.1g} at most)")
    for precision, why in checked["failed"].items():
        log.say(f"note: the TorchScript graph is not used in {precision}, where predict will load transformers ({why})")


def _nonfinite_loss(loss: float, step: int, lr: float, run: Path) -> TrainingError:
    kept = runs.checkpoints(run)
    last = f"; the last good checkpoint is {kept[-1]}" if kept else ""
    return TrainingError(f"the training loss became {loss} at step {step} (lr {lr:.3g}); lower training.learning_rate{last}")


def _progress(total: int, disable: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True, leave=False)


class _Log:
    """JSON lines to log.jsonl (main process only) and short lines to stderr; a context manager that closes the file."""

    def __init__(self, path: Path | None, quiet: bool) -> None:
        self.file = open(path, "a", encoding="utf-8") if path else None
        self.quiet = quiet

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def say(self, line: str) -> None:
        if not self.quiet:
            tell(line)


def tell(line: str) -> None:
    """Print a line to stderr. When its reader has gone (`bertcls train ... 2>&1 | head`), training goes on without a
    terminal, writing log.jsonl, rather than die of the broken pipe with its steps lost: the rest is said to nobody."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (it lasts as long as the process)
