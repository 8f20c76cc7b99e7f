"""Comparing runs: a folder of run folders in; one row per run out, sorted, as a table or as JSON.

A row says whether the run finished, is running (its lock is held), or stopped, and where (its newest
checkpoint, else its last logged step); its model, best epoch, headline validation and test metrics,
train time and date. A folder that is not a run, or a run whose files cannot be read, is a row that
says so: listing never fails over one folder.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from bertcls import manifest, runs
from bertcls.errors import BertclsError, RunError, UsageError, clipped, first_line
from bertcls.runlock import pid_text, training_pid

LOWER_IS_BETTER = {"loss", "ece", "hamming_loss"}
SORT_KEYS = ("name", "date")  # besides any metric: validation's by its key, test's as test.KEY
DEFAULT_METRIC = "f1_macro"  # bertcls's default training.metric_for_best
DETAIL_SHOWN = 60  # characters of a status's detail in the table; --json gives it whole


@dataclass
class Row:
    """One run folder, as `bertcls runs` shows it (and `--json` gives it)."""

    name: str
    path: str
    status: str  # finished | running | unfinished | search | corrupt | not a run
    detail: str = ""  # where it stopped, or what is wrong
    model: str | None = None
    metric_for_best: str | None = None
    best_epoch: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # the scalar metrics
    test: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None
    date: str | None = None  # ISO 8601 UTC: when it finished, else when it last wrote

    def value(self, key: str) -> Any:
        """The value `--sort` sorts by: name, date, a validation metric (KEY) or a test one (test.KEY)."""
        if key in SORT_KEYS:
            return getattr(self, key)
        split, _, metric = key.rpartition(".")
        value = (self.test if split == "test" else self.validation).get(metric)
        # NaN or inf (a hand-edited or foreign metrics.json) sorts with the missing: NaN compares false both ways
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def list_runs(folder: Path) -> list[Row]:
    """A row for each run under `folder` (its immediate subfolders, hidden ones aside), or for `folder` itself when it
    is a run; in a search's folder (`bertcls tune`), a row for each trial and run it holds."""
    folder = Path(folder)
    if not folder.exists():
        raise RunError(f"{folder}: no such folder; give the folder your runs are in (default ./{runs.DEFAULT_RUNS_ROOT})")
    if not folder.is_dir():
        raise RunError(f"{folder} is a file; give the folder your runs are in")
    search = (folder / runs.SEARCH_FILE).is_file()
    if (folder / runs.RECORD_FILE).is_file() and not search:  # a run folder itself: its one row
        return [read_row(folder)]
    return [read_row(path) for path in sorted(folder.iterdir())
            if path.is_dir() and not path.name.startswith(".") and (_looks_like_run(path) or not search)]


def _looks_like_run(path: Path) -> bool:
    """A run folder, or a search's; an export folder (its copy of config.yaml) is neither."""
    return ((path / runs.RECORD_FILE).is_file() or (path / runs.CONFIG_FILE).is_file()) and not (path / runs.ONNX_META).is_file()


def read_row(path: Path) -> Row:
    """What one folder is, read from its files; never raises over what is in them."""
    row = Row(name=path.name, path=str(path), status="not a run", detail=f"no {runs.RECORD_FILE} or {runs.CONFIG_FILE}")
    if (path / runs.ONNX_META).is_file():
        row.status, row.detail, row.date = "export", f"an ONNX export (bertcls export); bertcls predict -m {path}", _modified(path)
        return row
    if not _looks_like_run(path):
        return row
    if (path / runs.SEARCH_FILE).is_file():  # a search (bertcls tune): its runs are the trials in it
        trials = sum(1 for child in path.iterdir() if child.is_dir() and _looks_like_run(child))
        row.status, row.detail, row.date = "search", f"{trials} run(s) in it; bertcls runs {path} lists them", _modified(path)
        return row
    try:
        runs.read_record(path)
        config = runs.read_run_config(path) or {}
    except BertclsError as exc:  # the message up to its fix, naming the file within the run
        return _corrupt(row, str(exc).split(";")[0].removeprefix(f"{path}{os.sep}"), path)
    row.model = _model_name(config)
    row.metric_for_best = _name((config.get("training") or {}).get("metric_for_best")) or DEFAULT_METRIC
    pid = training_pid(path)
    if pid is not None:
        step = last_logged_step(path)
        row.status, row.detail = "running", f"step {step}, {pid_text(pid)}" if step is not None else pid_text(pid)
        row.date = _modified(path)
        return row
    if not (path / runs.METRICS_FILE).exists():
        row.status, row.detail, row.date = "unfinished", stopped_at(path), _modified(path)
        return row
    try:
        return _finished(row, path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return _corrupt(row, f"{runs.METRICS_FILE} unreadable: {first_line(exc)}", path)


def _corrupt(row: Row, why: str, path: Path) -> Row:
    row.status, row.detail, row.date = "corrupt", why, _modified(path)
    return row


def _model_name(config: dict[str, Any]) -> str | None:
    """The model a run fine-tuned: a hub id or `tiny` as it is, a local folder by its name."""
    name = (config.get("model") or {}).get("name") if isinstance(config.get("model"), dict) else None
    if not isinstance(name, str):
        return None
    return Path(name).name if Path(name).is_absolute() else name


def _finished(row: Row, path: Path) -> Row:
    metrics = json.loads((path / runs.METRICS_FILE).read_text(encoding="utf-8"))
    row.validation = _scalars(metrics["validation"])
    row.test = _scalars(metrics.get("test") or {})
    row.best_epoch = metrics.get("best_epoch")
    row.metric_for_best = _name(metrics.get("metric_for_best")) or row.metric_for_best
    row.train_seconds = (metrics.get("train") or {}).get("seconds")
    row.status, row.detail = "finished", ""
    ended = (manifest.read_manifest(path) or {}).get("ended")
    row.date = ended if isinstance(ended, str) else _modified(path / runs.METRICS_FILE)
    return row


def _name(value: Any) -> str | None:
    """A metric's name as a run's files give it; None for anything that is not one (a list, a number)."""
    return value if isinstance(value, str) and value else None


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if not isinstance(value, (dict, list))}


def stopped_at(path: Path) -> str:
    """Where an unfinished run stopped: its newest checkpoint (where a resume starts), else its last logged step."""
    kept = runs.checkpoints(path)
    if kept:
        return f"stopped at {kept[-1].name}"
    step = last_logged_step(path)
    return f"stopped at step {step}, no checkpoint" if step is not None else "stopped before its first logged step"


def last_logged_step(path: Path) -> int | None:
    """The step of the last readable line of log.jsonl (a killed run may have cut the last one short)."""
    try:
        lines = (path / runs.LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _modified(path: Path) -> str | None:
    """When `path` (a folder: its newest entry) last changed, ISO 8601 UTC."""
    try:
        times = [path.stat().st_mtime, *(entry.stat().st_mtime for entry in path.iterdir())] if path.is_dir() else [path.stat().st_mtime]
    except OSError:
        return None
    return datetime.fromtimestamp(max(times), timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- sorting and showing

def default_metric(rows: list[Row]) -> str:
    """The metric most finished runs were chosen on (metric_for_best), bertcls's default when none finished."""
    counted = Counter(row.metric_for_best for row in rows if row.status == "finished" and row.metric_for_best)
    return counted.most_common(1)[0][0] if counted else DEFAULT_METRIC


def check_sort_key(rows: list[Row], key: str) -> None:
    """Refuse a --sort metric that no run has, listing those there are."""
    if key not in SORT_KEYS and rows and all(row.value(key) is None for row in rows):
        not_metrics = {"num_examples", "threshold"}  # a count and a tuned setting
        known = sorted({k for row in rows for k in row.validation if row.value(k) is not None} - not_metrics)
        raise UsageError(f"--sort {key}: no run has this metric; use name, date, a metric ({', '.join(known) or 'none yet'}) "
                         "or test.METRIC")


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    """Best first for a metric (lowest for a loss), newest first for date, A-Z for name; rows without the value
    last, by name."""
    metric = key.rpartition(".")[2]
    descending = key == "date" or (key != "name" and metric not in LOWER_IS_BETTER)
    having = sorted((row for row in rows if row.value(key) is not None), key=lambda row: row.name)
    having.sort(key=lambda row: row.value(key), reverse=descending)  # stable: equal values stay in name order
    return having + sorted((row for row in rows if row.value(key) is None), key=lambda row: row.name)


def rows_json(rows: list[Row]) -> str:
    """The rows as strict JSON: a NaN or infinite number someone wrote into a run's files is null."""
    return json.dumps(_finite([asdict(row) for row in rows]), indent=2, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def print_table(rows: list[Row], metric: str, file: IO[str] | None = None) -> None:
    """An aligned table: the headline `metric` (and accuracy) on validation and test, and the rest."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, markup=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 10_000  # a pipe or a file gets whole lines, never cells wrapped at 80 columns
    metric = metric.rpartition(".")[2]
    shown = [metric] if metric == "accuracy" else [metric, "accuracy"]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for title in ("run", "status", "model", "best epoch", *(f"{split} {m}" for split in ("val", "test") for m in shown),
                  "train time", "date"):
        table.add_column(title, justify="right" if title.startswith(("val ", "test ", "best", "train")) else "left")
    for row in rows:
        status = f"{row.status} ({clipped(row.detail, DETAIL_SHOWN)})" if row.detail else row.status
        table.add_row(row.name, status, row.model or "-", "-" if row.best_epoch is None else str(row.best_epoch),
                      *(_score(scores.get(m)) for scores in (row.validation, row.test) for m in shown),
                      _duration(row.train_seconds), _local_date(row.date))
    console.print(table)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _local_date(stamp: str | None) -> str:
    """An ISO stamp in the local time zone, to the minute."""
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M") if stamp else "-"
    except ValueError:
        return "-"
