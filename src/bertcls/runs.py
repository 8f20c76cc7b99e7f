"""The run folder: its file names, atomic writes, and finding a run to predict with.

    RUN/config.yaml     the resolved config the run was trained with
    RUN/log.jsonl       one JSON object per training log line and per evaluation
    RUN/model/          the best checkpoint: save_pretrained output (safetensors) + tokenizer
    RUN/reports/        validation/ and test/: predictions.csv and figures (see bertcls.report)
    RUN/loss.png        training and validation loss (training.loss_curve)
    RUN/metrics.json    validation (best checkpoint) and test metrics; written last, so a
                        folder without it is an unfinished run
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bertcls.errors import RunError

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
REPORTS_DIR = "reports"
LOSS_FILE = "loss.png"
RUN_FILES = (CONFIG_FILE, LOG_FILE, MODEL_DIR, REPORTS_DIR, LOSS_FILE, METRICS_FILE)
DEFAULT_RUNS_ROOT = "runs"
MODEL_ENV = "BERTCLS_MODEL"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file (text or bytes) whole or not at all: temp file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def is_finished(run: Path) -> bool:
    return (Path(run) / METRICS_FILE).is_file() and (Path(run) / MODEL_DIR).is_dir()


def check_run_dir(run: Path, overwrite: bool) -> None:
    """Refuse a file, or a finished run unless `overwrite`; reads only, so every process may call it."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise RunError(f"output_dir {run} is a file; choose a folder")
    if is_finished(run) and not overwrite:
        raise RunError(f"output_dir {run} already holds a finished run; pass --overwrite or choose another output_dir")


def prepare_run_dir(run: Path, overwrite: bool) -> None:
    """Create the run folder; refuse to replace a finished run unless `overwrite`.

    With `overwrite`, only the files bertcls writes are removed; anything else stays.
    """
    run = Path(run)
    check_run_dir(run, overwrite)
    run.mkdir(parents=True, exist_ok=True)
    if overwrite:
        import shutil

        (run / METRICS_FILE).unlink(missing_ok=True)  # first, so a crash below leaves an unfinished run
        for name in RUN_FILES:
            target = run / name
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
