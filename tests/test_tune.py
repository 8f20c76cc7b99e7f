"""`bertcls tune` as a user meets it: a study of ordinary run folders that continues where it stopped
(another run of the command, Ctrl-C, kill -9), prunes a hopeless trial, shares its study between two
workers, and writes best.yaml for `bertcls train`; and the tune section's checks, which train nothing."""

import csv
import fcntl
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import bertcls
from bertcls import runs
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import Interrupted, ModelError, Terminated
from bertcls.tune import LOCK_FILE
from conftest import assert_one_line_error, make_config, toy_rows, wait_for, write_csv

runner = CliRunner()
# Trials as small as they come: one epoch over 80 rows, no checkpoints, no loss figure.
# One thread: on a busy machine torch's second one mostly waits.
# save_torchscript: the user's setting, which trials skip and best.yaml keeps
TRAINING = {"epochs": 1, "batch_size": 16, "keep_checkpoints_at_end": False, "save_every_steps": 10_000, "num_threads": 1, "save_torchscript": True}
SPACE = {"training.learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "training.batch_size": [8, 16]}


@pytest.fixture
def no_trial_reports(monkeypatch):
    """Trials in this process also skip predictions.csv and the loss curve (trials already skip the report
    figures; tests/test_report.py covers all of them): a few tenths of a second per tiny trial."""
    import bertcls.train

    monkeypatch.setattr(bertcls.train, "_write_reports", lambda *args, **kwargs: None)


def tune_config(folder: Path, training: dict | None = None, seed: int = 7, **tune) -> Path:
    data = {"train": write_csv(folder / "train.csv", toy_rows(80, 0)), "validation": write_csv(folder / "validation.csv", toy_rows(20, 1))}
    path = make_config(folder, data, seed=seed, output_dir=str(folder / "search"), training={**TRAINING, **(training or {})},
                       tune={"trials": 4, "pruner": "none", "space": SPACE, **tune})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["test"] = None  # no test split: half the reports a trial draws
    path.write_text(yaml.safe_dump(raw))
    return path


def trials(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def best_trial(folder: Path) -> int:
    """The number of the trial best.yaml names (ties between trials are the study's to break)."""
    return int(re.search(r": trial (\d+),", (folder / "best.yaml").read_text().splitlines()[0]).group(1))


def counted(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [row for row in rows if row["state"] in ("complete", "pruned")]


def start(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertcls", "tune", str(config), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_study_writes_a_best_config_for_train_and_a_second_run_adds_only_the_missing_trials(tmp_path, no_trial_reports):
    config = tune_config(tmp_path)
    folder = tmp_path / "search"
    began = time.perf_counter()
    result = runner.invoke(app, ["tune", str(config)])
    seconds = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    rows = trials(folder)
    assert [row["number"] for row in rows] == ["0", "1", "2", "3"] and {row["state"] for row in rows} == {"complete"}
    for row in rows:  # each trial is an ordinary run folder whose config holds its sampled values
        trained = load_config(folder / f"trial-{row['number']}" / runs.CONFIG_FILE)
        assert (trained.training.learning_rate, trained.training.batch_size) == (float(row["training.learning_rate"]), int(row["training.batch_size"]))
        assert (folder / f"trial-{row['number']}" / runs.METRICS_FILE).is_file()
    best = min(rows, key=lambda row: -float(row["f1_macro"]))
    # best.yaml is the best trial's full config, for `bertcls train`, writing next to the trials
    cfg = load_config(folder / "best.yaml")
    assert cfg.output_dir == str(folder / "best") and cfg.training.learning_rate == float(best["training.learning_rate"])
    assert cfg.training.save_torchscript and "tune" not in yaml.safe_load((folder / "best.yaml").read_text())
    # --keep best (the default): only the best trial keeps its model; every trial keeps its metrics
    assert [row["number"] for row in rows if (folder / f"trial-{row['number']}" / runs.MODEL_DIR).is_dir()] == [best["number"]]
    assert sorted(p.name for p in (folder / "figures").iterdir()) == ["history.png", "importances.png", "slice.png"]
    assert f"train the best configuration with: bertcls train {folder / 'best.yaml'}" in result.output
    print(f"4-trial study: {seconds:.1f} s")

    finished = {n: (folder / f"trial-{n}" / runs.METRICS_FILE).stat().st_mtime_ns for n in range(4)}
    with open(folder / LOCK_FILE) as other_worker:  # another worker on the folder: this one is not the last out
        fcntl.flock(other_worker, fcntl.LOCK_SH)
        result = runner.invoke(app, ["tune", str(config), "--trials", "6"])
    assert result.exit_code == 0, result.output
    assert "4 of 6 trials done; running 2 more" in result.output
    # the losing models are the last worker's to remove: it alone knows the final best
    assert "removed the model/" not in result.output
    assert all((folder / f"trial-{n}" / runs.MODEL_DIR).is_dir() for n in (4, 5))
    assert [row["number"] for row in counted(trials(folder))] == ["0", "1", "2", "3", "4", "5"]
    assert {n: (folder / f"trial-{n}" / runs.METRICS_FILE).stat().st_mtime_ns for n in range(4)} == finished
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{n}" for n in range(6)]

    # the study is complete: nothing to run, but tune.seeds re-trains the best configuration with 2 new seeds
    result = runner.invoke(app, ["tune", str(config), "--trials", "6", "--set", "tune.seeds=2"])
    assert result.exit_code == 0, result.output
    assert "6 of 6 trials done; nothing to run" in result.output and not (folder / "trial-6").exists()
    assert [n for n in range(6) if (folder / f"trial-{n}" / runs.MODEL_DIR).is_dir()] == [best_trial(folder)]
    assert "removed the model/ of 2 losing trial(s)" in result.output
    seeds = json.loads((folder / "seeds.json").read_text())
    values = [run["validation"] for run in seeds["seeds"]]
    assert [run["seed"] for run in seeds["seeds"]] == [8, 9] and seeds["validation"] == {"mean": statistics.fmean(values), "std": statistics.stdev(values)}
    assert f"f1_macro of the best configuration over 2 new seeds: validation {seeds['validation']['mean']:.4f} ± {seeds['validation']['std']:.4f}" in result.output


@pytest.mark.slow  # in CI's second pass: a study of several trials
def test_pruning_stops_a_hopeless_trial_after_its_first_evaluation(tmp_path, no_trial_reports):
    # A grid of three learning rates that train and one so large that the loss jumps far above where it
    # started. Once a trial has completed, the median pruner judges each later one after its first
    # evaluation; the hopeless one is stopped there and finishes as a run folder one epoch long.
    config = tune_config(tmp_path, training={"epochs": 2}, sampler="grid", pruner="median", startup_trials=1, metric="loss",
                         space={"training.learning_rate": [1.0e-4, 3.0e-4, 1.0e-3, 1.0]})
    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 0, result.output
    rows = trials(tmp_path / "search")
    hopeless = next(row for row in rows if row["training.learning_rate"] == "1.0")
    assert hopeless is not rows[0], "optuna's grid order changed: choose a seed whose grid does not start with the hopeless rate"
    assert (hopeless["state"], hopeless["note"]) == ("pruned", "pruned after evaluation 1")
    run = tmp_path / "search" / f"trial-{hopeless['number']}"
    log = [json.loads(line) for line in (run / runs.LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("split") == "validation"] == [1]  # one evaluation of two
    assert json.loads((run / runs.METRICS_FILE).read_text())["train"]["epochs"] == 1
    assert float(hopeless["loss"]) > 2 * max(float(row["loss"]) for row in rows if row is not hopeless)


def training(folder: Path, n: int):
    """Whether trial n has logged its first step."""
    log = folder / f"trial-{n}" / runs.LOG_FILE
    return lambda: log.is_file() and log.stat().st_size > 0


def stopped_study(tmp_path: Path, sig: int) -> tuple[Path, Path, subprocess.Popen]:
    """A 3-trial study in a subprocess, sent `sig` once trial 1 has logged its first step: config, folder, process."""
    config = tune_config(tmp_path, training={"epochs": 2, "batch_size": 8, "log_every_steps": 1}, trials=3)
    folder = tmp_path / "search"
    process = start(config)
    wait_for(training(folder, 1), process, "trial 1's first step")
    process.send_signal(sig)
    return config, folder, process


@pytest.mark.slow  # a subprocess study interrupted by SIGINT: about 18 s, so with the other process tests
def test_a_study_continues_after_ctrl_c_and_after_a_worker_died(tmp_path, no_trial_reports):
    config, folder, process = stopped_study(tmp_path, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "SIGINT: stopping after this step; the same command continues the search (press Ctrl-C again" in stderr  # no checkpoint
    assert f"trial 1 is marked failed, and its values run again in a new trial; continue the search with: bertcls tune {config}" in stderr
    assert "Traceback" not in stderr
    # A worker that dies (kill -9) leaves its trial marked running: here, the retry of trial 1, taken and left
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.ask().number == 2

    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 0, result.output
    rows = trials(folder)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "complete"), ("1", "fail"), ("2", "fail"), ("3", "complete"), ("4", "complete")]
    assert rows[1]["training.learning_rate"] == rows[2]["training.learning_rate"] == rows[3]["training.learning_rate"]  # tried twice more
    assert (folder / "best.yaml").is_file()


@pytest.mark.slow
def test_a_study_continues_after_kill_9(tmp_path, no_trial_reports):
    """Slow: a process starts and trains a trial and a half, about 12 s on 2 cores."""
    config, folder, process = stopped_study(tmp_path, signal.SIGKILL)
    process.wait()

    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 0, result.output
    rows = trials(folder)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "complete"), ("1", "fail"), ("2", "complete"), ("3", "complete")]
    assert rows[1]["training.learning_rate"] == rows[2]["training.learning_rate"]  # the killed trial's values, tried again
    assert not (folder / "trial-1" / runs.METRICS_FILE).exists()


@pytest.mark.slow
def test_two_workers_share_one_study_and_never_run_a_trial_twice(tmp_path):
    """Slow: two processes start, on 2 cores that took about 25 s."""
    config = tune_config(tmp_path, trials=4, startup_trials=4)
    folder = tmp_path / "search"
    workers = [start(config), start(config)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(
        f"worker {i}: exit {worker.returncode}, stdout {out!r}, stderr:\n{err}" for i, (worker, (out, err)) in enumerate(zip(workers, outputs, strict=True)))
    rows = trials(folder)
    assert [row["state"] for row in rows] == ["complete"] * 4
    assert len({(row["training.learning_rate"], row["training.batch_size"]) for row in rows}) == 4  # each worker drew its own values
    for row in rows:  # one training per trial folder: its log holds one validation record
        log = (folder / f"trial-{row['number']}" / runs.LOG_FILE).read_text().splitlines()
        assert sum(json.loads(line).get("split") == "validation" for line in log) == 1
    # each worker ran some trials and said so, a line per trial
    said = [sum(line.startswith("trial ") for line in stderr.splitlines()) for _, stderr in outputs]
    assert sum(said) == 4 and min(said) >= 1, outputs
    # the last worker out removed the losing trials' models, once, keeping the best's
    assert [int(row["number"]) for row in rows if (folder / f"trial-{row['number']}" / runs.MODEL_DIR).is_dir()] == [best_trial(folder)]
    assert sum("removed the model/ of 3 losing trial(s)" in stderr for _, stderr in outputs) == 1, outputs


def one_trial_study(tmp_path: Path) -> Path:
    """The config of a study that holds one completed trial of SPACE."""
    config = tune_config(tmp_path, trials=1)
    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 0, result.output
    return config


def study_trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}").get_trials()


def test_the_report_counts_a_trial_another_worker_is_running_or_a_killed_one_left(tmp_path, no_trial_reports):
    config = one_trial_study(tmp_path)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    study.ask()  # a trial begun and not ended
    lock = os.open(tmp_path / "search" / "tune.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_SH)  # as a worker on the folder holds it
    try:
        result = runner.invoke(app, ["tune", str(config), "--report"])
    finally:
        os.close(lock)
    assert result.exit_code == 0, result.output
    assert "2 trial(s) (1 completed, 0 pruned, 0 failed, 1 running) | best: trial 0" in result.output, result.output
    result = runner.invoke(app, ["tune", str(config), "--report"])  # no worker holds the folder: its worker was killed
    assert result.exit_code == 0, result.output
    assert ("2 trial(s) (1 completed, 0 pruned, 0 failed, 1 left running by a stopped worker (the next bertcls tune fails it "
            "and runs its values again)) | best: trial 0") in result.output, result.output


def test_a_study_refuses_a_space_its_trials_did_not_search_before_any_trial(tmp_path, no_trial_reports):
    config = one_trial_study(tmp_path)
    folder = tmp_path / "search"
    for change, searched in [  # one study: each refusal leaves it as it was
        ("tune.space.training.batch_size=[8, 16, 32]", "tune.space.training.batch_size: the study searched [8, 16]; keep that space"),
        ("tune.space.training.batch_size={low: 8, high: 16}", "tune.space.training.batch_size: the study searched [8, 16]; keep that space"),
        ("tune.space.training.learning_rate.log=false",
         "tune.space.training.learning_rate: the study searched {low: 0.0001, high: 0.01, log: true}; keep that space (its ends may move)"),
    ]:
        result = runner.invoke(app, ["tune", str(config), "--trials", "2", "--set", change])
        assert_one_line_error(result, f"{searched}, or start a new study (--study NAME or another output_dir)")
        assert [trial.state.name for trial in study_trials(folder)] == ["COMPLETE"]  # no failed trial left behind
        assert not (folder / "trial-1").exists()


def test_a_study_goes_on_when_a_range_moves(tmp_path, no_trial_reports):
    # optuna takes a range's new ends (TPE learns from the trials outside them too): narrowing a range is how a search is refined
    config = one_trial_study(tmp_path)
    result = runner.invoke(app, ["tune", str(config), "--trials", "2", "--set", "tune.space.training.learning_rate.low=5.0e-3"])
    assert result.exit_code == 0, result.output
    rows = trials(tmp_path / "search")
    assert [row["state"] for row in rows] == ["complete", "complete"] and float(rows[1]["training.learning_rate"]) >= 5.0e-3


def test_ctrl_c_says_whether_the_trial_s_values_run_again(tmp_path, monkeypatch):
    # Each run of the command is stopped in its first trial: the values are queued again twice, then no more
    def stopped(config, **kwargs):
        raise Interrupted("SIGINT", 3, config.output_dir + "/checkpoint-3", 130)

    monkeypatch.setattr("bertcls.tune.train", stopped)
    config = tune_config(tmp_path)
    outputs = [runner.invoke(app, ["tune", str(config)]).output for _ in range(3)]
    for number, output in enumerate(outputs[:2]):
        assert (f"stopped by SIGINT after step 3\ntrial {number} is marked failed, and its values run again in a new trial; "
                "continue the search with") in output, output
        assert "checkpoint" not in output  # the trial's checkpoint is never resumed: the values run again
    assert ("trial 2 is marked failed; its values ran 3 times without finishing and are not tried again; "
            "continue the search with") in outputs[2], outputs[2]
    trials_now = study_trials(tmp_path / "search")
    assert [trial.state.name for trial in trials_now] == ["FAIL"] * 3
    assert len({trial.params["training.learning_rate"] for trial in trials_now}) == 1
    # a trial is never resumed from its checkpoint (its values run again), so its note names none
    assert runner.invoke(app, ["tune", str(config), "--report"]).exit_code == 0
    assert [row["note"] for row in trials(tmp_path / "search")] == ["stopped by SIGINT after step 3"] * 3


def test_ctrl_c_before_a_trial_trains_says_how_to_continue_and_trials_csv_says_why_trials_failed(tmp_path, monkeypatch):
    def stopped_early(config, **kwargs):  # Ctrl-C before the training loop catches signals
        raise KeyboardInterrupt

    def refused(config, **kwargs):
        raise ModelError("model.name 'gone': no such folder")

    config = tune_config(tmp_path)
    monkeypatch.setattr("bertcls.tune.train", stopped_early)
    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 130, result.output
    assert ("stopped by SIGINT during trial 0\ntrial 0 is marked failed, and its values run again in a new trial; "
            f"continue the search with: bertcls tune {config}") in result.output, result.output
    assert [(row["state"], row["note"], row["run"]) for row in trials(tmp_path / "search")] == [  # the queued retry has no folder yet
        ("fail", "stopped by SIGINT during trial 0", "trial-0"), ("waiting", "queued: runs the values of trial 0 again", "")]
    assert "2 trial(s) (0 completed, 0 pruned, 1 failed, 1 queued), none completed yet" in result.output
    monkeypatch.setattr("bertcls.tune.train", refused)
    result = runner.invoke(app, ["tune", str(config)])  # trial 1, the retry of trial 0's values, fails
    assert result.exit_code == 2 and result.output.endswith("Error: model.name 'gone': no such folder\n"), result.output
    assert "| fail | " in result.output and "(model.name 'gone': no such folder)\n" in result.output  # the trial's line
    assert [(row["state"], row["note"]) for row in trials(tmp_path / "search")] == [
        ("fail", "stopped by SIGINT during trial 0"), ("fail", "model.name 'gone': no such folder")]


def test_sigterm_before_a_trial_trains_is_named_as_sigterm(tmp_path, monkeypatch):
    def stopped_early(config, **kwargs):  # what SIGTERM raises before the training loop catches signals
        raise Terminated

    config = tune_config(tmp_path)
    monkeypatch.setattr("bertcls.tune.train", stopped_early)
    result = runner.invoke(app, ["tune", str(config)])
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM during trial 0\ntrial 0 is marked failed" in result.output, result.output
    assert [row["note"] for row in trials(tmp_path / "search")][:1] == ["stopped by SIGTERM during trial 0"]


def test_a_damaged_losing_trial_keeps_its_model_with_a_note_and_the_search_ends_well(tmp_path, no_trial_reports):
    config = tune_config(tmp_path, trials=2)
    folder = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(config), "--keep", "all"])
    assert result.exit_code == 0, result.output
    loser = folder / f"trial-{1 - best_trial(folder)}"
    (loser / runs.RECORD_FILE).write_text('{"written_by": "bertcls", "files": [')  # cut short
    result = runner.invoke(app, ["tune", str(config)])  # nothing to run; the last worker out removes the losing models
    assert result.exit_code == 0, result.output
    assert f"note: {loser} keeps its model/: {loser / runs.RECORD_FILE}: unreadable" in result.output
    assert (loser / runs.MODEL_DIR).is_dir()


# ---------------------------------------------------------------------------- checks that train nothing

@pytest.mark.parametrize("space, message", [
    ({"training.learnig_rate": [1.0e-4]}, "tune.space.training.learnig_rate: unknown key (did you mean 'learning_rate'?)"),
    ({"trainig.epochs": [1, 2]}, "tune.space.trainig.epochs: unknown section 'trainig' (did you mean 'training'?)"),
    ({"lr": [1.0e-4]}, "tune.space.lr: unknown key (did you mean 'training.learning_rate'?)"),
    ({"training.learning_rate": {"low": 1.0e-5, "high": 2.0, "log": True}},
     "tune.space.training.learning_rate: high 2.0 is refused: input should be less than or equal to 1 (got 2.0)"),
    ({"training.epochs": {"low": 0, "high": 3}}, "tune.space.training.epochs: low 0 is refused: input should be greater than or equal to 1 (got 0)"),
    ({"training.epochs": {"low": 1.5, "high": 3}}, "tune.space.training.epochs: low 1.5 is refused: input should be a valid integer"),
    ({"training.lr_scheduler": ["linear", "exponential"]}, "tune.space.training.lr_scheduler: choice 'exponential' is refused"),
    ({"training.learning_rate": {"low": 0.0, "high": 1.0e-3, "log": True}}, "tune.space.training.learning_rate: a log range needs low > 0"),
    ({"training.learning_rate": {"low": 1.0e-3, "high": 1.0e-5}}, "tune.space.training.learning_rate: low (0.001) is above high (1e-05)"),
    ({"training.learning_rate": {"lo": 1.0e-5, "high": 1.0e-3}}, "tune.space.training.learning_rate.lo: unknown key (did you mean 'low'?)"),
    ({"training.batch_size": []}, "tune.space.training.batch_size: no choices"),
    ({"training": [1]}, "tune.space.training: a section; name one of its keys"),
    ({"output_dir": ["a", "b"]}, "tune.space.output_dir: each trial writes to OUTPUT_DIR/trial-N"),
    ({"tune.trials": [1, 2]}, "tune.space.tune.trials: the search's own settings cannot be searched"),
    ({"training.metric_for_best": ["loss"]}, "tune.space.training.metric_for_best: each trial picks its best checkpoint by tune.metric"),
    ({"training.batch_size": {"low": 16, "high": 32, "step": 0.5}},
     "tune.space.training.batch_size.step: training.batch_size takes whole numbers; give a whole-number step (got 0.5)"),
    ({"training.learning_rate": [1.0e-3, "1e-3"]}, "tune.space.training.learning_rate: choice '1e-3' repeats 0.001; list each choice once"),
    ({"training.batch_size": [8, 16, 8]}, "tune.space.training.batch_size: choice 8 repeats 8; list each choice once"),
    ({"training.learning_rate": {"low": 1.0e-4, "high": 1.0e-3}, "training": {"learning_rate": [5.0e-3]}},
     "tune.space.training.learning_rate is given twice, as 'training: learning_rate' and as 'training.learning_rate'; keep one"),
    ({"model.name": ["tiny", "/no/such/bertcls-model"]}, "tune.space: model.name '/no/such/bertcls-model': no such folder"),
    ({"model.name": ["tiny", "no-such-model-xyz"]}, "tune.space: model.name 'no-such-model-xyz': not in the local Hugging Face cache"),
    ({"data.text_column": ["text", "body"]}, "tune.space.data.text_column: choice 'body': train ("),
    ({"data.validation": ["validation.csv", "nope.csv"]}, "nope.csv: no such file (paths in a config file are relative to the config's folder"),
])
def test_a_bad_search_space_is_refused_before_any_trial(tmp_path, space, message):
    config = tune_config(tmp_path, space=space)
    result = runner.invoke(app, ["tune", str(config)])
    assert_one_line_error(result, message)
    assert not (tmp_path / "search").exists()


def test_the_grid_sampler_needs_a_finite_space(tmp_path):
    config = tune_config(tmp_path, sampler="grid", space={"training.warmup_ratio": {"low": 0.0, "high": 0.2}})
    assert_one_line_error(runner.invoke(app, ["tune", str(config)]), "tune.space.training.warmup_ratio: tune.sampler grid needs a finite set of values")
    cfg = load_config(config, ["tune.space.training.warmup_ratio.step=0.05", "tune.space.training.epochs=[1, 2]"])  # --set makes nested keys
    assert {key: dim.grid() for key, dim in cfg.tune.space.items()} == {"training.warmup_ratio": [0.0, 0.05, 0.1, 0.15, 0.2], "training.epochs": [1, 2]}


def test_an_integer_key_takes_a_whole_float_step_as_an_integer(tmp_path):
    cfg = load_config(tune_config(tmp_path, space={"training.batch_size": {"low": 16, "high": 48, "step": 16.0}}))
    assert str(cfg.tune.space["training.batch_size"].grid()) == "[16, 32, 48]"  # integers (not 16.0), as batch_size takes them


def test_train_accepts_a_config_with_a_tune_section_and_leaves_it_out_of_the_run(tmp_path):
    cfg = load_config(tune_config(tmp_path, space={"training.learning_rate": ["1e-5", 3.0e-5]}))
    assert cfg.tune.space["training.learning_rate"].choices == (1e-5, 3e-5)  # as the config holds them: floats
    assert "tune" not in cfg.to_dict()


@pytest.mark.parametrize("args, message", [
    (["--report", "--timeout", "5"], "--report trains nothing; --timeout and --keep apply to a search"),
    (["--report"], "holds no search (tune.json is missing)"),
    (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open it"),
])
def test_misused_options_are_one_line_errors(tmp_path, args, message):
    assert_one_line_error(runner.invoke(app, ["tune", str(tune_config(tmp_path)), *args]), message)
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize("url, driver, package", [
    ("postgresql+psycopg://me:s3cret@127.0.0.1:9/db", "psycopg", "'psycopg[binary]'"),
    ("postgresql+psycopg2://me:s3cret@127.0.0.1:9/db", "psycopg2", "psycopg2-binary"),
    ("mysql+pymysql://me:s3cret@127.0.0.1:9/db", "pymysql", "pymysql"),
])
def test_a_storage_without_its_driver_says_what_to_install_and_claims_no_folder(tmp_path, monkeypatch, url, driver, package):
    monkeypatch.setitem(sys.modules, driver, None)  # as if not installed
    result = runner.invoke(app, ["tune", str(tune_config(tmp_path)), "--storage", url, "--study", "st1"])
    assert_one_line_error(result, f"--storage {url.replace('s3cret', '***')}: its database driver {driver} is not installed; pip install {package},")
    assert "s3cret" not in result.output
    assert not (tmp_path / "search").exists()


def test_an_empty_space_says_what_to_write(tmp_path):
    config = tune_config(tmp_path, space={})
    assert_one_line_error(runner.invoke(app, ["tune", str(config)]), "tune.space is empty; name the keys to search")


@pytest.mark.parametrize("content, message", [
    ({"notes.txt": "mine"}, "is not empty and not a bertcls run (it holds notes.txt)"),
    ({"bertcls-run.json": json.dumps({"written_by": "bertcls", "files": ["config.yaml", "metrics.json"]})}, "holds a training run, not a search"),
])
def test_the_output_folder_must_be_new_or_a_search(tmp_path, content, message):
    config = tune_config(tmp_path)
    (tmp_path / "search").mkdir()
    for name, text in content.items():
        (tmp_path / "search" / name).write_text(text)
    assert_one_line_error(runner.invoke(app, ["tune", str(config)]), message)
    assert sorted(p.name for p in (tmp_path / "search").iterdir()) == sorted(content)


@pytest.mark.parametrize("slot", ["trial-1", "seed-8", "best", "trial-1/inner"])
def test_a_search_is_refused_where_another_search_trains(tmp_path, slot):
    # another search's trial-N, seed-S and best folders are its to train in, later if not yet
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "bertcls-run.json").write_text(json.dumps({"written_by": "bertcls", "files": ["tune.json"]}))
    (outer / "tune.json").write_text(json.dumps({"study": "outer", "storage": "embedded", "metric": "f1_macro"}))
    result = runner.invoke(app, ["tune", str(tune_config(tmp_path)), "--set", f"output_dir={outer / slot}"])
    assert_one_line_error(result, f"output_dir {outer / slot} is inside the search {outer}, in {slot.split('/')[0]}/ where it trains; "
                                  "choose an output_dir outside that search")
    assert sorted(p.name for p in outer.iterdir()) == ["bertcls-run.json", "tune.json"]


def test_a_second_study_in_the_same_folder_is_refused(tmp_path):
    config = tune_config(tmp_path)
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "bertcls-run.json").write_text(json.dumps({"written_by": "bertcls", "files": ["tune.json"]}))
    (tmp_path / "search" / "tune.json").write_text(json.dumps({"study": "search", "storage": "embedded", "metric": "f1_macro"}))
    assert_one_line_error(runner.invoke(app, ["tune", str(config), "--study", "other"]),
                          "belongs to study 'search' in embedded, not 'other' in embedded")


def test_tune_without_optuna_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "bertcls.tune", raising=False)
    monkeypatch.delattr(bertcls, "tune", raising=False)
    result = runner.invoke(app, ["tune", str(tune_config(tmp_path))])
    assert_one_line_error(result, 'bertcls tune needs optuna, which is not installed; install the extra with: pip install -e ".[tune]"')
