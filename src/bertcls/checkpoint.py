"""Resumable checkpoints: the whole training state into RUN/checkpoint-N/ and back (layout in `bertcls.runs`).

Weights are safetensors; optimizer and random states hold only tensors and plain containers and
are read with `torch.load(weights_only=True)`, so loading a checkpoint never runs pickled code.
Damage is refused before training goes on: state.json records the sha256 of the weights and of the
optimizer state, and both must be finite.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertcls import atomic, distributed, runs
from bertcls.config import default_values, dotted
from bertcls.errors import RunError, clipped, first_line, listing, load_reason
from bertcls.evaluate import is_better, scalars
from bertcls.manifest import sha256_file
from bertcls.model import quiet_unpickler, unreadable_weights

# Keys that may change between a checkpoint and its resume without changing what is trained: where the run
# lives, how often it logs and checkpoints, its trackers, and what only the finish uses (the test split, the
# evaluation batch, the reports and the traced graph). docs/resume.md lists them.
HARMLESS_KEYS = frozenset({"output_dir", "training.log_every_steps", "training.num_threads",
                           "training.save_every_steps", "training.keep_checkpoints",
                           "training.keep_checkpoints_at_end", "training.report_to",
                           "data.test", "training.eval_batch_size", "training.report_figures",
                           "training.loss_curve", "training.save_torchscript"})
# The model that builds its vocabulary from the training texts: its checkpoints only go on with the same data.
DATA_BUILT_MODEL = "tiny"


@dataclass
class LoopState:
    """Where training stands: what `save` writes to state.json (with the data's fingerprint and the config)
    and `restore` gives back, so a resumed loop continues exactly where it stopped."""

    epoch: int = 0  # epochs finished, or the epoch in progress when batches_done > 0
    batches_done: int = 0  # micro-batches of that epoch already trained
    global_step: int = 0  # optimizer updates so far
    seconds: float = 0.0  # training time so far
    best_value: float | None = None  # the best validation metric_for_best so far ...
    best_epoch: int | None = None  # ... the epoch it came in (from 1) ...
    best_step: int | None = None  # ... the step model/ was saved at ...
    best_metrics: dict[str, Any] | None = None  # ... and its validation metrics
    evals_since_best: int = 0  # evaluations without a better result (early stopping)
    evaluated_step: int | None = None  # the step of the last evaluation: the finish scores the weights after the last step once
    trackers: dict[str, str] = field(default_factory=dict)  # experiment tracker -> its run (MLflow's run id), to log on to after a resume

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> LoopState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if saved.get(f.name) is not None})

    def saved(self) -> dict[str, Any]:
        return asdict(self)

    def offer(self, metrics: dict[str, Any], metric: str, epoch: int) -> bool:
        """Note an evaluation at this step; take `metrics` (after `epoch`) as the best so far if `metric` improved on it; whether it did."""
        self.evaluated_step = self.global_step
        if not is_better(metric, metrics[metric], self.best_value):
            self.evals_since_best += 1
            return False
        self.best_value, self.best_epoch, self.best_step, self.evals_since_best = metrics[metric], epoch, self.global_step, 0
        self.best_metrics = scalars(metrics)  # only the headline numbers: per-label tables grow with the labels
        return True

    @property
    def epoch_number(self) -> int:
        """The epoch (from 1) the last step belongs to: the one in progress, or the one just finished."""
        return self.epoch + (1 if self.batches_done else 0)

    def forget_best(self) -> None:
        self.best_value = self.best_epoch = self.best_step = self.best_metrics = None
        self.evals_since_best = 0


def save(run: Path, accelerator, model, optimizer, scheduler, *, state: dict[str, Any], own: dict[str, Any],
         config: dict[str, Any], keep: int) -> Path:
    """Write RUN/checkpoint-<global_step> whole or not at all, then keep only the newest `keep`.

    A collective: every process calls it at the same step. `own` is this process's part of the
    loop state (its loss window, its token count); it goes with the process's random states to
    rng-<process>.pt. The main process gathers them and writes every file, so saving needs no
    shared filesystem.
    """
    from safetensors.torch import save_model

    dest = Path(run) / f"{runs.CHECKPOINT_PREFIX}{state['global_step']}"
    per_process = _gather(accelerator, {**own, "rng": _rng_state()})

    def write() -> None:
        with atomic.writing(dest):  # disk full, say: one line, and the previous checkpoint stays
            tmp = atomic.temp_dir_for(dest)
            try:
                save_model(accelerator.unwrap_model(model), str(tmp / runs.CHECKPOINT_WEIGHTS))
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                # The weights' sha256 in a thread (hashlib lets go of the GIL) while the optimizer state is written: on
                # two cores a MiniLM-size checkpoint (127 MB of weights, 0.53 s to save) took 0.01 s more (median of
                # 20 saves), where hashing after it took 0.07 s more.
                with ThreadPoolExecutor(1) as hashing:
                    weights_sha256 = hashing.submit(sha256_file, tmp / runs.CHECKPOINT_WEIGHTS)
                    optimizer_sha256 = _save_torch({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                                    "scaler": scaler}, tmp / runs.CHECKPOINT_OPTIMIZER)
                for index, part in enumerate(per_process):
                    _save_torch(part, tmp / runs.CHECKPOINT_RNG.format(index))
                written = {**state, "processes": accelerator.num_processes, "weights_sha256": weights_sha256.result(),
                           "optimizer_sha256": optimizer_sha256, "config": config}
                (tmp / runs.CHECKPOINT_STATE).write_text(json.dumps(written, indent=1), encoding="utf-8")
                runs.publish_dir(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        for old in runs.checkpoints(run)[:-keep]:
            runs.remove_ours(run, old.name)

    distributed.on_main(accelerator, write)  # the others wait; a failure stops them too
    return dest


def _save_torch(obj: Any, path: Path) -> str:
    """torch.save `obj` to `path`; the sha256 of the bytes written, hashed as they go out (no second read)."""
    # Through a Python file: a failed write then carries its OSError (errno and all), where torch's own
    # writer reports a full disk only as "unexpected pos".
    with open(path, "wb") as f:
        hashing = _HashingWriter(f)
        torch.save(obj, hashing)
    return hashing.digest.hexdigest()


class _HashingWriter:
    """A file to write to that hashes what passes through it (torch.save needs only write and flush)."""

    def __init__(self, file) -> None:
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _gather(accelerator, part: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's `part`, in process order (small: random states and a few numbers)."""
    if accelerator.num_processes == 1:
        return [part]
    parts: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, part)
    return parts


def find(run: Path, resume: bool | str | Path, config: dict[str, Any], data_fingerprint: str, force: bool,
         labels: list[str] | None = None, texts_fingerprint: str | None = None) -> Path:
    """The checkpoint to resume from (the newest in `run`, or the one named), checked against the
    current config and training data (`data_fingerprint`; its texts alone: `texts_fingerprint`); a difference is
    refused, naming it, unless `force`. Another label set (`labels`, as the classifier's rows are ordered) is refused
    even with `force`, and so are other texts for the model that builds its vocabulary from them."""
    run = Path(run)
    if runs.is_finished(run):
        raise RunError(f"output_dir {run} holds a finished run; there is nothing to resume (pass --overwrite to train again)")
    if resume is True:
        found = runs.checkpoints(run)
        if not found and (damaged := runs.checkpoints(run, complete=False)):
            raise RunError(f"--resume: {damaged[-1]} has no {runs.CHECKPOINT_STATE} (deleted, or lost), and no other checkpoint in "
                           f"{run} is whole; restore that file, or start over with --overwrite")
        if not found:
            fresh = "start over with --overwrite (it deletes the model/ saved so far)" if (run / runs.MODEL_DIR).exists() else \
                "start without --resume"
            raise RunError(f"--resume: no checkpoint in {run}; {fresh}")
        folder = found[-1]
    else:
        folder = Path(resume)
        if not folder.exists():
            found = ", ".join(path.name for path in runs.checkpoints(run)) or "none"
            raise RunError(f"--resume {folder}: no such folder (checkpoints in {run}: {found}); give one, or --resume alone for the newest")
        if not (folder / runs.CHECKPOINT_STATE).is_file():
            raise RunError(f"--resume {folder}: not a checkpoint folder (no {runs.CHECKPOINT_STATE}); give RUN/{runs.CHECKPOINT_PREFIX}N")
    state = read_state(folder)
    saved_by, processes = state.get("processes", 1), distributed.launched_processes()
    if saved_by != processes:  # each process's position in the data order is its own
        raise RunError(f"--resume: {folder.name} was written by {saved_by} process(es) and this run has {processes}; "
                       f"resume with the same number (torchrun --nproc_per_node {saved_by} ..., or plainly for 1)")
    changed = config_differences(state.get("config") or {}, config)
    if changed and not force:
        raise RunError(f"--resume: the config differs from {folder.name}'s: {'; '.join(changed)}; undo the change, or pass --force")
    if labels is not None and "labels" in state and state["labels"] != labels:  # each classifier row is one label's
        raise RunError(f"--resume: {folder.name}'s classifier is for the labels {listing(state['labels'], 20)}, and the training "
                       f"data now has {listing(labels, 20)}; even --force cannot go on with another label set: resume with the "
                       "same labels, or start over with --overwrite")
    if state.get("data_fingerprint") != data_fingerprint:
        # other texts would change a token's id, or the vocabulary's size; relabelled or reordered rows leave it as it was
        if config["model"]["name"] == DATA_BUILT_MODEL and "data_fingerprint" in state:
            fix = "resume with the same data, or start over with --overwrite"
            if "texts_fingerprint" not in state:
                raise RunError(f"--resume: the training data differs from the data {folder.name} was trained on, and model "
                               f"{DATA_BUILT_MODEL!r} builds its vocabulary from the training texts, which {folder.name} (written by an "
                               f"older bertcls) does not record apart from the labels, so even --force cannot go on; {fix}")
            if state["texts_fingerprint"] != texts_fingerprint:
                raise RunError(f"--resume: the training texts differ from those {folder.name} was trained on, and model "
                               f"{DATA_BUILT_MODEL!r} builds its vocabulary from them, so even --force cannot go on with other "
                               f"texts; {fix}")
        if not force:
            raise RunError(f"--resume: the training data differs from the data {folder.name} was trained on; "
                           "resume with the same files, or pass --force")
    return folder


# Every field of state.json (`save` writes them; the loop reads them back): the types it may have, the
# least value of a number, and what it must be, in words. Older checkpoints may lack all but the first three.
WHOLE = ((int,), 0, "a whole number >= 0")
STATE_FIELDS: dict[str, tuple[tuple[type, ...], float | None, str]] = {
    "global_step": WHOLE, "epoch": WHOLE, "batches_done": WHOLE, "evals_since_best": WHOLE,
    "processes": ((int,), 1, "a whole number >= 1"), "seconds": ((int, float), 0, "a number >= 0"),
    "best_value": ((int, float, type(None)), None, "a number or null"), "best_epoch": ((int, type(None)), 1, "a whole number >= 1 or null"),
    "best_metrics": ((dict, type(None)), None, "an object or null"), "data_fingerprint": ((str,), None, "a string"),
    "texts_fingerprint": ((str,), None, "a string"),
    "config": ((dict,), None, "an object"), "trackers": ((dict,), None, "an object"),
    "evaluated_step": ((int, type(None)), 0, "a whole number >= 0 or null"), "weights_sha256": ((str,), None, "a string"),
    "optimizer_sha256": ((str,), None, "a string"),
    "labels": ((list,), None, "a list"), "threads": ((int,), 1, "a whole number >= 1"),
}
REQUIRED_STATE = ("global_step", "epoch", "batches_done")


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder, every field checked against STATE_FIELDS: the one place it is validated."""
    file = Path(folder) / runs.CHECKPOINT_STATE
    fix = "resume from another checkpoint, or start over with --overwrite"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{file}: unreadable checkpoint state ({first_line(exc)}); {fix}") from None
    if not isinstance(state, dict):
        raise RunError(f"{file}: holds a JSON {type(state).__name__}, not a bertcls checkpoint state (an object); {fix}")
    missing = [key for key in REQUIRED_STATE if key not in state]
    if missing:
        raise RunError(f"{file}: not a bertcls checkpoint state (no {', '.join(missing)}); {fix}")
    for key, (types, least, what) in STATE_FIELDS.items():
        value = state.get(key)
        if key not in state or (value is None and type(None) in types):
            continue
        if isinstance(value, bool) or not isinstance(value, types) or (least is not None and value < least):
            raise RunError(f"{file}: {key} is {json.dumps(value)[:40]}, not {what}; {fix}")
    return state


def restore(folder: Path, run: Path, accelerator, model, optimizer, scheduler) -> dict[str, Any]:
    """Load weights, optimizer/scheduler/scaler and random states from `folder`; return its loop
    state, with this process's own part (see `save`). Every process reads `folder`: a run over
    many machines resumes from a shared filesystem.

    In `run`, log lines after the checkpoint's step and later checkpoints (a future that is being
    replaced) are dropped. Call last before the loop: it sets the random states the loop continues from.
    A damaged file stops every process: the one that read it says which.
    """
    folder = Path(folder)
    state = read_state(folder)
    own = distributed.together(accelerator, partial(_load, folder, state, accelerator, model, optimizer, scheduler))
    distributed.on_main(accelerator, partial(_drop_later, Path(run), state["global_step"]))  # the others wait; a failure stops them
    return {**state, **own}


def _drop_later(run: Path, step: int) -> None:
    """The run's checkpoints and log lines after `step`: a future that the resume replaces."""
    for later in runs.checkpoints(run):
        if int(later.name.removeprefix(runs.CHECKPOINT_PREFIX)) > step:
            runs.remove_ours(run, later.name)
    _trim_log(run / runs.LOG_FILE, step)


def _load(folder: Path, state: dict[str, Any], accelerator, model, optimizer, scheduler) -> dict[str, Any]:
    """`restore`'s reading, on one process: the weights, optimizer, scheduler and scaler states, and this process's
    own random states and counts (returned), each file checked; a damaged one is a RunError naming it."""
    from safetensors.torch import load_model

    file = folder / runs.CHECKPOINT_WEIGHTS  # the file being read, to name it when it is damaged
    unwrapped = accelerator.unwrap_model(model)
    try:
        _check_weights(file, state.get("weights_sha256"), unwrapped)
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # safetensors refuses "cpu:0" (CPU processes)
        load_model(unwrapped, str(file), device=device)
        _check_finite(file, unwrapped.state_dict().items())
        file = folder / runs.CHECKPOINT_OPTIMIZER
        saved = _load_torch(file, {"optimizer": dict, "scheduler": dict, "scaler": (dict, type(None))})
        _check_sha256(file, state.get("optimizer_sha256"))  # after reading: a file cut short is named as one
        optimizer.load_state_dict(saved["optimizer"])
        names = {param: name for name, param in unwrapped.named_parameters()}
        _check_finite(file, ((f"{key} of {names.get(param, 'a parameter')}", value)
                             for param, moments in optimizer.state.items() for key, value in moments.items()))
        scheduler.load_state_dict(saved["scheduler"])
        if accelerator.scaler is not None and saved["scaler"] is not None:
            accelerator.scaler.load_state_dict(saved["scaler"])
        file = folder / runs.CHECKPOINT_RNG.format(accelerator.process_index)
        own = _load_torch(file, {"rng": dict, "window": list, "real_tokens": int})
        if len(own["window"]) != 3 or not all(isinstance(v, (int, float)) for v in own["window"]):
            raise ValueError("'window' is not [loss, batches, examples]")
        rng = own.pop("rng")
        _set_rng_state(rng)  # before anything below is deleted: a damaged random state is refused like the rest
    except (*unreadable_weights(), TypeError, IndexError) as exc:
        raise RunError(f"{file}: cannot load this checkpoint ({_state_dict_reason(exc) or load_reason(exc)}); resume from another one, "
                       "or start over with --overwrite") from None
    return own


def _check_weights(file: Path, sha256: str | None, model) -> None:
    """Refuse a weights file whose tensors have other shapes than `model`'s (a changed model, label set,
    max_length ...), or whose bytes changed since it was saved (`sha256`; None in checkpoints older than it).
    A file cut short or not safetensors at all fails reading its header, with safetensors' own reason."""
    from safetensors import safe_open

    ours = model.state_dict()
    with safe_open(str(file), framework="pt") as saved:
        for name in saved.keys():
            shape = list(saved.get_slice(name).get_shape())
            if name in ours and list(ours[name].shape) != shape:
                raise RunError(f"{file}: the model's shapes differ from the checkpoint's ({name}: {list(ours[name].shape)} in the model "
                               f"this config builds, {shape} in the checkpoint); resume with the config the checkpoint was trained "
                               "with, or start over with --overwrite")
    _check_sha256(file, sha256)


def _check_sha256(file: Path, sha256: str | None) -> None:
    """Refuse a checkpoint file whose bytes changed since it was saved (`sha256`; None in checkpoints older than it)."""
    if sha256 is not None and sha256_file(file) != sha256:
        raise RunError(f"{file}: damaged: its sha256 is not the one recorded in {runs.CHECKPOINT_STATE} when it was saved; "
                       "resume from another checkpoint, or start over with --overwrite")


def _check_finite(file: Path, named) -> None:
    """Refuse weights or optimizer moments (`named`: (name, value) pairs) holding nan or inf: the file is damaged
    (a checkpoint is only written after a finite loss), and training would carry them on into a nan loss."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RunError(f"{file}: damaged: {name} holds nan or inf values; resume from another checkpoint, "
                           "or start over with --overwrite")


def _state_dict_reason(exc: BaseException) -> str | None:
    """What torch's "Error(s) in loading state_dict for X:" says on its next line (missing or unexpected keys)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if not lines or not lines[0].startswith("Error(s) in loading state_dict") or len(lines) < 2:
        return None
    return f"the model this config builds does not match the checkpoint's: {clipped(lines[1], 160)}"


def _load_torch(file: Path, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A dict saved by `_save_torch`, read without running pickled code, with each of `fields` of its type."""
    with quiet_unpickler():
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"holds a {type(loaded).__name__}, not a dict")
    for key, types in fields.items():
        if not isinstance(loaded.get(key), types):
            raise ValueError(f"{key!r} is missing or a {type(loaded.get(key)).__name__}")
    return loaded


def fingerprint(texts, pairs, labels) -> str:
    """A short hash of the training rows: resuming on other data would silently change the run."""
    blob = json.dumps([texts, pairs, labels], ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:16]


def config_differences(old: dict[str, Any], new: dict[str, Any], ignored: frozenset[str] = HARMLESS_KEYS) -> list[str]:
    """`key: old -> new` for every dotted key whose value changed, except `ignored`. A key the
    checkpoint's config lacks (a key newer than the bertcls that wrote it) is no change at its default."""
    before, after, defaults = dotted(old), dotted(new), default_values()
    keys = sorted((before.keys() | after.keys()) - ignored)
    new_at_default = {key for key in keys if key not in before and key in defaults and after.get(key) == defaults[key]}
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in keys
            if before.get(key) != after.get(key) and key not in new_at_default]


def _trim_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic.write_atomic(path, "".join(kept))


def _rng_state() -> dict[str, Any]:
    # numpy's state is an ndarray, which weights_only loading refuses: store it as a tensor.
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
