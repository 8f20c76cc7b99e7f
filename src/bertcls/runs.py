"""The run folder: its file names, atomic writes, and finding a run to predict with.

    RUN/config.yaml     the resolved config the run was trained with
    RUN/log.jsonl       one JSON object per training log line and per evaluation
    RUN/model/          the best checkpoint: save_pretrained output (safetensors) + tokenizer, and
        bertcls-torchscript.pt  its traced graph, for a fast-starting `bertcls predict` on the CPU
                            (training.save_torchscript; see `bertcls.export.save_torchscript`)
    RUN/checkpoint-N/   a resumable checkpoint after optimizer step N (see `bertcls.checkpoint`):
        model.safetensors   the weights
        optimizer.pt        optimizer, scheduler and gradient-scaler state
        rng-R.pt            process R's python, numpy, torch and CUDA random states, loss window
                            and token count (one file per process: each draws its own dropout)
        state.json          epoch, position in the epoch's data order, step, best so far, config
    RUN/reports/        validation/ and test/: predictions.csv and figures (see bertcls.report)
    RUN/loss.png        training and validation loss (training.loss_curve)
    RUN/metrics.json    validation (best checkpoint) and test metrics; written last, so a
                        folder without it is an unfinished run

Files are written under a temporary name in the same folder (`.NAME.*`) and renamed into place.
A write the file system refuses (disk full, read-only, a file where a folder goes) becomes a
one-line `WriteError` naming the path (`writing`); bertcls never writes through a symbolic link
in a run folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertcls.errors import BertclsError, RunError, WriteError

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
REPORTS_DIR = "reports"
LOSS_FILE = "loss.png"
RUN_FILES = (CONFIG_FILE, LOG_FILE, MODEL_DIR, REPORTS_DIR, LOSS_FILE, METRICS_FILE)
TORCHSCRIPT_FILE = "bertcls-torchscript.pt"  # in MODEL_DIR
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_RNG = "rng-{}.pt"  # .format(process index)
CHECKPOINT_STATE = "state.json"
# Temporary names next to NAME, made by write_atomic, temp_dir_for and publish_dir.
TEMP_PATTERNS = (".{}.*.tmp", ".{}.tmp-*", ".{}.old-*")
DEFAULT_RUNS_ROOT = "runs"
MODEL_ENV = "BERTCLS_MODEL"


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` to write; if the block succeeds it is fsynced and renamed onto `path`."""
    path = Path(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        try:
            yield Path(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file (text or bytes) whole or not at all."""
    with atomic_file(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The file system refusing a write: full, over quota, read-only, not permitted, a file where a folder
# goes or the reverse. These are the user's to fix; any other OSError is left to be a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR})
# Those fixed where they happen (space freed, permission given), after which a run can resume in place.
FIXABLE_IN_PLACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the file system refusing a write to `path` (a file, or a folder being filled) in the block into
    a one-line WriteError naming `path`, the cause and the fix. Anything else passes through unchanged."""
    path = Path(path)
    try:
        yield
    except BertclsError:
        raise
    except Exception as exc:
        code = refused_write(exc, path)
        if code is None:
            raise
        raise write_error(path, code) from exc


def refused_write(exc: BaseException | None, path: Path) -> int | None:
    """The errno of a write to `path` that the file system refused, found in `exc` or what it wraps (torch
    wraps the OSError in a RuntimeError; safetensors names the errno only in its message); None for
    anything else, and for an error about some other file (a source being read, say)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS and _is_about(exc.filename, path):
            return exc.errno
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found and int(found[1]) in WRITE_ERRNOS:
            return int(found[1])
        exc = exc.__cause__ or exc.__context__
    return None


def _is_about(filename: str | bytes | int | None, path: Path) -> bool:
    """Whether an OSError's file is `path`, inside it, or one of its temporaries (`.NAME.*`); a write
    to an open file (the disk filling up) names no file at all."""
    if filename is None or isinstance(filename, int):
        return True
    file, path = Path(os.path.abspath(os.fsdecode(filename))), Path(os.path.abspath(path))
    return file == path or path in file.parents or (file.parent == path.parent and file.name.startswith(f".{path.name}."))


def write_error(path: Path, code: int, writing: bool = True) -> WriteError:
    """`path: cause; fix` for a write the file system refused with `code` (`writing` False: for an
    access to `path` that may have been a read)."""
    fixes = {
        errno.ENOSPC: "free space on its disk",
        errno.EDQUOT: "free space within your disk quota",
        errno.EROFS: "its file system is mounted read-only; write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "a folder is in the way of a file; move it, or choose another path",
    }
    fix = fixes.get(code, f"make {Path(path).parent} writable" if writing else f"check the permissions of {path} and its folder")
    return WriteError(f"{path}: {os.strerror(code)}; {fix}", code)


def check_folder_path(path: Path, what: str) -> None:
    """Refuse a folder to write that is a file, or lies under one (`notes.txt/run`), before any work is done."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"is under {part}, which is a file"
            raise RunError(f"{what} {path} {where}; choose a folder")


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def temp_dir_for(dest: Path) -> Path:
    """A fresh temporary folder next to `dest`, to fill and then `publish_dir`."""
    tmp = Path(tempfile.mkdtemp(dir=Path(dest).parent, prefix=f".{Path(dest).name}.tmp-"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the permissions mkdir would
    return tmp


def publish_dir(tmp: Path, dest: Path) -> None:
    """Put a complete folder in place of `dest`: fsync its files, then rename; `dest` is never half-written."""
    for file in Path(tmp).rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    dest = Path(dest)
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def weights_stamp(folder: Path, digest: bool = True) -> dict[str, dict[str, Any]]:
    """Each weight file of a model folder: its size and mtime, and with `digest` its sha256."""
    import hashlib

    stamp = {}
    for file in sorted(p for pattern in ("*.safetensors", "pytorch_model*.bin") for p in Path(folder).glob(pattern)):
        stat = file.stat()
        stamp[file.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if digest:
            sha = hashlib.sha256()
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            stamp[file.name]["sha256"] = sha.hexdigest()
    return stamp


def same_weights(folder: Path, recorded: dict[str, dict[str, Any]]) -> bool:
    """Whether the folder's weight files are those `weights_stamp` recorded: the same size and mtime, or
    (for a copied folder, whose mtimes are new) the same sha256."""
    now = weights_stamp(folder, digest=False)
    if now.keys() != recorded.keys() or any(now[n]["size"] != recorded[n]["size"] for n in now):
        return False
    if all(now[n]["mtime_ns"] == recorded[n]["mtime_ns"] for n in now):
        return True
    return all(d["sha256"] == recorded[n]["sha256"] for n, d in weights_stamp(folder).items())


def checkpoints(run: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest (lowest step) first."""
    found = []
    for path in Path(run).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name.removeprefix(CHECKPOINT_PREFIX)
        if step.isdigit() and (path / CHECKPOINT_STATE).is_file():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def is_finished(run: Path) -> bool:
    return (Path(run) / METRICS_FILE).is_file() and (Path(run) / MODEL_DIR).is_dir()


def check_run_dir(run: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse a run folder that is a file, holds a finished run (unless `overwrite`), or holds an
    unfinished run with checkpoints that a fresh start would lose (unless `overwrite` or `resuming`)."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise RunError(f"output_dir {run} is a file; choose a folder")
    check_folder_path(run, "output_dir")
    links = [p for p in _own_entries(run) if p.is_symlink()]
    if links:  # replacing or deleting through a link would reach files outside the run folder
        raise RunError(f"output_dir {run}: {links[0].name} is a symbolic link, and bertcls does not write through links "
                       f"in a run folder; replace it with the real folder or file, or choose another output_dir")
    if is_finished(run) and not overwrite:
        raise RunError(f"output_dir {run} already holds a finished run; pass --overwrite or choose another output_dir")
    found = checkpoints(run) if run.is_dir() else []
    if found and not (overwrite or resuming):
        raise RunError(f"output_dir {run} holds an unfinished run ({found[-1].name}); "
                       "pass --resume to continue it, or --overwrite to start over")


def _own_entries(run: Path) -> list[Path]:
    """What bertcls writes in a run folder that exists now (its names, and its checkpoint folders)."""
    if not run.is_dir():
        return []
    return [run / name for name in RUN_FILES if os.path.lexists(run / name)] + list(run.glob(f"{CHECKPOINT_PREFIX}*"))


def prepare_run_dir(run: Path, overwrite: bool, resuming: bool = False) -> None:
    """Create the run folder after `check_run_dir`; clear what a fresh start replaces.

    Only files bertcls writes are removed (its names, and its `.NAME.*` temporaries left by a
    killed run); anything else stays.
    """
    run = Path(run)
    check_run_dir(run, overwrite, resuming)
    run.mkdir(parents=True, exist_ok=True)
    (run / METRICS_FILE).unlink(missing_ok=True)  # first, so a crash below leaves an unfinished run
    for moved in run.glob(".*.old-*") if resuming else []:  # killed between publish_dir's two renames: put it back
        original = run / moved.name[1:].rsplit(".old-", 1)[0]
        if (original.name == MODEL_DIR or original.name.startswith(CHECKPOINT_PREFIX)) and not original.exists():
            os.replace(moved, original)
    leftovers = [p for name in (*RUN_FILES, f"{CHECKPOINT_PREFIX}*") for pattern in TEMP_PATTERNS for p in run.glob(pattern.format(name))]
    replaced = [] if resuming else [run / name for name in RUN_FILES] + checkpoints(run)
    for target in leftovers + replaced:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def model_dir(path: str | Path) -> Path:
    """The model folder of a run folder, or `path` itself when it is a model folder."""
    path = Path(path)
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise RunError(f"--model {path}: no such folder")
    raise RunError(f"--model {path}: neither a finished run folder (with {MODEL_DIR}/) nor a model folder (with config.json)")


def find_model(given: str | Path | None) -> tuple[Path, str]:
    """The model to use, and why: --model, else $BERTCLS_MODEL, else the newest finished run under ./runs."""
    if given:
        return Path(given), "--model"
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]), f"${MODEL_ENV}"
    root = Path(DEFAULT_RUNS_ROOT)
    runs = [p for p in root.glob("**/") if is_finished(p)] if root.is_dir() else []
    if not runs:
        raise RunError(f"no model given and no finished run under ./{DEFAULT_RUNS_ROOT}; pass --model RUN_DIR or set ${MODEL_ENV}")
    newest = max(runs, key=lambda p: (p / METRICS_FILE).stat().st_mtime)
    return newest, f"newest finished run under ./{DEFAULT_RUNS_ROOT}"


def read_run_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved config as a dict, or None for a plain model folder."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    import yaml

    return yaml.safe_load(file.read_text(encoding="utf-8"))
