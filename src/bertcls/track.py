"""Experiment trackers: training.report_to in; the run's config, log lines, evaluations and final metrics out,
through Accelerate's trackers (`Accelerator(log_with=...)`, `init_trackers`, `log`, `end_training`).

    tensorboard   event files in RUN/tensorboard/, recorded in the run's record like every file bertcls writes;
                  a resumed run writes on in the same folder, and what a killed run logged after its
                  checkpoint is hidden (TensorBoard's purge_step)
    mlflow        to $MLFLOW_TRACKING_URI, else MLflow's default (mlflow.db and mlruns/ in the current folder: a
                  warning says so, as it does for a database URI's artifacts in ./mlruns),
                  experiment "bertcls" ($MLFLOW_EXPERIMENT_NAME), run named after the run folder; the reports,
                  loss.png and metrics.json as artifacts. Each checkpoint keeps the run id: a resumed run logs on
                  to the same MLflow run
    others        (wandb, comet_ml, aim, clearml, dvclive) project "bertcls", and their own settings

Names: train/loss, train/lr, train/examples_per_s at each log line; validation/<metric> at each evaluation;
test/<metric> at the end; each at its optimizer step. Only the main process logs.

A tracker that is not installed, or cannot start, is a one-line ConfigError before training; one that fails
later is a warning, once, and the run goes on without it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, MLflowTracker, TensorBoardTracker, on_main_process
from accelerate.utils import imports as accelerate_imports

from bertcls import atomic, distributed, runs
from bertcls import checkpoint as ckpt
from bertcls.callbacks import Callback
from bertcls.checkpoint import LoopState
from bertcls.config import Config, dotted
from bertcls.errors import BertclsWarning, ConfigError, Interrupted, first_line
from bertcls.evaluate import scalars

PROJECT = "bertcls"  # MLflow's experiment, the other trackers' project
# What to check when a tracker cannot start, beyond its own words.
# While the trackers start, MLflow asks its server twice, each time for at most 20 s, where by default it asks 8 times
# with a growing backoff (4.5 minutes of silence before a down server's error); during training its own patience
# stands. A user's own setting of either is kept.
MLFLOW_AT_START = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
START_HINTS = {"mlflow": "check $MLFLOW_TRACKING_URI and that its server is up", "wandb": "run `wandb login`, or set WANDB_MODE=offline"}


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose package is missing, before anything is written (Accelerate would skip it without a word)."""
    for name in names:
        if not getattr(accelerate_imports, f"is_{name}_available")():  # how Accelerate decides
            raise ConfigError(f"training.report_to: {name} is not installed; pip install {name}, or remove it from training.report_to")


class Tracking(Callback):
    """The run's trackers as one Callback: `trackers` go to the Accelerator (log_with) when it is made;
    `on_start` starts them; each log line, evaluation and the final metrics are logged at their step."""

    def __init__(self, config: Config, resume_from: Path | None) -> None:
        if "mlflow" in config.training.report_to:  # read when mlflow is imported: its INFO lines (database migrations) are noise here
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        saved = ckpt.read_state(resume_from) if resume_from else {}
        before, step = saved.get("trackers") or {}, saved.get("global_step", 0)
        self.run, self.hparams, self.job = Path(config.output_dir), hyperparameters(config.to_dict()), None
        self.trackers = [Guarded(_make(name, self.run, before.get(name), step), continues=name in before)
                         for name in config.training.report_to]

    def on_start(self, job) -> None:
        """Start the trackers on the main process (every process learns whether they could), say where each
        logs, and note their runs in the loop state: a checkpoint then resumes into the same runs."""
        self.job = job
        if not self.trackers:
            job.state.trackers = {}
            return
        started = None
        if job.main:
            try:
                started = self._start(job.accelerator)
            except ConfigError as exc:
                started = str(exc)
        started = distributed.from_main(started, job.accelerator)
        if isinstance(started, str):
            raise ConfigError(started)
        job.state.trackers = started
        if job.main:
            for tracker in self.trackers:
                if tracker.writes_locally_outside(self.run):  # MLflow's default store, or its artifacts, in the current folder: never silently
                    warnings.warn(tracker.where(self.run), BertclsWarning, stacklevel=2)
                else:
                    job.log.say(tracker.where(self.run))

    def _start(self, accelerator) -> dict[str, str]:
        folder = self.run / runs.TENSORBOARD_DIR
        before = _files(folder)
        added = {key: value for key, value in MLFLOW_AT_START.items() if key not in os.environ}
        os.environ.update(added)
        try:
            accelerator.init_trackers(PROJECT, config=self.hparams)
        finally:
            for key in added:
                os.environ.pop(key, None)
            # TensorBoard names its files by time, host and pid, and makes them all at start: recorded right after,
            # also where another tracker then failed to start (a fresh start or --overwrite removes them).
            runs.record_files(self.run, *sorted(f"{runs.TENSORBOARD_DIR}/{name}" for name in _files(folder) - before))
        return {tracker.name: tracker.run_id() for tracker in self.trackers}

    def on_log(self, record: dict[str, Any]) -> None:
        self._log({f"train/{key}": record[key] for key in ("loss", "lr", "examples_per_s")}, record["step"])

    def on_evaluate(self, state: LoopState, metrics: dict[str, Any]) -> bool:
        self._log(numbers("validation", metrics), state.global_step)
        return False

    def on_end(self, result: dict[str, Any]) -> None:
        if "test" in result:
            self._log(numbers("test", result["test"]), self.job.state.global_step)
        for tracker in self.trackers:
            if tracker.name == "mlflow":
                tracker.attach(self.run, result)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.trackers:
            self.job.accelerator.log(values, step=step)  # the main process's trackers only

    def close(self, exc_type, exc, traceback) -> None:
        """For the run's ExitStack: after an error or a stop, end the trackers' runs (a finished run ended them in `end_training`)."""
        if exc_type is not None:
            stopped = issubclass(exc_type, (Interrupted, KeyboardInterrupt))
            for tracker in self.trackers:
                tracker.abort("KILLED" if stopped else "FAILED")


class Guarded(GeneralTracker):
    """One of Accelerate's trackers, called as Accelerate calls it (on the main process only), that never
    costs the run: once it has started, its first failure is a warning, after which it logs nothing more."""

    requires_logging_directory = False  # the tracker inside was given its folder when made

    def __init__(self, inner: GeneralTracker, continues: bool) -> None:
        self.inner, self.name, self.continues = inner, inner.name, continues
        self.started = self.failed = self.finished = False
        super().__init__()

    @property
    def tracker(self):
        return self.inner.tracker

    @on_main_process
    def start(self) -> None:
        try:
            self.inner.start()
        except Exception as exc:  # a server that does not answer, a bad URI, a refused login: each library its own error
            why, hint = first_line(exc), START_HINTS.get(self.name, "check its settings")
            if self.name == "mlflow" and "MLFLOW_ALLOW_FILE_STORE" in str(exc):  # its message names the fix past our cut
                why = "MLflow writes to a folder (a file: tracking URI) only when MLFLOW_ALLOW_FILE_STORE=true is set"
                hint = "set MLFLOW_TRACKING_URI to a database such as sqlite:///mlflow.db, or MLFLOW_ALLOW_FILE_STORE=true"
            elif self.name == "mlflow" and "already exists" in str(exc):  # deleted, it keeps its name until removed for good
                name = getattr(self.inner, "experiment_name", PROJECT)
                why = f"its experiment {name!r} was deleted, and a deleted experiment keeps its name"
                hint = ("restore it (mlflow experiments restore), remove it for good (mlflow gc), or set $MLFLOW_EXPERIMENT_NAME "
                        "to another name")
            raise ConfigError(f"training.report_to: {self.name} could not start ({why}); {hint}, or remove it from "
                              "training.report_to") from exc
        self.started = True

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        if self.continues:  # a resumed tracker run has them already (and MLflow refuses a parameter that changed)
            return
        try:
            self.inner.store_init_configuration(values)
        except Exception as exc:
            raise ConfigError(f"training.report_to: {self.name} refused the config as hyperparameters ({first_line(exc)}); "
                              "remove it from training.report_to") from exc

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs) -> None:
        self._safely(self.inner.log, values, step=step, **kwargs)

    @on_main_process
    def finish(self) -> None:
        self._safely(self.inner.finish)
        self.finished = True

    def abort(self, status: str) -> None:
        """End the tracker's run early; MLflow's with `status` (KILLED: resumable; FAILED)."""
        if self.started and not self.finished:
            if self.name == "mlflow":
                import mlflow  # installed: the tracker started

                self._safely(mlflow.end_run, status)
            else:
                self._safely(self.inner.finish)
            self.finished = True

    def run_id(self) -> str:
        """What a resume needs to log on to this tracker's run: MLflow's run id; TensorBoard's folder; else nothing."""
        if self.name == "mlflow":
            return self.inner.active_run.info.run_id
        return runs.TENSORBOARD_DIR if self.name == "tensorboard" else ""

    def where(self, run: Path) -> str:
        """One line for the log: where this tracker writes."""
        again = "continues" if self.continues else "logs to"
        if self.name == "tensorboard":
            return f"tensorboard {again} {run / runs.TENSORBOARD_DIR} (see it with: tensorboard --logdir {run / runs.TENSORBOARD_DIR})"
        if self.name == "mlflow":
            import mlflow

            uri = mlflow.get_tracking_uri()
            default = "" if os.environ.get("MLFLOW_TRACKING_URI") else ", MLflow's default as $MLFLOW_TRACKING_URI is not set"
            return (f"mlflow {again} run {self.run_id()} of experiment {self.inner.experiment_name} at {uri}{default}; "
                    f"artifacts go to {mlflow.get_artifact_uri()}")
        return f"{self.name} {again} project {PROJECT}"

    def writes_locally_outside(self, run: Path) -> bool:
        """MLflow: whether it writes files on this machine outside the run folder: its default store without
        $MLFLOW_TRACKING_URI, or artifacts in a local folder (a database URI's default is ./mlruns)."""
        if self.name != "mlflow":
            return False
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return True
        import mlflow

        artifacts = urlparse(mlflow.get_artifact_uri())
        if artifacts.scheme not in ("", "file"):
            return False
        return not Path(unquote(artifacts.path)).resolve().is_relative_to(Path(run).resolve())

    def attach(self, run: Path, result: dict[str, Any]) -> None:
        """MLflow: the run folder's reports, loss.png and metrics.json (`result`, as it is about to be written) as artifacts."""
        if not self.started or self.failed:
            return
        if (run / runs.REPORTS_DIR).is_dir():
            self._safely(self.inner.log_artifacts, str(run / runs.REPORTS_DIR), runs.REPORTS_DIR)
        if (run / runs.LOSS_FILE).is_file():
            self._safely(self.inner.log_artifact, str(run / runs.LOSS_FILE))
        with tempfile.TemporaryDirectory() as folder:
            atomic.write_json(Path(folder) / runs.METRICS_FILE, result)  # the bytes the run folder's copy will hold
            self._safely(self.inner.log_artifact, str(Path(folder) / runs.METRICS_FILE))

    def _safely(self, method, *args, **kwargs) -> None:
        if self.failed or not self.started:
            return
        try:
            method(*args, **kwargs)
        except Exception as exc:  # a tracker's failure (its server, its disk, its own bug) must never end the run
            self.failed = True
            warnings.warn(f"training.report_to: {self.name} failed ({first_line(exc)}); it logs nothing more, "
                          "and the run goes on", BertclsWarning, stacklevel=2)


def _make(name: str, run: Path, previous: str | None, step: int) -> GeneralTracker:
    """Accelerate's tracker `name` for the run folder `run`; `previous`: its run before a resume at `step`."""
    if name == "tensorboard":
        # purge_step: TensorBoard hides the steps after the checkpoint that a killed run had logged, as log.jsonl drops them
        return TensorBoardTracker(runs.TENSORBOARD_DIR, str(run), **({"purge_step": step + 1} if step else {}))
    if name == "mlflow":
        return MLflowTracker(PROJECT, run_id=previous or None, run_name=run.name)
    return LOGGER_TYPE_TO_CLASS[name](PROJECT)


def hyperparameters(tree: dict[str, Any]) -> dict[str, Any]:
    """The config in flat dotted keys, with values every tracker takes (numbers, strings, booleans, None): a list becomes one string."""
    return {key: ",".join(map(str, value)) if isinstance(value, list) else value for key, value in dotted(tree).items()}


def numbers(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """`split/<metric>` for each headline number of a metrics dict (no per-label tables, no label names)."""
    return {f"{split}/{key}": value for key, value in scalars(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} if folder.is_dir() else set()
