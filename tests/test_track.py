"""Experiment trackers, read back with their own readers, and evaluation by steps.

Two trainings serve every test here: a run that evaluates every 5 steps for max_steps 24 (an epoch
is 15 steps), and the same run reporting to TensorBoard and MLflow, killed at step 12 and resumed
from checkpoint-10. The trackers must hold what log.jsonl and metrics.json hold, the resumed run
must log on to the same tracker runs, and it must end exactly like the run that was never stopped.
"""

import json
import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate.tracking import GeneralTracker
from typer.testing import CliRunner

from bertcls import runs
from bertcls.callbacks import Callback
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import BertclsWarning
from bertcls.track import Guarded
from bertcls.train import train
from conftest import assert_one_line_error, assert_same_run, make_config, toy_rows, write_csv

runner = CliRunner()
# 240 rows / batch 16 = 15 steps an epoch; 24 steps end 9 steps into the second. One thread: the runs compare bit for bit.
STEPS = {"epochs": 1, "max_steps": 24, "eval_every_steps": 5, "log_every_steps": 2, "num_threads": 1, "save_torchscript": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("track-data")
    return {name: write_csv(folder / f"{name}.csv", toy_rows(n, seed)) for name, n, seed in
            (("train", 240, 0), ("validation", 60, 1), ("test", 60, 2))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The run evaluated by steps, never stopped, with no tracker."""
    threads = torch.get_num_threads()
    run = train(load_config(make_config(tmp_path_factory.mktemp("reference"), data, training=STEPS)), quiet=True)
    assert torch.get_num_threads() == threads  # training.num_threads held for the run only
    return run


class KilledAt(Callback):
    """Ends the process's training at a step, as a kill would: after the step's log line, before its checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, record):
        if record["step"] == self.step:
            raise RuntimeError("killed")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data):
    """The same run reporting to TensorBoard and MLflow, killed at step 12 and resumed. Killed, it logged to MLflow's default
    store in the current folder (its own folder here); resumed, to the same store named by $MLFLOW_TRACKING_URI."""
    pytest.importorskip("tensorboard")
    MlflowClient = pytest.importorskip("mlflow").MlflowClient

    folder = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    config = load_config(make_config(folder, data, training={**STEPS, "report_to": ["tensorboard", "mlflow"], "loss_curve": True}))
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("MLFLOW_")]:
            patch.delenv(name)
        patch.chdir(folder)  # MLflow's default store, and where it puts artifacts (./mlruns)
        with pytest.raises(RuntimeError, match="killed"), pytest.warns(BertclsWarning) as default:
            train(config, quiet=True, callbacks=(KilledAt(12),))
        state = json.loads((runs.checkpoints(folder / "run")[-1] / runs.CHECKPOINT_STATE).read_text())
        killed = SimpleNamespace(state=state, status=MlflowClient(uri).get_run(state["trackers"]["mlflow"]).info.status,
                                 warnings=[str(w.message) for w in default if w.category is BertclsWarning])
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.warns(BertclsWarning) as resumed:  # a database's artifacts still go to ./mlruns: said too
            run = train(config, quiet=True, resume=True)
    return SimpleNamespace(run=run, uri=uri, killed=killed, folder=folder, resumed=[str(w.message) for w in resumed if w.category is BertclsWarning])


def read_log(run):
    records = [json.loads(line) for line in (run / runs.LOG_FILE).read_text().splitlines()]
    return [r for r in records if "split" not in r], [r for r in records if r.get("split") == "validation"]


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def f32(value: float) -> float:
    return float(np.float32(value))  # TensorBoard keeps scalars as float32


# ---------------------------------------------------------------------------- evaluation by steps

def test_evaluations_follow_the_step_schedule_and_max_steps_ends_the_run(reference):
    steps, evaluations = read_log(reference)
    metrics = json.loads((reference / runs.METRICS_FILE).read_text())
    assert [r["step"] for r in evaluations] == [5, 10, 15, 20, 24]  # every 5 steps, and after the last
    assert [r["epoch"] for r in evaluations] == [1, 1, 1, 2, 2]
    assert [r["step"] for r in steps] == list(range(2, 25, 2)) and steps[-1]["lr"] == 0.0  # the schedule spans max_steps
    assert metrics["train"]["optimizer_steps"] == 24 and metrics["train"]["epochs"] == 1.6
    best = max(evaluations, key=lambda r: (r["f1_macro"], -r["step"]))  # the first of the best
    assert (metrics["best_step"], metrics["best_epoch"]) == (best["step"], best["epoch"])
    assert numbers(metrics["validation"]) == {k: v for k, v in numbers(best).items() if k not in ("step", "epoch")}
    assert [p.name for p in runs.checkpoints(reference)] == ["checkpoint-24"]  # a checkpoint after each evaluation; the last kept


@pytest.mark.slow  # in CI's second pass: a training process killed, then resumed
def test_a_run_killed_between_evaluations_resumes_exactly(tracked, reference):
    assert tracked.killed.state["global_step"] == 10 and tracked.killed.state["batches_done"] == 10  # mid-epoch, after an evaluation
    assert tracked.killed.state["best_step"] in (5, 10)
    assert_same_run(tracked.run, reference)  # and trackers change nothing that is trained
    a, b = (json.loads((run / runs.METRICS_FILE).read_text()) for run in (tracked.run, reference))
    assert a["best_step"] == b["best_step"]


# ---------------------------------------------------------------------------- TensorBoard

def tensorboard_scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / runs.TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_log_and_the_metrics_once_per_step(tracked):
    scalars = tensorboard_scalars(tracked.run)
    steps, evaluations = read_log(tracked.run)
    metrics = json.loads((tracked.run / runs.METRICS_FILE).read_text())
    # what the killed run logged after checkpoint-10 is hidden: each step once, as in log.jsonl
    for key in ("loss", "lr", "examples_per_s"):
        assert scalars[f"train/{key}"] == [(r["step"], f32(r[key])) for r in steps], key
    for key in numbers(metrics["validation"]):
        assert scalars[f"validation/{key}"] == [(r["step"], f32(r[key])) for r in evaluations], key
        assert dict(scalars[f"validation/{key}"])[metrics["best_step"]] == f32(metrics["validation"][key]), key
    assert {tag: values for tag, values in scalars.items() if tag.startswith("test/")} == \
        {f"test/{key}": [(24, f32(value))] for key, value in numbers(metrics["test"]).items()}
    hparams = [yaml.safe_load(p.read_text()) for p in (tracked.run / runs.TENSORBOARD_DIR).glob("*/hparams.yml")]
    assert len(hparams) == 1, "the resumed run logs the config again"
    assert hparams[0]["training.eval_every_steps"] == 5 and hparams[0]["training.report_to"] == "tensorboard,mlflow"


def test_tensorboard_files_are_recorded_and_a_fresh_start_removes_only_them(tracked, tmp_path):
    folder = tracked.run / runs.TENSORBOARD_DIR
    written = sorted(p.relative_to(tracked.run).as_posix() for p in folder.rglob("*") if p.is_file())
    assert len([name for name in written if "tfevents" in name]) == 3  # the run's, its resume's and the config's
    assert [f for f in runs.read_record(tracked.run)["files"] if f.startswith(f"{runs.TENSORBOARD_DIR}/")] == written
    run = tmp_path / "run"
    shutil.copytree(tracked.run, run)
    (run / runs.TENSORBOARD_DIR / "notes.txt").write_text("mine")
    runs.prepare_run_dir(run, overwrite=True)
    assert [p.name for p in (run / runs.TENSORBOARD_DIR).rglob("*")] == ["notes.txt"]


# ---------------------------------------------------------------------------- MLflow

def test_mlflow_holds_one_run_continued_after_the_kill_with_the_metrics_and_reports(tracked, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)
    found = mlflow.search_runs(experiment_names=["bertcls"], output_format="list")
    assert len(found) == 1, "the resumed run started a second MLflow run"
    run_id = found[0].info.run_id
    assert run_id == tracked.killed.state["trackers"]["mlflow"] and tracked.killed.status == "FAILED"
    assert [w for w in tracked.killed.warnings if w.startswith("mlflow")] == [  # quiet or not, the current folder is never written silently
        f"mlflow logs to run {run_id} of experiment bertcls at {tracked.uri}, MLflow's default as $MLFLOW_TRACKING_URI is not set; "
        f"artifacts go to {tracked.folder}/mlruns/1/{run_id}/artifacts"]
    assert [w for w in tracked.resumed if w.startswith("mlflow")] == [
        f"mlflow continues run {run_id} of experiment bertcls at {tracked.uri}; artifacts go to {tracked.folder}/mlruns/1/{run_id}/artifacts"]
    assert found[0].info.status == "FINISHED" and found[0].info.run_name == "run"
    client = mlflow.MlflowClient(tracked.uri)
    history = lambda key: {m.step: m.value for m in client.get_metric_history(run_id, key)}  # noqa: E731
    steps, evaluations = read_log(tracked.run)
    metrics = json.loads((tracked.run / runs.METRICS_FILE).read_text())
    for key in ("loss", "lr", "examples_per_s"):
        logged = client.get_metric_history(run_id, f"train/{key}")
        # the killed run's step 12 stays in MLflow (it keeps every value), and the resumed run logged it again
        assert sorted({m.step for m in logged}) == [r["step"] for r in steps] and len(logged) == len(steps) + 1
    assert history("train/loss") == {r["step"]: r["loss"] for r in steps}  # an exact resume logs the same value again
    for key in numbers(metrics["validation"]):
        assert history(f"validation/{key}") == {r["step"]: r[key] for r in evaluations}, key
        assert history(f"validation/{key}")[metrics["best_step"]] == metrics["validation"][key], key
    assert {key: value for key, value in found[0].data.metrics.items() if key.startswith("test/")} == \
        {f"test/{key}": value for key, value in numbers(metrics["test"]).items()}
    assert found[0].data.params["training.max_steps"] == "24" and found[0].data.params["model.name"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"reports", "loss.png", "metrics.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "reports")} == {"reports/validation", "reports/test"}
    copy = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="metrics.json", dst_path=str(tmp_path), tracking_uri=tracked.uri)
    assert open(copy, "rb").read() == (tracked.run / runs.METRICS_FILE).read_bytes()


# ---------------------------------------------------------------------------- when a tracker cannot work

@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tmp_path, toy_data, monkeypatch, tracker):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, f"is_{tracker}_available", lambda: False)  # how Accelerate tells
    config = make_config(tmp_path, toy_data)
    result = runner.invoke(app, ["train", str(config), "--set", f"training.report_to=[{tracker}]"])
    assert_one_line_error(result, f"training.report_to: {tracker} is not installed; pip install {tracker}, "
                                  "or remove it from training.report_to")
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_cannot_connect_stops_the_run_before_training(tmp_path, toy_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's own: 7 retries, 4.5 minutes of silence
    config = make_config(tmp_path, toy_data, training={"report_to": ["tensorboard", "mlflow"]})
    started = time.monotonic()
    result = runner.invoke(app, ["train", str(config), "-q"])
    assert time.monotonic() - started < 60
    assert_one_line_error(result, "Error: training.report_to: mlflow could not start (API request to http://127.0.0.1:9/")
    assert result.output.endswith("; check $MLFLOW_TRACKING_URI and that its server is up, or remove it from training.report_to\n")
    run = tmp_path / "run"
    assert (run / runs.LOG_FILE).read_text() == "" and not runs.checkpoints(run) and not (run / runs.METRICS_FILE).exists()
    event_files = sorted(f"{runs.TENSORBOARD_DIR}/{p.name}" for p in (run / runs.TENSORBOARD_DIR).iterdir())
    assert event_files and all(runs.wrote(run, name) for name in event_files)  # TensorBoard started first: its files are ours


def test_a_folder_as_mlflows_store_says_how_to_keep_it(tmp_path, toy_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data, training={"report_to": ["mlflow"]})), "-q"])
    assert_one_line_error(result, "Error: training.report_to: mlflow could not start (MLflow writes to a folder (a file: tracking URI) "
                                  "only when MLFLOW_ALLOW_FILE_STORE=true is set); set MLFLOW_TRACKING_URI to a database such as "
                                  "sqlite:///mlflow.db, or MLFLOW_ALLOW_FILE_STORE=true, or remove it from training.report_to")


class Failing(GeneralTracker):
    name, requires_logging_directory, tracker = "flaky", False, None

    def log(self, values, step=None, **kwargs):
        raise ConnectionError("the server went away\nand more lines")


def test_a_tracker_that_fails_mid_run_is_one_warning_and_nothing_more():
    from accelerate import PartialState

    PartialState()  # what the Accelerator sets up: trackers log on its main process
    tracker = Guarded(Failing(), continues=False)
    tracker.start()
    with pytest.warns(BertclsWarning) as caught:
        for step in (1, 2, 3):
            tracker.log({"train/loss": 0.5}, step=step)
        tracker.finish()
    assert [str(w.message) for w in caught] == ["training.report_to: flaky failed (the server went away); it logs nothing more, and the run goes on"]


def test_an_mlflow_experiment_deleted_by_hand_is_named_with_the_fix(tmp_path, monkeypatch):
    from accelerate import PartialState
    from accelerate.tracking import MLflowTracker
    from mlflow.tracking import MlflowClient

    from bertcls.errors import ConfigError

    PartialState()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.delete_experiment(client.create_experiment("bertcls"))
    with pytest.raises(ConfigError) as refused:
        Guarded(MLflowTracker("bertcls", logging_dir=str(tmp_path)), continues=False).start()
    assert str(refused.value).startswith("training.report_to: mlflow could not start (its experiment 'bertcls' was deleted, "
                                         "and a deleted experiment keeps its name); restore it")
