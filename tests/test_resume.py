"""Resume and interrupts as a user meets them: a run killed with SIGKILL, or stopped with Ctrl-C or
SIGTERM, and resumed, ends with exactly the weights and metrics of a run that was never stopped."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from bertcls import runs
from bertcls.checkpoint import HARMLESS_KEYS, config_differences
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import RunError, Terminated
from bertcls.faults import StopRequest, out_of_memory_hint
from bertcls.train import train
from conftest import assert_one_line_error, assert_same_run, files_in, make_config, toy_rows, wait_for, write_csv
from tiny_models import build

runner = CliRunner()
# 240 rows / batch 16 = 15 steps an epoch: checkpoints every 4 steps fall mid-epoch. One thread:
# the in-process reference and the subprocess runs then do the same float operations in the same order.
TRAINING = {"epochs": 3, "save_every_steps": 4, "log_every_steps": 1, "num_threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-data")
    return {name: write_csv(folder / f"{name}.csv", toy_rows(n, seed)) for name, n, seed in
            (("train", 240, 0), ("validation", 60, 1), ("test", 60, 2))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The same config trained without interruption."""
    return train(load_config(make_config(tmp_path_factory.mktemp("reference"), data, training=TRAINING)), quiet=True)


def start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertcls", "train", str(config), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # in CI's second pass: a training process killed, then resumed
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path, data, reference):
    config = make_config(tmp_path, data, training=TRAINING)
    run = tmp_path / "run"
    process = start(config)
    wait_for(lambda: runs.checkpoints(run), process, "the first checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / runs.METRICS_FILE).exists()
    state = json.loads((runs.checkpoints(run)[-1] / runs.CHECKPOINT_STATE).read_text())
    assert state["batches_done"] > 0, "the checkpoint should be mid-epoch"
    resumed_from = runs.checkpoints(run)[-1].name

    result = runner.invoke(app, ["train", str(config), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert_same_run(run, reference)
    made = json.loads((run / runs.MANIFEST_FILE).read_text())  # the first start's command, and the resume's checkpoint
    assert made["command"][1:] == ["train", str(config), "-q"] and [r["resumed_from"] for r in made["resumes"]] == [resumed_from]
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-44"]  # keep_checkpoints=1: the last one only (every 4 steps)


# In CI's second pass: a training process stopped by each signal, then resumed. The default suite stops a training
# by both signals in its own process (below), through the same path (faults.StopRequest).
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_says_how_to_resume(tmp_path, data, reference, sig, code):
    config = make_config(tmp_path, data, training=TRAINING)
    run = tmp_path / "run"
    process = start(config)
    wait_for(lambda: (run / runs.LOG_FILE).is_file() and (run / runs.LOG_FILE).stat().st_size > 0, process, "the first step")
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    step = json.loads((runs.checkpoints(run)[-1] / runs.CHECKPOINT_STATE).read_text())["global_step"]
    assert f"stopped by {signal.Signals(sig).name} after step {step}; resumable checkpoint: {run / f'checkpoint-{step}'}" in stderr
    assert f"resume with: bertcls train {config} --resume" in stderr and "Traceback" not in stderr
    assert not (run / runs.METRICS_FILE).exists()
    # the step in progress was finished and logged, and nothing after it
    assert json.loads((run / runs.LOG_FILE).read_text().splitlines()[-1])["step"] == step

    result = runner.invoke(app, ["train", str(config), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert_same_run(run, reference)


def test_a_signal_once_the_run_has_finished_leaves_it_finished(tmp_path, data, monkeypatch, capsys):
    # a preemption notice that lands after metrics.json is written: a wrapper seeing exit 143 would resume a finished run
    from bertcls import atomic

    write_json = atomic.write_json

    def then_a_signal(path, value):
        write_json(path, value)
        if Path(path).name == runs.METRICS_FILE:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(atomic, "write_json", then_a_signal)
    run = train(load_config(make_config(tmp_path, data, training={**TRAINING, "epochs": 1, "save_every_steps": None})))
    said = capsys.readouterr().err
    assert (run / runs.METRICS_FILE).is_file() and said.endswith(f"\nSIGTERM: the run has finished; closing (press Ctrl-C again to exit now)\n"
                                                                  f"run folder: {run}\n")


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a test worker process
    stop = StopRequest()
    stop.install()
    try:
        with pytest.raises(KeyboardInterrupt):  # not yet in the loop: nothing to finish, stop at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()
    stop = StopRequest()
    stop.install()
    try:
        stop.arm()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.interrupted(3, Path("c")).exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Terminated):  # the CLI says "Terminated." and exits 143
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the "Exception ignored" it shows
@pytest.mark.parametrize("sig, exception", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_before_the_loop_whose_exception_python_dropped_still_stops_it(sig, exception):
    """A signal handler that runs inside a __del__ raises into nothing ("Exception ignored in ..."): the loop must not start."""
    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), sig)
            sum(range(100))  # the handler runs here, inside __del__

    stop = StopRequest()
    stop.install()
    try:
        Finalised()  # dropped at once: its __del__ runs, and the stop it raised goes nowhere
        with pytest.raises(exception):
            stop.arm()
        assert not stop.armed
    finally:
        stop.uninstall()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_while_a_checkpoint_is_written_leaves_the_previous_one_whole_and_names_it(tmp_path, data, monkeypatch, sig, code):
    import bertcls.checkpoint

    rng_state, calls = bertcls.checkpoint._rng_state, []

    def interrupted_on_second_save():
        calls.append(1)
        if len(calls) == 2:  # the signal twice, half-way through checkpoint-8: the second one stops at once
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)
        return rng_state()

    monkeypatch.setattr(bertcls.checkpoint, "_rng_state", interrupted_on_second_save)
    config = make_config(tmp_path, data, training={**TRAINING, "epochs": 1})
    result = runner.invoke(app, ["train", str(config), "-q"])
    run = tmp_path / "run"
    assert result.exit_code == code, result.output
    assert result.output.splitlines()[-2:] == [f"stopped by a second {sig.name} after step 8; resumable checkpoint: {run / 'checkpoint-4'}",
                                               f"resume with: bertcls train {config} --resume"], result.output
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-4"] and len(list((run / "checkpoint-4").iterdir())) == 4
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "a half-written checkpoint was left behind"
    monkeypatch.undo()
    assert runner.invoke(app, ["train", str(config), "--resume", "-q"]).exit_code == 0


def test_resume_by_path_and_refusing_a_changed_config(tmp_path, data):
    config = make_config(tmp_path, data, training={**TRAINING, "epochs": 1, "save_every_steps": 5, "keep_checkpoints": 2})
    run = tmp_path / "run"
    # an unfinished run with checkpoints: what a kill leaves, made here without the race
    (run / "checkpoint-5").mkdir(parents=True)
    runs.record_files(run)  # a bertcls run folder
    finished = train(load_config(config), quiet=True)
    assert [p.name for p in runs.checkpoints(finished)] == ["checkpoint-10", "checkpoint-15"]
    (run / runs.METRICS_FILE).unlink()  # as if killed during the test evaluation
    (run / "mine.txt").write_text("not bertcls's")

    changed = runner.invoke(app, ["train", str(config), "--resume", "--set", "training.learning_rate=0.01", "--set", "training.log_every_steps=3"])
    assert changed.exit_code == 2
    assert "Error: --resume: the config differs from checkpoint-15's: training.learning_rate: 0.002 -> 0.01; undo the change, or pass --force" in changed.output
    fresh = runner.invoke(app, ["train", str(config)])
    assert fresh.exit_code == 2 and "holds an unfinished run (checkpoint-15); pass --resume to continue it, or --overwrite" in fresh.output
    missing = runner.invoke(app, ["train", str(config), "--resume", str(run / "checkpoint-99")])
    assert missing.exit_code == 2 and f"--resume {run / 'checkpoint-99'}: no such folder (checkpoints in {run}: " in missing.output
    not_one = runner.invoke(app, ["train", str(config), "--resume", str(run / "reports")])
    assert not_one.exit_code == 2 and "not a checkpoint folder (no state.json)" in not_one.output

    by_path = runner.invoke(app, ["train", str(config), "--resume", str(run / "checkpoint-10"), "-q"])
    assert by_path.exit_code == 0, by_path.output
    assert (run / runs.METRICS_FILE).is_file() and (run / "mine.txt").is_file()
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-10", "checkpoint-15"]
    again = runner.invoke(app, ["train", str(config), "--resume"])
    assert again.exit_code == 2 and "holds a finished run; there is nothing to resume" in again.output


def test_resumed_into_another_output_dir_the_run_keeps_the_best_model_its_checkpoint_knew(tmp_path, data):
    training = {**TRAINING, "eval_every_steps": 4, "keep_checkpoints": 20, "keep_checkpoints_at_end": True,
                "metric_for_best": "accuracy", "learning_rate": 2e-3}
    config = make_config(tmp_path, data, training=training)
    first = train(load_config(config), quiet=True)
    best = json.loads((first / runs.METRICS_FILE).read_text())["best_step"]
    assert best == 36  # validation accuracy peaks before checkpoint-40, and not again after it
    forked = tmp_path / "forked"
    result = runner.invoke(app, ["train", str(config), "--set", f"output_dir={forked}", "--resume", str(first / "checkpoint-40")])
    assert result.exit_code == 0, result.output
    assert f"note: model/ is {first}'s best model (step 36), the best checkpoint-40 knew" in result.output
    assert json.loads((forked / runs.METRICS_FILE).read_text())["best_step"] == 36
    kept, copied = (load_file(run / "model" / "model.safetensors") for run in (first, forked))
    assert kept.keys() == copied.keys() and all(torch.equal(kept[name], copied[name]) for name in kept)


def test_resume_with_nothing_to_resume(tmp_path, data):
    config = make_config(tmp_path, data)
    result = runner.invoke(app, ["train", str(config), "--resume"])
    assert result.exit_code == 2 and f"--resume: no checkpoint in {tmp_path / 'run'}; start without --resume" in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_before_its_first_checkpoint_is_pointed_at_overwrite_not_resume(tmp_path, trained_run):
    # its best model was saved, then it was killed (or the disk filled) before any checkpoint was written
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / runs.METRICS_FILE).unlink()
    for checkpoint in runs.checkpoints(run):
        shutil.rmtree(checkpoint)
    result = runner.invoke(app, ["train", str(run / runs.CONFIG_FILE), "--set", f"output_dir={run}", "--resume"])
    assert result.exit_code == 2 and result.output == (f"Error: --resume: no checkpoint in {run}; start over with --overwrite "
                                                       "(it deletes the model/ saved so far)\n")
    predicted = runner.invoke(app, ["predict", "--model", str(run), "great"])
    assert predicted.stderr == (f"note: {run} did not finish (it has no metrics.json); using its best model so far "
                                "(it has no checkpoint to resume from)\n")


def test_changed_training_data_is_refused_unless_forced(tmp_path, data):
    # A model folder, whose vocabulary is its own (the tiny model's comes from the training texts: never other data)
    model = build("bert", tmp_path / "bert", [text for text, _ in toy_rows(240, 0)])
    config = make_config(tmp_path, data, model={"name": str(model)}, training={**TRAINING, "epochs": 1})
    run = train(load_config(config), quiet=True)
    (run / runs.METRICS_FILE).unlink()
    write_csv(tmp_path / "train.csv", toy_rows(240, 5))
    moved = make_config(tmp_path, {**data, "train": tmp_path / "train.csv"}, model={"name": str(model)}, training={**TRAINING, "epochs": 1})
    result = runner.invoke(app, ["train", str(moved), "--resume"])
    assert result.exit_code == 2 and "data.train:" in result.output  # the path changed
    raw = yaml.safe_load(moved.read_text())
    raw["data"]["train"] = str(data["train"])
    moved.write_text(yaml.safe_dump(raw))
    renamed = {"negative": "bad", "positive": "good"}  # as many labels, other names: the classifier's rows would swap meaning

    def relabelled(name, n, seed):
        return write_csv(tmp_path / f"{name}-renamed.csv", [(text, renamed[label]) for text, label in toy_rows(n, seed)])

    write_csv(data["train"], [(text, renamed[label]) for text, label in toy_rows(240, 5)])
    try:
        result = runner.invoke(app, ["train", str(moved), "--resume", "--force", "--set", f"data.validation={relabelled('validation', 60, 1)}",
                                     "--set", f"data.test={relabelled('test', 60, 2)}"])
        assert_one_line_error(result, "--resume: checkpoint-12's classifier is for the labels negative, positive, and the training "
                                      "data now has bad, good; even --force cannot go on with another label set")
        write_csv(data["train"], toy_rows(240, 5))  # same path, other rows
        result = runner.invoke(app, ["train", str(moved), "--resume"])
        assert result.exit_code == 2 and "the training data differs from the data checkpoint-12 was trained on" in result.output
        forced = runner.invoke(app, ["train", str(moved), "--resume", "--force", "-q"])
        assert forced.exit_code == 0, forced.output
    finally:
        write_csv(data["train"], toy_rows(240, 0))


def test_checkpoint_files_load_without_pickle(tmp_path, data):
    run = train(load_config(make_config(tmp_path, data, training={**TRAINING, "epochs": 1})), quiet=True)
    folder = runs.checkpoints(run)[-1]
    assert sorted(p.name for p in folder.iterdir()) == sorted([runs.CHECKPOINT_WEIGHTS, runs.CHECKPOINT_OPTIMIZER,
                                                               runs.CHECKPOINT_RNG.format(0), runs.CHECKPOINT_STATE])
    for name in (runs.CHECKPOINT_OPTIMIZER, runs.CHECKPOINT_RNG.format(0)):
        torch.load(folder / name, weights_only=True)  # raises on anything but tensors and plain containers
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_damaged_checkpoint_is_a_one_line_error_and_the_finish_settings_change_freely(tmp_path, data):
    config = make_config(tmp_path, data, training={**TRAINING, "epochs": 1})
    run = train(load_config(config), quiet=True)
    (run / runs.METRICS_FILE).unlink()
    folder = runs.checkpoints(run)[-1]
    weights, optimizer, state = (folder / name for name in (runs.CHECKPOINT_WEIGHTS, runs.CHECKPOINT_OPTIMIZER, runs.CHECKPOINT_STATE))
    kept = {path: path.read_bytes() for path in (weights, optimizer, state)}

    def refused(message: str) -> None:
        before = files_in(run)
        assert_one_line_error(runner.invoke(app, ["train", str(config), "--resume"]), message, run)
        assert files_in(run) == before  # nothing written, trimmed or deleted, the damaged file included
        for path, whole in kept.items():
            path.write_bytes(whole)

    header = int.from_bytes(kept[weights][:8], "little")  # safetensors: its length, the JSON header, then the data
    start = 8 + header + json.loads(kept[weights][8:8 + header])["classifier.weight"]["data_offsets"][0]
    damaged = bytearray(kept[weights])
    damaged[start:start + 64] = b"\xff" * 64  # the same size: 16 weights of the head turned nan
    weights.write_bytes(damaged)
    refused(f"{weights}: damaged: its sha256 is not the one recorded in state.json when it was saved; resume from another checkpoint")
    weights.write_bytes(damaged)  # a checkpoint that records no checksum (older ones): its nan values are found
    state.write_text(json.dumps({k: v for k, v in json.loads(kept[state]).items() if k != "weights_sha256"}))
    refused(f"{weights}: damaged: classifier.weight holds nan or inf values; resume from another checkpoint")
    no_checksums = json.dumps({k: v for k, v in json.loads(kept[state]).items() if not k.endswith("_sha256")})
    saved = torch.load(optimizer, weights_only=True)
    next(iter(saved["optimizer"]["state"].values()))["exp_avg"][0] = float("inf")  # of the first parameter AdamW has
    torch.save(saved, optimizer)
    refused(f"{optimizer}: damaged: its sha256 is not the one recorded in state.json when it was saved")
    torch.save(saved, optimizer)
    state.write_text(no_checksums)
    refused(f"{optimizer}: damaged: exp_avg of bert.embeddings.word_embeddings.weight holds nan or inf values")
    optimizer.write_bytes(b"\x80\x04not a checkpoint")
    state.write_text(no_checksums)
    refused(f"{optimizer}: cannot load this checkpoint")

    # what only the finish uses changes without --force, and the manifest records it
    finish_only = ["training.report_figures=true", "training.loss_curve=true", "training.save_torchscript=true",
                   "training.eval_batch_size=7", f"data.test={data['validation']}"]
    result = runner.invoke(app, ["train", str(config), "--resume", "-q", *(a for item in finish_only for a in ("--set", item))])
    assert result.exit_code == 0, result.output
    assert (run / runs.LOSS_FILE).is_file() and (run / "reports" / "test" / "confusion_matrix.png").is_file()
    changes = json.loads((run / runs.MANIFEST_FILE).read_text())["resumes"][-1]["config_changes"]
    assert changes == [f"data.test: {str(data['test'])!r} -> {str(data['validation'])!r}", "training.eval_batch_size: 128 -> 7",
                       "training.loss_curve: False -> True", "training.report_figures: False -> True", "training.save_torchscript: False -> True"]


def test_a_forced_resume_keeps_steps_and_epochs_true_to_the_new_schedule(tmp_path, data):
    # Nothing is learnt at this learning rate, so the best model stays the first evaluation's (step 4, in model/), and
    # checkpoint-10 (saved every 5 steps, evaluated every 4) is a step that was never evaluated.
    config = make_config(tmp_path, data, training={**TRAINING, "epochs": 1, "save_every_steps": 5, "eval_every_steps": 4, "keep_checkpoints": 2,
                                                    "learning_rate": 1e-12, "metric_for_best": "accuracy"})
    run = train(load_config(config), quiet=True)
    (run / runs.METRICS_FILE).unlink()
    ten, before = run / "checkpoint-10", files_in(run)

    def resume(*overrides: str, folder: Path = run):
        return runner.invoke(app, ["train", str(config), "--resume", str(folder / "checkpoint-10"), "--force", *(a for item in overrides for a in ("--set", item))])

    for override, end in [("training.max_steps=8", 8), ("training.batch_size=64", 4)]:  # 240 rows in batches of 64: 4 steps an epoch
        assert_one_line_error(resume(override), f"--resume: {ten} is at step 10, past the end of this config's schedule (step {end}); "
                                                "start over with --overwrite, or resume with a schedule that goes past step 10", run)
    assert_one_line_error(resume("data.max_train_samples=200"), "--resume: the training texts differ from those checkpoint-10 was "
                          "trained on, and model 'tiny' builds its vocabulary from them, so even --force cannot go on", run)
    assert_one_line_error(resume("data.max_length=600"), f"{ten / runs.CHECKPOINT_WEIGHTS}: the model's shapes differ from the checkpoint's "
                          "(bert.embeddings.position_embeddings.weight: [600, 64] in the model this config builds, [512, 64] in the checkpoint)", run)
    assert files_in(run) == before  # each refused before it wrote anything: config.yaml, log.jsonl and checkpoint-15 as they were

    # the same texts relabelled (rows fixed after `bertcls check`, say) and reordered: tiny's vocabulary is as it was, so
    # --force goes on; from a checkpoint that does not record its texts apart (an older bertcls's) it cannot know that
    with open(data["train"], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    rows[0] = [rows[0][0], next(label for _, label in rows if label != rows[0][1])]  # within the same label set
    relabelled = write_csv(tmp_path / "relabelled.csv", rows[::-1])
    shutil.copytree(run, tmp_path / "older")
    state = tmp_path / "older" / "checkpoint-10" / runs.CHECKPOINT_STATE
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "texts_fingerprint"}))
    assert_one_line_error(resume(f"output_dir={tmp_path / 'older'}", f"data.train={relabelled}", folder=tmp_path / "older"),
                          "model 'tiny' builds its vocabulary from the training texts, which checkpoint-10 (written by an older "
                          "bertcls) does not record apart from the labels, so even --force cannot go on")
    shutil.copytree(run, tmp_path / "relabelled")
    moved_on = resume(f"output_dir={tmp_path / 'relabelled'}", f"data.train={relabelled}", folder=tmp_path / "relabelled")
    assert moved_on.exit_code == 0, moved_on.output

    # batches of 32: 8 steps an epoch, so step 10 lies in the second epoch, and 3 epochs end at step 24
    shutil.copytree(run, tmp_path / "copy")
    moved = resume(f"output_dir={tmp_path / 'copy'}", "training.batch_size=32", "training.epochs=3", folder=tmp_path / "copy")
    assert moved.exit_code == 0, moved.output
    assert "step 10 goes on from epoch 2, micro-batch 2" in moved.output
    trained = json.loads((tmp_path / "copy" / runs.METRICS_FILE).read_text())["train"]
    assert (trained["optimizer_steps"], trained["epochs"]) == (24, 3)

    # a schedule that ends at the checkpoint: the weights after its last step are scored before the finish
    at_end = resume("training.max_steps=10", "training.num_threads=2")
    assert at_end.exit_code == 0, at_end.output
    assert ("note: checkpoint-10 trained on 1 CPU thread(s), this run on 2: the weights differ from a run never stopped in their "
            "last digits (set training.num_threads: 1 to resume exactly)") in at_end.output
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert (metrics["train"]["optimizer_steps"], metrics["train"]["epochs"], metrics["best_step"]) == (10, 0.667, 4)
    evaluations = [r["step"] for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines()) if r.get("split")]
    assert evaluations == [4, 8, 10]
    assert json.loads((run / runs.MANIFEST_FILE).read_text())["resumes"][-1]["config_changes"] == [
        "training.max_steps: None -> 10", "training.num_threads: 1 -> 2"]


def test_config_differences_name_the_keys():
    old = {"seed": 1, "output_dir": "a", "training": {"epochs": 3, "log_every_steps": 5}}
    new = {"seed": 1, "output_dir": "b", "training": {"epochs": 4, "log_every_steps": 9}}
    assert config_differences(old, new) == ["training.epochs: 3 -> 4"]
    assert config_differences(old, new, ignored=frozenset()) == ["output_dir: 'a' -> 'b'", "training.epochs: 3 -> 4", "training.log_every_steps: 5 -> 9"]
    # a checkpoint written before a key existed: the key at its default is no change, at another value it is
    newer = {**new, "training": {**new["training"], "eval_every_steps": None, "max_steps": 100}}
    assert config_differences(old, newer) == ["training.epochs: 3 -> 4", "training.max_steps: None -> 100"]


def test_the_keys_that_change_freely_on_resume_are_the_documented_ones():
    page = (Path(__file__).resolve().parents[1] / "docs" / "resume.md").read_text(encoding="utf-8")
    listed = page.split("may change freely without --force:")[1].split(" (the weights")[0]
    assert sorted(re.findall(r"`([\w.]+)`", listed)) == sorted(HARMLESS_KEYS)


def test_nonfinite_loss_names_step_and_lr_and_keeps_the_last_checkpoint(tmp_path, data, monkeypatch):
    import transformers

    forward, calls = transformers.BertForSequenceClassification.forward, []

    def diverging(self, *args, **kwargs):  # the loss turns to NaN on the 7th micro-batch
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) >= 7:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(transformers.BertForSequenceClassification, "forward", diverging)
    config = make_config(tmp_path, data, training={"epochs": 1, "save_every_steps": 2, "log_every_steps": 3})
    result = runner.invoke(app, ["train", str(config), "-q"])
    assert result.exit_code == 2, result.output
    run = tmp_path / "run"
    assert re.fullmatch(r"Error: the training loss became nan at step 8 \(lr 0\.00\d+\); lower training\.learning_rate; "
                        rf"the last good checkpoint is {re.escape(str(run / 'checkpoint-6'))}\n", result.output), result.output
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-6"]
    assert not (run / runs.METRICS_FILE).exists()


def test_out_of_memory_is_a_hint_not_a_traceback(tmp_path, data, monkeypatch):
    import transformers

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "forward", out_of_memory)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, data))])
    assert result.exit_code == 2, result.output
    assert ("Error: out of memory with training.batch_size=16; set training.batch_size=8 and "
            "training.gradient_accumulation_steps=2 (same effective batch of 16)") in result.output
    assert "Traceback" not in result.output


def test_out_of_memory_hint_keeps_the_effective_batch():
    from bertcls.config import TrainingConfig

    assert "batch_size=5 and training.gradient_accumulation_steps=12 (same effective batch of 60)" in \
        out_of_memory_hint(TrainingConfig(batch_size=15, gradient_accumulation_steps=4))
    assert "lower data.max_length" in out_of_memory_hint(TrainingConfig(batch_size=1))


def test_resume_arguments_are_checked(tmp_path, data):
    config = make_config(tmp_path, data)
    for args, message in [(["--resume", "--overwrite"], "pass only one"), (["--force"], "--force only applies with --resume"),
                          ([str(tmp_path)], "only taken with --resume")]:
        result = runner.invoke(app, ["train", str(config), *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_finished_run_keeps_its_checkpoint_when_asked_and_overwrite_clears_it(tmp_path, data):
    config = make_config(tmp_path, data, training={**TRAINING, "epochs": 1, "save_every_steps": None, "keep_checkpoints_at_end": True})
    run = train(load_config(config), quiet=True)
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-15"]  # one checkpoint, after each epoch
    with pytest.raises(RunError, match="already holds a finished run"):
        train(load_config(config), quiet=True)
    train(load_config(config), overwrite=True, quiet=True)
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-15"]
    # by default a finished run keeps model/ and its graph alone: the checkpoints only serve to resume
    train(load_config(config, ["training.keep_checkpoints_at_end=false"]), overwrite=True, quiet=True)
    assert runs.checkpoints(run) == [] and not list(run.glob("checkpoint-*"))
    assert (run / "model" / "model.safetensors").is_file() and (run / runs.METRICS_FILE).is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_resume_on_cuda_with_scaler_and_cuda_rng(tmp_path, data, precision):
    """On a GPU (fp16 adds the gradient scaler's state): stopped with SIGINT and resumed, a run
    ends close to an uninterrupted one; kernels that are not deterministic rule out bit-equality."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    # 8 epochs (120 steps): a GPU takes milliseconds a step on the tiny model, and the signal must land mid-run
    training = {**TRAINING, "epochs": 8, "device": "cuda", "precision": precision}
    (tmp_path / "ref").mkdir()
    ref = train(load_config(make_config(tmp_path / "ref", data, training=training)), quiet=True)
    config = make_config(tmp_path, data, training=training)
    run = tmp_path / "run"
    process = start(config)
    wait_for(lambda: (run / runs.LOG_FILE).is_file() and (run / runs.LOG_FILE).stat().st_size > 0, process, "the first step")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    saved = torch.load(runs.checkpoints(run)[-1] / runs.CHECKPOINT_OPTIMIZER, weights_only=True)
    assert (saved["scaler"] is not None) == (precision == "fp16")
    assert "cuda" in torch.load(runs.checkpoints(run)[-1] / runs.CHECKPOINT_RNG.format(0), weights_only=True)["rng"]
    result = runner.invoke(app, ["train", str(config), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    ours, theirs = load_file(run / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-2) for k in ours)
    a, b = (json.loads((r / runs.METRICS_FILE).read_text()) for r in (run, ref))
    assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 0.05
