"""The run folder: its file names, what bertcls may delete there, its lock, atomic writes, and finding
a run to predict with.

    RUN/bertcls-run.json  the record of what bertcls wrote here (below); bertcls deletes or replaces
                        only what it lists, so a folder without it is never written to
    RUN/bertcls-run.lock  locked (flock) by the process training here, which writes its pid into it;
                        the lock dies with the process, so a killed run never leaves it taken
    RUN/config.yaml     the resolved config the run was trained with
    RUN/log.jsonl       one JSON object per training log line and per evaluation
    RUN/manifest.json   what the run was made with: versions, command line, host, the data files'
                        sha256, start and end times, git commit (see `bertcls.manifest`)
    RUN/model/          the best checkpoint: save_pretrained output (safetensors) + tokenizer, and
        bertcls-torchscript.pt  its traced graph, for a fast-starting `bertcls predict` on the CPU
                            (training.save_torchscript; see `bertcls.export.save_torchscript`)
        README.md           its Hugging Face model card, written at the end (see `bertcls.card`)
    RUN/checkpoint-N/   a resumable checkpoint after optimizer step N (see `bertcls.checkpoint`):
        model.safetensors   the weights
        optimizer.pt        optimizer, scheduler and gradient-scaler state
        rng-R.pt            process R's python, numpy, torch and CUDA random states, loss window
                            and token count (one file per process: each draws its own dropout)
        state.json          epoch, position in the epoch's data order, step, best so far, config
    RUN/reports/        validation/ and test/: predictions.csv and figures (see bertcls.report)
    RUN/loss.png        training and validation loss (training.loss_curve)
    RUN/tensorboard/    TensorBoard's event files (training.report_to: tensorboard; see `bertcls.track`)
    RUN/metrics.json    validation (best checkpoint) and test metrics, the training summary, and per
                        split the texts over max_length ("data"); written last, so a
                        folder without it is an unfinished run

The record lists every file bertcls wrote (paths relative to RUN), each added before the file is
written (TensorBoard's, which it names by time, host and pid, right after it makes them), and the step model/ was saved at with its weights' stamp (`record_best`). Files someone
else put in the folder, or inside model/ or reports/, are never deleted: a fresh start leaves them,
and replacing model/ carries them into the new one. A file users are meant to edit (the model card)
is recorded with its sha256; once its content changes it is theirs, kept as any other file of theirs.

Files are written under a temporary name in the same folder (`.NAME.*`) and renamed into place,
with the permissions open() gives (0666 less the umask).
Writing a file or folder whole, and turning a write the file system refuses into one line, is
`bertcls.atomic`'s.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from bertcls import __version__
from bertcls.atomic import check_folder_path, exchange, settle, write_json
from bertcls.errors import RunError, first_line
from bertcls.runlock import LOCK_FILE, check_not_in_use, pid_text, training_pid

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
REPORTS_DIR = "reports"
LOSS_FILE = "loss.png"
MANIFEST_FILE = "manifest.json"
TENSORBOARD_DIR = "tensorboard"
RUN_FILES = (CONFIG_FILE, LOG_FILE, MODEL_DIR, REPORTS_DIR, LOSS_FILE, MANIFEST_FILE, METRICS_FILE, TENSORBOARD_DIR)
RECORD_FILE = "bertcls-run.json"
TRIAL_PREFIX = "trial-"  # a search's trial-N/ run folders (bertcls.tune)
SEARCH_FILE = "tune.json"  # marks a search's folder (`bertcls.tune`), whose trials are run folders
OWN_FILES = (RECORD_FILE, LOCK_FILE)  # bertcls's in any folder that holds them
TORCHSCRIPT_FILE = "bertcls-torchscript.pt"  # in MODEL_DIR
CARD_FILE = "README.md"  # in MODEL_DIR
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_RNG = "rng-{}.pt"  # .format(process index)
CHECKPOINT_STATE = "state.json"
# Temporary names next to NAME, made by write_atomic, temp_dir_for and publish_dir.
TEMP_PATTERNS = (".{}.*.tmp", ".{}.tmp-*", ".{}.old-*")
DEFAULT_RUNS_ROOT = "runs"
# data.label_separator's default: what a multi-label row's labels are joined with in outputs, where a model says no other.
LABEL_JOIN = ";"
LABEL_SEPARATOR_KEY = "bertcls_label_separator"  # in a multi-label model's config.json: its run's data.label_separator
ONNX_META = "bertcls-onnx.json"  # what predict needs of an ONNX export besides the model; marks a folder `bertcls export` wrote
SECTIONS = ("data", "model", "training", "tune")  # a config's sections of keys; the rest (seed, output_dir) are values
MODEL_ENV = "BERTCLS_MODEL"


def publish_dir(tmp: Path, dest: Path) -> None:
    """Put a complete folder in place of `dest`: give its files open()'s permissions, fsync them, then
    rename; `dest` is never half-written. In a run folder (one with a record) the new files are
    recorded first, and files someone else put in the old `dest` are moved into the new one."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.is_symlink():  # made since the run folder was checked: moving it aside would carry its target's files in
        raise _link_error(dest)
    files = settle(tmp)
    run = dest.parent
    in_run = read_record(run) is not None
    if in_run:
        record_files(run, *(f"{dest.name}/{file.relative_to(tmp).as_posix()}" for file in files))
    old = run / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists() and exchange(tmp, dest):  # no moment without `dest`, for a reader or a kill -9
        os.replace(tmp, old)
    else:
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    if old.exists() and (not in_run or _carry_over(old, dest, run)):
        shutil.rmtree(old, ignore_errors=True)


def _carry_over(old: Path, dest: Path, run: Path) -> bool:
    """Move the files of `old` (the folder `dest` replaced) that bertcls did not write into `dest`;
    False if one could not be moved (its place is taken), so `old` must stay."""
    record = read_record(run)
    moved_all = True
    for path in _files_under(old):
        name = f"{dest.name}/{path.relative_to(old).as_posix()}"
        if name in record["files"] and not _edited(record, name, path):
            continue
        rel = path.relative_to(old)
        target = dest / rel
        if target.exists() or target.is_symlink():
            moved_all = False
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return moved_all


def _files_under(folder: Path) -> list[Path]:
    """Every file (and link) under `folder`, without following links."""
    return [Path(root) / name for root, dirs, files in os.walk(folder)
            for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]]


# ---------------------------------------------------------------------------- the record of what bertcls wrote

def read_record(run: Path) -> dict[str, Any] | None:
    """The run folder's record (RECORD_FILE), or None where there is none."""
    path = Path(run) / RECORD_FILE
    if not path.is_file():
        return None
    fix = "bertcls cannot tell its files from others' there: delete the folder by hand, or choose another output_dir"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable ({first_line(exc)}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        raise RunError(f"{path}: not a bertcls record of written files; {fix}")
    return record


def record_files(run: Path, *paths: str) -> None:
    """Add `paths` (relative to `run`, with /) to what bertcls wrote there; call before writing them.
    The first call makes `run` a run folder."""
    record = read_record(run)
    files = sorted(set(record["files"] if record else ()) | set(paths))
    if record is None or files != record["files"]:
        write_json(Path(run) / RECORD_FILE, {**(record or _new_record()), "files": files})


def record_editable(run: Path, path: str, content: bytes) -> None:
    """Record that bertcls writes `content` at `path`, a file users may edit: once they have, it is no
    longer bertcls's (`edited`), and nothing of bertcls's replaces or deletes it. Call before writing it."""
    record_files(run, path)
    record = read_record(run)
    digests = {**_digests(record), path: hashlib.sha256(content).hexdigest()}
    write_json(Path(run) / RECORD_FILE, {**record, "digests": digests})


def edited(run: Path, path: str) -> bool:
    """Whether the editable file `path`, recorded with `record_editable`, now holds something else."""
    return _edited(read_record(run), path, Path(run) / path)


def _edited(record: dict[str, Any] | None, path: str, file: Path) -> bool:
    """Whether `file`, found at the run's `path` (or moved from there), is an editable file of bertcls's
    that someone has changed."""
    digest = _digests(record).get(path)
    if digest is None or path not in record["files"] or not (file.exists() or file.is_symlink()):
        return False
    if file.is_symlink() or not file.is_file():  # a folder or a link in its place: someone else's
        return True
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest() != digest
    except OSError:
        return True  # unreadable: not provably ours


def _digests(record: dict[str, Any] | None) -> dict[str, str]:
    digests = (record or {}).get("digests")
    return digests if isinstance(digests, dict) else {}


def _new_record() -> dict[str, Any]:
    return {"written_by": f"bertcls {__version__}", "files": []}


def wrote(run: Path, name: str) -> bool:
    """Whether bertcls recorded writing `name` (a path relative to the run folder) in `run`."""
    return name in _recorded(Path(run))


def _recorded(run: Path) -> set[str]:
    """What bertcls wrote in `run` and may replace or delete: the record's files, less those edited since."""
    record = read_record(run)
    if not record:
        return set()
    return set(record["files"]) - {path for path in _digests(record) if edited(run, path)}


def remove_ours(run: Path, name: str) -> None:
    """Delete what bertcls wrote at RUN/name: the file, or the folder's recorded files (and their
    temporaries) and the folders they leave empty. Anything else there stays. No link is followed: a
    recorded file that became a link loses the link alone, and nothing below a linked folder is touched."""
    run = Path(run)
    ours = _recorded(run)
    target = run / name
    if any((run / folder).is_symlink() for folder in Path(name).parents[:-1]):  # [:-1]: all but "."
        return  # RUN/name lies behind a link, outside the run
    found = [target] if target.is_symlink() or target.is_file() else _files_under(target) if target.is_dir() else []
    for path in found:
        rel = path.relative_to(run).as_posix()
        if rel in ours or _is_temporary_of(rel, ours):
            path.unlink()
    if target.is_dir() and not target.is_symlink():
        for root, _, _ in sorted(os.walk(target), key=lambda walked: -len(walked[0])):  # deepest first
            try:
                os.rmdir(root)
            except OSError:  # not empty: someone else's files are in it
                pass
    gone = {f for f in ours if (f == name or f.startswith(f"{name}/")) and not (run / f).exists()}
    if gone:
        record = read_record(run)
        digests = {path: digest for path, digest in _digests(record).items() if path not in gone}
        write_json(run / RECORD_FILE, {**record, "files": sorted(set(record["files"]) - gone), **({"digests": digests} if digests else {})})


def _is_temporary_of(rel: str, ours: set[str]) -> bool:
    """Whether `rel` is atomic_file's temporary of a recorded file (`DIR/.NAME.*.tmp`)."""
    folder, _, name = rel.rpartition("/")
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return any(f.rpartition("/")[0] == folder and fnmatch.fnmatchcase(name, f".{f.rpartition('/')[2]}.*.tmp") for f in ours)


def record_best(run: Path, step: int) -> None:
    """Note that model/ now holds the best model, saved at optimizer `step`, with its weights' stamp."""
    record = read_record(run) or _new_record()
    write_json(Path(run) / RECORD_FILE, {**record, "best": {"step": step, "weights": weights_stamp(Path(run) / MODEL_DIR)}})


def best_model_step(run: Path) -> int | None:
    """The step model/ was saved at, if it is still the folder `record_best` noted; else None."""
    best = (read_record(run) or {}).get("best")
    folder = Path(run) / MODEL_DIR
    if not isinstance(best, dict) or not folder.is_dir() or not same_weights(folder, best.get("weights") or {}):
        return None
    return best.get("step")


def weights_stamp(folder: Path, digest: bool = True) -> dict[str, dict[str, Any]]:
    """Each weight file of a model folder: its size and mtime, and with `digest` its sha256."""
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


def checkpoints(run: Path, complete: bool = True) -> list[Path]:
    """The complete checkpoint folders of a run, oldest (lowest step) first; with `complete` False those without their
    CHECKPOINT_STATE instead (a file deleted or lost: written whole, a checkpoint always has one)."""
    found = []
    for path in Path(run).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name.removeprefix(CHECKPOINT_PREFIX)
        if step.isdigit() and path.is_dir() and not path.is_symlink() and (path / CHECKPOINT_STATE).is_file() == complete:
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def is_finished(run: Path) -> bool:
    return (Path(run) / METRICS_FILE).is_file() and (Path(run) / MODEL_DIR).is_dir()


def check_output_dir(run: Path, inputs: dict[str, str]) -> None:
    """Refuse, before anything is written, an output_dir that is a file, that is or holds an input of
    the run (`inputs`: the key naming it -> its path), that is a search's folder (`bertcls tune`), or that another
    bertcls train is writing to."""
    run = Path(run)
    check_folder_path(run, "output_dir")
    if (run / SEARCH_FILE).is_file():
        raise RunError(f"output_dir {run} is the folder of a bertcls tune search, which holds its trials; "
                       "choose another output_dir (bertcls tune continues a search)")
    here = Path(os.path.realpath(run))
    found: dict[str, list[str]] = {"is": [], "holds": []}
    for key, path in inputs.items():
        there = Path(os.path.realpath(path))
        if here == there or here in there.parents:
            found["is" if here == there else "holds"].append(f"{key} ({path})")
    clashes = " and ".join(f"{verb} {', '.join(named)}" for verb, named in found.items() if named)
    if clashes:
        raise RunError(f"output_dir {run} {clashes}; a run folder is for what bertcls writes (a fresh start or "
                       "--overwrite clears it), so choose another output_dir")
    check_not_in_use(run)


def check_run_dir(run: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse a run folder that is a file; that is not a bertcls run (someone's files, or a run by an
    older bertcls, which kept no record of what it wrote); that holds a finished run (unless
    `overwrite`); or an unfinished run with checkpoints, or a best model so far, that a fresh start would lose
    (unless `overwrite` or `resuming`)."""
    run = Path(run)
    check_folder_path(run, "output_dir")
    if not run.is_dir():
        return
    _check_ours(run)
    if is_finished(run) and not overwrite:
        raise RunError(f"output_dir {run} already holds a finished run; pass --overwrite or choose another output_dir")
    if overwrite or resuming:
        return
    found = checkpoints(run)
    if found:
        raise RunError(f"output_dir {run} holds an unfinished run ({found[-1].name}); "
                       "pass --resume to continue it, or --overwrite to start over")
    ours = _recorded(run)
    lost = [f"{name}/" if name == MODEL_DIR else name for name in (*(path.name for path in checkpoints(run, complete=False)), MODEL_DIR)
            if any(file.startswith(f"{name}/") and (run / file).is_file() for file in ours)]  # MODEL_DIR: the best model so far
    if lost:
        raise RunError(f"output_dir {run} holds an unfinished run with no checkpoint to resume from, and a fresh start would delete "
                       f"its {', '.join(lost)}; pass --overwrite to start over, or choose another output_dir")


def _check_ours(run: Path) -> None:
    """Refuse a non-empty folder without a record: bertcls cannot tell what there is its own. In a run
    folder, refuse a link where bertcls writes, at any depth (model/, reports/validation/, ...): writing
    through it would replace what it points to, outside the run, and replacing it would move or hide that."""
    if read_record(run) is not None:
        links = _links_where_we_write(run)
        if links:
            raise _link_error(links[0])
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in run.iterdir() if not _is_own_name(p.name))
    if not entries:
        return
    names = {entry.rstrip("/") for entry in entries}
    if {CONFIG_FILE, LOG_FILE} <= names and all(_is_run_name(name) for name in names):
        raise RunError(f"output_dir {run} looks like a run by an older bertcls, which kept no record of the files it wrote, "
                       "so this one will neither delete nor add to them; delete the folder by hand, or choose another output_dir")
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise RunError(f"output_dir {run} is not empty and not a bertcls run (it holds {shown}); choose a new or empty output_dir")


def _links_where_we_write(run: Path) -> list[Path]:
    """The links at or below the names a run writes in `run` (`_is_run_name`), found without following any."""
    links = []
    for top in sorted(path for path in run.iterdir() if _is_run_name(path.name)):
        if top.is_symlink():
            links.append(top)
        elif top.is_dir():
            for root, dirs, files in os.walk(top):  # a link to a folder is listed in `dirs`, never entered
                links += [Path(root) / name for name in sorted(dirs + files) if (Path(root) / name).is_symlink()]
    return links


def _link_error(link: Path) -> RunError:
    return RunError(f"{link} is a link (to {os.readlink(link)}), which bertcls did not write and will not replace; "
                    "remove the link, or choose another output_dir")


def _is_own_name(name: str) -> bool:
    return name in OWN_FILES or fnmatch.fnmatchcase(name, TEMP_PATTERNS[0].format(RECORD_FILE))


def _is_run_name(name: str) -> bool:
    """A name a run writes in its folder, or one of their temporaries."""
    names = (*RUN_FILES, f"{CHECKPOINT_PREFIX}*")
    return any(fnmatch.fnmatchcase(name, pattern.format(n)) for n in names for pattern in ("{}", *TEMP_PATTERNS))


def prepare_run_dir(run: Path, overwrite: bool, resuming: bool = False) -> None:
    """Under the run folder's lock (`runlock.locked`), check it again (`check_run_dir`), deal with what a
    killed run left, remove the previous run on a fresh start, and record the files every run writes.

    Only what bertcls recorded writing is removed; anything else stays.
    """
    run = Path(run)
    check_run_dir(run, overwrite, resuming)
    run.mkdir(parents=True, exist_ok=True)
    remove_ours(run, METRICS_FILE)  # first, so a crash below leaves an unfinished run
    _clear_leftovers(run, resuming)
    for name in [] if resuming else [*RUN_FILES, *(path.name for path in checkpoints(run) + checkpoints(run, complete=False))]:
        remove_ours(run, name)
    record_files(run, CONFIG_FILE, LOG_FILE, METRICS_FILE)  # the others as they are written, if they are


def _clear_leftovers(run: Path, resuming: bool) -> None:
    """What a killed run left: half-written `.NAME.*.tmp` files and `.NAME.tmp-*` folders go. A
    `.NAME.old-*` folder (killed between publish_dir's two renames) is put back when resuming and NAME
    is gone; else the files in it that bertcls did not write go back into NAME, and the rest goes."""
    names = (*RUN_FILES, RECORD_FILE, f"{CHECKPOINT_PREFIX}*")
    for moved in [path for name in names for path in run.glob(TEMP_PATTERNS[2].format(name))]:
        original = run / moved.name[1:].rsplit(".old-", 1)[0]
        if not moved.is_dir() or moved.is_symlink():
            moved.unlink()
        elif resuming and not original.exists() and (original.name == MODEL_DIR or original.name.startswith(CHECKPOINT_PREFIX)):
            os.replace(moved, original)
        elif _carry_over(moved, original, run):
            shutil.rmtree(moved)
    for half in [path for name in names for pattern in TEMP_PATTERNS[:2] for path in run.glob(pattern.format(name))]:
        if half.is_dir() and not half.is_symlink():
            shutil.rmtree(half)
        else:
            half.unlink()
    for recorded in _recorded(run):  # a recorded file's own temporary, in model/ or reports/ (a graph's: the model's size)
        folder, _, name = recorded.rpartition("/")
        if folder and not any((run / part).is_symlink() for part in (folder, *map(str, Path(folder).parents[:-1]))):
            for half in (run / folder).glob(TEMP_PATTERNS[0].format(glob.escape(name))):
                if half.is_file() and not half.is_symlink():
                    half.unlink()


def check_outside_runs(output: Path, model: Path, suffix: str) -> None:
    """Refuse an --output folder (of `evaluate`, `export`) that is or lies in a run folder, whose files are training's
    (model/ is what `bertcls push` uploads, a checkpoint what --resume reads), or in the model folder `model`. The
    example folder offered is `suffix`/RUN, or RUN-`suffix` beside the run from inside it."""
    if found := run_above(output):
        run, place = found
        shown = as_given(output, run, place)
        where = "a bertcls run folder" if place == "." else f"inside the bertcls run folder {shown}"
        example = Path(suffix) / shown.name
        if run_above(example):  # we are inside the run: a sibling of it, then
            example = shown.parent / f"{shown.name}-{suffix}"
        raise RunError(f"--output {output} is {where}, which holds what training wrote; choose a folder outside the run, "
                       f"e.g. {example}")
    real = Path(os.path.realpath(output))
    if in_model_folder(real, model):  # a plain model folder, or an export: no run around it to find
        where = "the model folder" if real == Path(os.path.realpath(model)) else "inside the model folder"
        raise RunError(f"--output {output} is {where} {model}; choose a folder outside it")


def run_above(path: Path) -> tuple[Path, str] | None:
    """The bertcls run folder that `path` is or lies in (links followed), and `path`'s place in it ("." for the run
    itself); None outside every run. A run folder holds bertcls's record of its files (a search's folder, which
    holds its trials, is not one) or, written by an older bertcls, config.yaml, log.jsonl and model/."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if is_run(folder):
            return folder, real.relative_to(folder).as_posix()
    return None


def as_given(given: Path, folder: Path, place: str) -> Path:
    """`folder` (a resolved path) as the user named it: the folder `place` levels above `given` when that is it
    (`runs/x` for `runs/x/model`), else `folder` itself (the user named it through a link, or from inside it)."""
    depth = 0 if place == "." else len(place.split("/"))
    if depth > len(given.parents):
        return folder
    named = given.parents[depth - 1] if depth else given
    return named if named != Path(".") and os.path.realpath(named) == str(folder) else folder


def is_run(folder: Path) -> bool:
    """Whether `folder` is a bertcls run folder: one with a run record (not a search's), or as an older bertcls left it."""
    if (folder / RECORD_FILE).is_file():
        return not (folder / SEARCH_FILE).is_file()
    return all((folder / name).is_file() for name in (CONFIG_FILE, LOG_FILE)) and (folder / MODEL_DIR).is_dir()


def in_model_folder(real: Path, model: str | Path | None) -> bool:
    """Whether `real` (a path with its links resolved) is the model folder `model` (one with config.json: a plain model
    folder, a run's model/ or an export) or lies in it."""
    if model is None or not (Path(model) / "config.json").is_file():
        return False
    folder = Path(os.path.realpath(model))
    # samefile too: on a case-insensitive file system (macOS, Windows) RUN/MODEL is RUN/model, though no path says so
    return any(place == folder or (place.exists() and os.path.samefile(place, folder)) for place in (real, *real.parents))


def run_file(path: Path) -> tuple[Path, str] | None:
    """(the folder, `path`'s name there) when `path` (links resolved) is a file bertcls keeps in a folder of its own:
    in a run, one of the names the run writes (RUN_FILES, its checkpoints, bertcls's own files) or anything
    under them, whether written yet or not; in a run's or a search's folder, a file its record lists. Names compare
    without case, as a case-insensitive file system (macOS, Windows) would: there LOG.JSONL is log.jsonl."""
    for folder in path.parents:
        name = path.relative_to(folder).as_posix()
        top = name.split("/")[0].casefold()
        if is_run(folder) and (top in {own.casefold() for own in (*RUN_FILES, *OWN_FILES)} or top.startswith(CHECKPOINT_PREFIX)):
            return folder, name
        if (folder / SEARCH_FILE).is_file() and top.startswith(TRIAL_PREFIX):  # a trial's run folder, or one to come
            return folder, name
        if (folder / RECORD_FILE).is_file() and name.casefold() in {listed.casefold() for listed in _listed(folder)}:
            return folder, name
    return None


def _listed(folder: Path) -> set[str]:
    try:
        return set(read_record(folder)["files"])
    except RunError:  # a damaged record lists nothing we can trust, and is no reason to refuse here
        return set()


def check_evaluation_output(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse an `evaluate --output` folder that is a run folder (evaluate would replace the run's
    metrics.json) or that already holds one of the files `names` evaluate writes."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--output {folder} is a file; choose a folder")
    if read_record(folder) is not None or ((folder / CONFIG_FILE).is_file() and (folder / LOG_FILE).is_file()):
        kind, wrote = ("search", "bertcls tune") if (folder / SEARCH_FILE).is_file() else ("run", "training")
        raise RunError(f"--output {folder} is a bertcls {kind} folder, which holds what {wrote} wrote; choose a folder outside "
                       f"the {kind}, e.g. {Path('eval') / folder.name}")
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise RunError(f"--output {folder} already holds {', '.join(taken)}; evaluate replaces no file there, so choose a new or empty folder")


def model_note(path: Path) -> str | None:
    """For a run folder (or its model/) that a bertcls train is still writing, or whose train stopped before the
    end (killed, Ctrl-C, a crash): a note that its model is the best so far, not the run's final choice."""
    path = Path(path)
    for run in (path, path.parent) if path.name == MODEL_DIR else (path,):
        if not (run / MODEL_DIR / "config.json").is_file():
            continue
        pid = training_pid(run)
        if pid is not None:
            return f"note: {run} is still training ({pid_text(pid)}); using its best model so far"
        if (run / RECORD_FILE).is_file() and not (run / METRICS_FILE).is_file():  # a run's; never raises over a damaged record
            finish = "bertcls train CONFIG --resume finishes it" if checkpoints(run) else "it has no checkpoint to resume from"
            return f"note: {run} did not finish (it has no {METRICS_FILE}); using its best model so far ({finish})"
    return None


def model_dir(path: str | Path, given_by: str = "--model") -> Path:
    """The model folder of a run folder, or `path` itself when it is a model folder; `given_by` names where
    `path` came from, for the error."""
    path = Path(path)
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    if (path / "config.json").is_file():
        return path
    fix = "give a run or model folder" if given_by == "--model" else f"set {given_by} to a run or model folder, or pass --model"
    if not path.exists():
        raise RunError(f"{given_by} {path}: no such folder; {fix}")
    pid = training_pid(path)
    if pid is not None:
        raise RunError(f"{given_by} {path} is still training ({pid_text(pid)}) and has saved no model yet; wait for its first "
                       "evaluation, or give another run")
    if (path / SEARCH_FILE).is_file():  # `bertcls tune`'s folder: its runs are the trials
        raise RunError(f"{given_by} {path} is a search (bertcls tune), not a run; give one of its runs: {path / 'best'} once trained "
                       f"from best.yaml, or a trial-N folder (bertcls runs {path} lists them)")
    if (path / RECORD_FILE).is_file():
        if (path / METRICS_FILE).is_file():  # finished: e.g. a search's losing trial (tune --keep best)
            raise RunError(f"{given_by} {path} is a finished run whose {MODEL_DIR}/ was removed (bertcls tune --keep best removes "
                           "the losing trials' models); give another run, or train it again")
        raise RunError(f"{given_by} {path} is a run that has saved no model yet (it stopped before its first evaluation); "
                       f"train it ({how_to_finish(path)}), or give another run")
    raise RunError(f"{given_by} {path}: neither a finished run folder (with {MODEL_DIR}/) nor a model folder (with config.json); {fix}")


def how_to_finish(run: Path) -> str:
    """The command that finishes an unfinished run: resume from its checkpoint, or train again where it has none."""
    return "bertcls train CONFIG --resume" if checkpoints(run) else "bertcls train CONFIG"


def find_model(given: str | Path | None) -> tuple[Path, str]:
    """The model to use, and why: --model, else $BERTCLS_MODEL, else the newest finished run under ./runs."""
    if given:
        return Path(given), "--model"
    if os.environ.get(MODEL_ENV):
        path = Path(os.environ[MODEL_ENV])
        model_dir(path, f"${MODEL_ENV}")  # checked here, where it is known that the variable named it, not --model
        return path, f"${MODEL_ENV}"
    root = Path(DEFAULT_RUNS_ROOT)
    runs = [p for p in root.glob("**/") if is_finished(p)] if root.is_dir() else []
    if not runs:
        raise RunError(f"no model given and no finished run under ./{DEFAULT_RUNS_ROOT}; pass --model RUN_DIR or set ${MODEL_ENV}")
    newest = max(runs, key=lambda p: (p / METRICS_FILE).stat().st_mtime)
    return newest, f"newest finished run under ./{DEFAULT_RUNS_ROOT}"


# How a run reads its data files when none is said: the config's defaults (bertcls.config.DataConfig).
DEFAULT_COLUMNS = {"text_column": "text", "text_pair_column": None, "label_column": "label", "label_separator": LABEL_JOIN}


def run_columns(path: str | Path, **given: str | None) -> dict[str, str | None]:
    """The column mapping to read a file for the run (or model folder) at `path`: each of DEFAULT_COLUMNS
    as `given` (a command-line option), else as the run was trained, else the default."""
    saved = run_setting(path, "data") or {}
    where = f"{config_folder(Path(path)) / CONFIG_FILE}: its data.label_separator"
    if "label_separator" not in saved:  # a model folder without its run (copied, pushed, exported): as its config.json says
        with suppress(RunError, OSError, ValueError, AttributeError):
            kept = json.loads((model_dir(path) / "config.json").read_text(encoding="utf-8"))
            if LABEL_SEPARATOR_KEY in kept:
                saved, where = {**saved, "label_separator": kept[LABEL_SEPARATOR_KEY]}, f"{model_dir(path) / 'config.json'}: its {LABEL_SEPARATOR_KEY}"
    separator = saved.get("label_separator", LABEL_JOIN)
    if not (isinstance(separator, str) and separator and "\n" not in separator and "\r" not in separator):
        raise RunError(f"{where} ({separator!r}) is no separator of a row's labels (a text on one line); set the one the "
                       "model was trained with")
    return {key: given.get(key) or saved.get(key, default) for key, default in DEFAULT_COLUMNS.items()}


def run_setting(path: str | Path, section: str, key: str | None = None, default: Any = None) -> Any:
    """One section (or one key of it) of the resolved config of the run at `path` (a run, its export, or the run above
    a run's model/ folder); `default` for a plain model folder."""
    folder = config_folder(Path(path))
    values = (read_run_config(folder) or {}).get(section) or {}
    return values if key is None else values.get(key, default)


def config_folder(path: Path) -> Path:
    """The folder whose config.yaml says how the model at `path` was trained: `path`, or for a run's model/ folder the
    run above it (a folder named model/ elsewhere is a plain model folder)."""
    if not (path / CONFIG_FILE).is_file():
        real = path.resolve()  # `.` inside model/, or a link to it, is named otherwise
        if real.name == MODEL_DIR and (real.parent / RECORD_FILE).is_file():
            return real.parent
    return path


def read_run_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved config as a dict, each of its sections a mapping; None for a plain model folder."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    import yaml

    restore = "export the run again" if (Path(path) / ONNX_META).is_file() else "restore the file the run was trained with, or train again"
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunError(f"{file}: cannot read it ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise RunError(f"{file}: not UTF-8 text (byte {exc.start}); {restore}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise RunError(f"{where}: invalid YAML: {problem}; {restore}") from None
    if config is not None and not isinstance(config, dict):
        raise RunError(f"{file}: holds a {type(config).__name__}, not the run's config (a mapping of sections); {restore}")
    for section in SECTIONS:
        if (config or {}).get(section) is not None and not isinstance(config[section], dict):
            raise RunError(f"{file}: its {section} section is not a mapping of keys to values; {restore}")
    # bertcls writes every section: one missing (a file emptied or cut short at a line) would silently drop the run's
    # columns, pairs rule and label separator
    missing = [section for section in ("data", "model") if (config or {}).get(section) is None]
    if missing:
        raise RunError(f"{file}: incomplete (no {' or '.join(missing)} section), not the config bertcls wrote; {restore}")
    return config
