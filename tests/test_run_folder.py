"""The run folder as a careless or hostile user meets it: bertcls deletes only what it recorded
writing, never an input of the run, never a folder it did not make; one run per folder (a lock);
model/ is always the best model metrics.json describes; a stop signal during the final evaluation
is resumable; and every file gets the permissions open() gives."""

import json
import os
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

from bertcls import atomic, errors, runlock, runs
from bertcls.cli import app
from conftest import files_in as snapshot
from conftest import make_config, toy_rows, wait_for

runner = CliRunner()
IN_USE = "Error: output_dir {run} is in use: another bertcls train (pid {pid}) is running there; wait for it to end, or choose another output_dir\n"



def assert_one_line_error(result, line: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output == line, result.output


# ---------------------------------------------------------------------------- never delete what is not ours

def project(tmp_path: Path, toy_data: dict[str, Path], **sections) -> Path:
    """A user's project folder, holding their commented config, a model folder, a paper and a data file."""
    folder = tmp_path / "project"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model" / "pytorch_model.bin").write_bytes(b"weights")
    (folder / "reports").mkdir()
    (folder / "reports" / "paper.tex").write_text("\\documentclass{article}")
    (folder / "log.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in toy_rows(40, 3)))
    raw = {"output_dir": ".", "data": {"train": str(toy_data["train"]), "validation": str(toy_data["validation"]), "max_length": 32},
           "model": {"name": "tiny"}, "training": {"epochs": 1}}
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    config = folder / "config.yaml"
    config.write_text("# my experiment: this comment must survive\n" + yaml.safe_dump(raw))
    return config


@pytest.mark.parametrize(
    "sections, message",
    [
        ({}, "output_dir {p} holds the config file ({p}/config.yaml)"),
        ({"model": {"name": "model"}}, "output_dir {p} holds model.name ({p}/model), the config file ({p}/config.yaml)"),
        ({"data": {"train": "log.jsonl"}}, "output_dir {p} holds data.train ({p}/log.jsonl), the config file ({p}/config.yaml)"),
        ({"output_dir": ".."}, "output_dir {t} holds data.train ({t}/train.csv), data.validation ({t}/validation.csv), "
                               "the config file ({p}/config.yaml)"),
        ({"output_dir": "model", "model": {"name": "model"}}, "output_dir {p}/model is model.name ({p}/model)"),
    ],
    ids=["config-folder", "model-folder-inside", "data-file-inside", "one-level-up", "the-model-folder"],
)
@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_an_output_dir_holding_an_input_is_refused_before_anything_is_written(tmp_path, toy_data, sections, message, flag):
    config = project(tmp_path, toy_data, **sections)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train", str(config), *flag])
    expected = message.format(p=config.parent, t=tmp_path)
    assert_one_line_error(result, f"Error: {expected}; a run folder is for what bertcls writes (a fresh start or --overwrite clears it), "
                                  "so choose another output_dir\n")
    assert snapshot(tmp_path) == before  # nothing rewritten, deleted or added (no lock file, no record)


def test_a_folder_that_is_not_a_bertcls_run_is_refused(tmp_path, toy_data):
    theirs = tmp_path / "shared"
    (theirs / "data").mkdir(parents=True)
    for name in ("a.txt", "config.yaml", "model", "notes.md"):
        (theirs / name).write_text("mine")
    config = str(make_config(tmp_path, toy_data, output_dir=str(theirs)))
    before = snapshot(theirs)
    line = f"Error: output_dir {theirs} is not empty and not a bertcls run (it holds a.txt, config.yaml, data/ and 2 more); choose a new or empty output_dir\n"
    assert_one_line_error(runner.invoke(app, ["train", config]), line)
    assert_one_line_error(runner.invoke(app, ["train", config, "--overwrite"]), line)
    assert snapshot(theirs) == before


def test_a_search_folder_is_refused_as_a_training_run(tmp_path, toy_data):
    search = tmp_path / "search"  # what `bertcls tune` writes: its record, tune.json, its trials
    (search / "trial-0").mkdir(parents=True)
    (search / runs.RECORD_FILE).write_text('{"written_by": "bertcls", "files": ["tune.json"]}')
    (search / runs.SEARCH_FILE).write_text("{}")
    config = str(make_config(tmp_path, toy_data, output_dir=str(search)))
    before = snapshot(search)
    line = (f"Error: output_dir {search} is the folder of a bertcls tune search, which holds its trials; "
            "choose another output_dir (bertcls tune continues a search)\n")
    assert_one_line_error(runner.invoke(app, ["train", config]), line)
    assert_one_line_error(runner.invoke(app, ["train", config, "--overwrite"]), line)
    assert snapshot(search) == before


def test_a_run_by_an_older_bertcls_is_refused_not_cleared(tmp_path, toy_data):
    old = tmp_path / "run"  # what bertcls wrote before it kept a record: nothing says which files are its own
    (old / "model").mkdir(parents=True)
    (old / "checkpoint-15").mkdir()
    (old / "checkpoint-15" / runs.CHECKPOINT_STATE).write_text(json.dumps({"global_step": 15, "epoch": 1, "batches_done": 0, "processes": 1}))
    for name in ("config.yaml", "log.jsonl", "model/config.json", "model/mine.txt"):
        (old / name).write_text("{}")
    config = str(make_config(tmp_path, toy_data))
    before = snapshot(old)
    line = (f"Error: output_dir {old} looks like a run by an older bertcls, which kept no record of the files it wrote, so this one "
            "will neither delete nor add to them; delete the folder by hand, or choose another output_dir\n")
    for flags in ([], ["--overwrite"], ["--resume", "--force"]):
        assert_one_line_error(runner.invoke(app, ["train", config, *flags]), line)
    assert snapshot(old) == before


def test_overwrite_keeps_what_others_put_in_the_run_folder(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    runs.remove_ours(run, "model/README.md")  # bertcls's card makes way for the user's own
    mine = {"notes.txt": "notes", "model/README.md": "my model card", "reports/paper.tex": "\\section{results}",
            "checkpoint-45/why.txt": "kept for the paper"}
    for name, text in mine.items():
        (run / name).write_text(text)
    (run / ".model.old-1a2b").mkdir()  # a kill between publish_dir's swap and its carrying over of foreign files
    (run / ".model.old-1a2b" / "card.md").write_text("mine too")
    runs.prepare_run_dir(run, overwrite=True)
    left = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert left == {*mine, "model/card.md", runs.RECORD_FILE, runlock.LOCK_FILE}
    # model/ is replaced whole by each best checkpoint: someone else's files in it move into the new one
    tmp = atomic.temp_dir_for(run / runs.MODEL_DIR)
    (tmp / "model.safetensors").write_bytes(b"new weights")
    runs.publish_dir(tmp, run / runs.MODEL_DIR)
    assert sorted(p.name for p in (run / runs.MODEL_DIR).iterdir()) == ["README.md", "card.md", "model.safetensors"]
    assert (run / "model" / "README.md").read_text() == "my model card" and not list(run.glob(".model.*"))
    assert "model/model.safetensors" in runs.read_record(run)["files"] and "model/README.md" not in runs.read_record(run)["files"]


def test_a_model_that_cannot_load_leaves_the_run_it_would_overwrite_as_it_was(tmp_path, trained_run, toy_data):
    run, damaged = tmp_path / "run", tmp_path / "damaged"
    shutil.copytree(trained_run, run)
    shutil.copytree(trained_run / "model", damaged)
    with open(damaged / "model.safetensors", "r+b") as weights:  # a copy cut short
        weights.truncate(2000)
    config = make_config(tmp_path, toy_data, model={"name": str(damaged)})
    before = snapshot(tmp_path)
    for flags in (["--overwrite"], ["--set", f"output_dir={tmp_path / 'fresh'}"]):
        result = runner.invoke(app, ["train", str(config), *flags])
        assert result.exit_code == 2 and result.output.startswith(f"Error: model.name '{damaged}': cannot load it"), result.output
        assert snapshot(tmp_path) == before  # the finished run kept whole; no half-made fresh folder


def test_a_loss_curve_the_run_never_drew_is_not_its_to_delete(tmp_path):
    run = tmp_path / "run"
    runs.prepare_run_dir(run, overwrite=False)  # a run with training.loss_curve: false writes no loss.png
    (run / runs.LOSS_FILE).write_bytes(b"the user's own figure")
    runs.prepare_run_dir(run, overwrite=True)
    assert (run / runs.LOSS_FILE).read_bytes() == b"the user's own figure"


def test_a_link_where_bertcls_writes_is_refused(tmp_path, toy_data, trained_run):
    run, theirs = tmp_path / "run", tmp_path / "my-model"
    shutil.copytree(trained_run, run)
    shutil.move(run / "model", theirs)
    (run / "model").symlink_to(theirs, target_is_directory=True)  # replacing model/ would take their files along
    before = snapshot(theirs)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--overwrite"])
    assert_one_line_error(result, f"Error: {run / 'model'} is a link (to {theirs}), which bertcls did not write and will not replace; "
                                  "remove the link, or choose another output_dir\n")
    assert snapshot(theirs) == before and (run / "model").is_symlink()


@pytest.mark.parametrize("where", ["reports/validation", "model/tokenizer.json", "checkpoint-45/rng-0.pt"])
def test_a_link_below_the_run_folder_is_refused_before_anything_is_touched(tmp_path, toy_data, trained_run, where):
    run, theirs = tmp_path / "run", tmp_path / "mine"
    shutil.copytree(trained_run, run)
    theirs.mkdir()
    (theirs / "predictions.csv").write_text("my own predictions, not bertcls's")
    link = run / where
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(theirs if where != "model/tokenizer.json" else theirs / "predictions.csv")
    before, kept = snapshot(run), snapshot(theirs)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--overwrite"])
    assert_one_line_error(result, f"Error: {link} is a link (to {os.readlink(link)}), which bertcls did not write and will not replace; "
                                  "remove the link, or choose another output_dir\n")
    assert snapshot(theirs) == kept and snapshot(run) == before


def test_deleting_what_bertcls_wrote_never_follows_a_link(tmp_path):
    run, theirs = tmp_path / "run", tmp_path / "mine"
    runs.prepare_run_dir(run, overwrite=False)
    theirs.mkdir()
    (theirs / "predictions.csv").write_text("mine")
    (theirs / "config.json").write_text("mine too")
    (run / "reports").mkdir()
    (run / "reports" / "validation").symlink_to(theirs)  # a folder bertcls wrote, now a link to theirs
    (run / "model").mkdir()
    (run / "model" / "config.json").symlink_to(theirs / "config.json")  # a file bertcls wrote, now a link to theirs
    runs.record_files(run, "reports/validation/predictions.csv", "model/config.json")
    kept = snapshot(theirs)
    for name in ("reports/validation/predictions.csv", "reports", "model"):
        runs.remove_ours(run, name)
    assert snapshot(theirs) == kept
    assert (run / "reports" / "validation").is_symlink() and not (run / "model").exists()  # at most the link itself goes
    # model/ replaced by a link since the run folder was checked: publishing a new one neither moves nor empties it
    (run / "model").symlink_to(theirs, target_is_directory=True)
    tmp = atomic.temp_dir_for(run / runs.MODEL_DIR)
    with pytest.raises(errors.RunError, match="is a link"):
        runs.publish_dir(tmp, run / runs.MODEL_DIR)
    assert snapshot(theirs) == kept and (run / "model").is_symlink()


# ---------------------------------------------------------------------------- one run per folder

HOLD = "import sys, time\nfrom bertcls import runlock\nwith runlock.locked(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n"


@pytest.fixture
def hold(request):
    """hold(RUN): another process takes RUN's lock, as a training run does, until the test ends."""
    def take(run: Path) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
        request.addfinalizer(lambda: (holder.kill(), holder.wait()))
        assert holder.stdout.readline() == "locked\n"
        return holder
    return take


def test_a_folder_in_use_is_refused_and_predict_says_it_is_still_training(tmp_path, toy_data, trained_run, hold):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = str(make_config(tmp_path, toy_data))
    holder = hold(run)
    before = snapshot(run)
    for flags in (["--overwrite"], ["--resume"], []):
        assert_one_line_error(runner.invoke(app, ["train", config, *flags]), IN_USE.format(run=run, pid=holder.pid))
    assert snapshot(run) == before
    predicted = runner.invoke(app, ["predict", "--model", str(run), "a wonderful film"])
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stderr == f"note: {run} is still training (pid {holder.pid}); using its best model so far\n"
    assert predicted.stdout.startswith("positive\t")
    holder.kill()
    holder.wait()  # the lock dies with its process
    assert runlock.training_pid(run) is None
    assert runner.invoke(app, ["predict", "--model", str(run), "a wonderful film"]).stderr == ""
    (run / runs.METRICS_FILE).unlink()  # as a run killed before its end leaves it
    for command in (["predict", "--model", str(run), "great"], ["evaluate", str(toy_data["validation"]), "--model", str(run)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and result.stderr.startswith(f"note: {run} did not finish (it has no metrics.json); using its "
                                                                  "best model so far (bertcls train CONFIG --resume finishes it)\n")
    shutil.rmtree(run / runs.MODEL_DIR)  # a run that has not saved its first model yet
    holder = hold(run)
    assert_one_line_error(runner.invoke(app, ["predict", "--model", str(run), "great"]),
                          f"Error: --model {run} is still training (pid {holder.pid}) and has saved no model yet; wait for its "
                          "first evaluation, or give another run\n")


@pytest.mark.slow  # two torchrun processes; the lock itself is tested in one process above
def test_under_torchrun_every_process_stops_on_a_folder_in_use(tmp_path, toy_data, hold):
    run = tmp_path / "run"
    holder = hold(run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bertcls", "train",
           str(make_config(tmp_path, toy_data))]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and IN_USE.format(run=run, pid=holder.pid) in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [runlock.LOCK_FILE]


# ---------------------------------------------------------------------------- a run, stopped in its finish and resumed

@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.slow  # in CI's second pass: stops a training process in each step of its finish
def test_stopped_in_the_finish_resumed_and_resumed_from_an_older_checkpoint(tmp_path, toy_data, umask_027):
    # One training, under umask 027: two epochs with loss as the metric, so epoch 2 is the best and
    # model/ is saved after checkpoint-15. A second train on the folder is refused while it runs.
    config = make_config(tmp_path, toy_data, training={"epochs": 2, "keep_checkpoints": 2, "metric_for_best": "loss"})
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "bertcls", "train", str(config), "-q"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, umask=0o027)
    wait_for(lambda: (run / runs.CONFIG_FILE).is_file(), process, "the run folder")
    assert_one_line_error(runner.invoke(app, ["train", str(config), "--set", "seed=9"]), IN_USE.format(run=run, pid=process.pid))

    # SIGTERM after the last epoch, during the final evaluation: the message, the resume command, exit 143
    wait_for(lambda: (run / "checkpoint-30").is_dir(), process, "the last checkpoint")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert f"stopped by SIGTERM after step 30; resumable checkpoint: {run / 'checkpoint-30'}\nresume with: bertcls train {config} --resume\n" in stderr
    assert "Traceback" not in stderr and not (run / runs.METRICS_FILE).exists()
    assert yaml.safe_load((run / runs.CONFIG_FILE).read_text())["seed"] == 8  # the refused run wrote nothing
    states = {n: json.loads((run / f"checkpoint-{n}" / runs.CHECKPOINT_STATE).read_text()) for n in (15, 30)}
    assert (states[15]["best_step"], states[30]["best_step"]) == (15, 30)

    resumed = runner.invoke(app, ["train", str(config), "--resume", "-q"])  # re-runs the finish only
    assert resumed.exit_code == 0, resumed.output
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert (metrics["best_epoch"], metrics["train"]["optimizer_steps"]) == (2, 30)

    # As if killed during a later finish, then resumed from the older checkpoint with one epoch: model/
    # (saved at step 30) is newer than checkpoint-15, whose own weights are the best it knows.
    (run / runs.METRICS_FILE).unlink()
    older = runner.invoke(app, ["train", str(config), "--resume", str(run / "checkpoint-15"), "--force", "--set", "training.epochs=1", "-q"])
    assert older.exit_code == 0, older.output
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert (metrics["best_epoch"], metrics["train"]["optimizer_steps"]) == (1, 15)
    best, step15 = load_file(run / "model" / "model.safetensors"), load_file(run / "checkpoint-15" / runs.CHECKPOINT_WEIGHTS)
    assert all(torch.equal(best[k], step15[k]) for k in best), "model/ is not the best model metrics.json describes"
    assert runs.best_model_step(run) == 15 and runs.checkpoints(run) == [run / "checkpoint-15"]

    # every file bertcls wrote has the permissions open() gives under the umask, every folder mkdir's
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    assert {name: mode for name, mode in modes.items() if mode != (0o750 if (run / name).is_dir() else 0o640)} == {}
    assert {"model/model.safetensors", "checkpoint-15/model.safetensors", runs.RECORD_FILE, runlock.LOCK_FILE} <= modes.keys()


def test_a_run_resumed_from_a_checkpoint_before_its_best_chooses_the_best_again(tmp_path, trained_run, toy_data):
    # Resume from a checkpoint whose best model (an earlier step) is gone, replaced by one saved after it:
    # model/ is dropped and the next evaluation saves the best again, so metrics.json and model/ agree.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / runs.METRICS_FILE).unlink()
    state_file = run / "checkpoint-45" / runs.CHECKPOINT_STATE
    state = json.loads(state_file.read_text())
    assert state["best_step"] in (15, 30, 45)
    state_file.write_text(json.dumps({**state, "best_step": 7}))  # a best model from step 7, no longer on disk
    config = make_config(tmp_path, toy_data)
    result = runner.invoke(app, ["train", str(config), "--resume", "--force"])
    assert result.exit_code == 0, result.output
    assert "note: model/ was saved after checkpoint-45, and the best model that checkpoint knew is gone" in result.output
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["best_epoch"] == 3 and runs.best_model_step(run) == 45
    best, last = load_file(run / "model" / "model.safetensors"), load_file(run / "checkpoint-45" / runs.CHECKPOINT_WEIGHTS)
    assert all(torch.equal(best[k], last[k]) for k in best)


# ---------------------------------------------------------------------------- evaluate --output

def test_evaluate_never_writes_over_a_run_or_existing_results(tmp_path, trained_run, toy_data):
    legacy = tmp_path / "old-run"  # a run by an older bertcls: no record
    legacy.mkdir()
    for name in ("config.yaml", "log.jsonl", "metrics.json"):
        (legacy / name).write_text("{}")
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.json").write_text('{"mine": 1}')
    (results / "predictions.csv").write_text("mine")
    search = tmp_path / "search"  # what `bertcls tune` writes: its record and tune.json
    search.mkdir()
    (search / runs.RECORD_FILE).write_text('{"files": ["tune.json"]}')
    (search / runs.SEARCH_FILE).write_text("{}")
    cases = [(search, f"--output {search} is a bertcls search folder, which holds what bertcls tune wrote; "
                      "choose a folder outside the search, e.g. eval/search"),
             (trained_run, f"--output {trained_run} is a bertcls run folder, which holds what training wrote; "
                           f"choose a folder outside the run, e.g. eval/{trained_run.name}"),
             (legacy, f"--output {legacy} is a bertcls run folder"),
             (results, f"--output {results} already holds metrics.json, predictions.csv; evaluate replaces no file there, "
                       "so choose a new or empty folder")]
    for folder, message in cases:
        before = snapshot(folder)
        result = runner.invoke(app, ["evaluate", str(toy_data["test"]), "--model", str(trained_run), "--output", str(folder)])
        assert result.exit_code == 2 and result.output.startswith(f"Error: {message}") and len(result.output.splitlines()) == 1, result.output
        assert snapshot(folder) == before


def test_a_lock_left_by_a_killed_run_is_free(tmp_path, toy_data):
    run = tmp_path / "run"
    killed = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "locked\n" and runlock.training_pid(run) == killed.pid
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert runlock.training_pid(run) is None
    with runlock.locked(run):
        assert (run / runlock.LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_symlinked_output_dir_is_checked_where_it_points(tmp_path, toy_data):
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    config = str(make_config(tmp_path, toy_data, output_dir=str(tmp_path / "link")))
    result = runner.invoke(app, ["train", config])
    assert result.exit_code == 2 and f"output_dir {tmp_path / 'link'} holds data.train ({toy_data['train']})" in result.output


@pytest.mark.parametrize("case", ["dangling", "under dangling", "loop", "too long"])
def test_an_output_dir_that_cannot_be_a_folder_is_one_line(tmp_path, toy_data, case):
    (tmp_path / "latest").symlink_to(tmp_path / "deleted-run")  # a link to a run deleted since
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    output_dir, message = {
        "dangling": (tmp_path / "latest", f"output_dir {tmp_path / 'latest'} is a link to {tmp_path / 'deleted-run'}, which does not "
                                          "exist; make that folder, or choose another"),
        "under dangling": (tmp_path / "latest" / "run", f"output_dir {tmp_path / 'latest' / 'run'} is under {tmp_path / 'latest'}, a link to "
                                                        f"{tmp_path / 'deleted-run'}, which does not exist"),
        "loop": (tmp_path / "a", f"output_dir {tmp_path / 'a'} is a link that leads back to itself; choose another folder"),
        "too long": (tmp_path / ("x" * 300), "File name too long; shorten it (most file systems take names of up to 255 bytes)"),
    }[case]
    config = make_config(tmp_path, toy_data, output_dir=str(output_dir))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == before
