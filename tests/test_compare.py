"""`bertcls runs`: one row per run folder, sorted, as a table or JSON; broken and foreign folders are rows, never a crash."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from bertcls import runlock, runs
from bertcls.cli import app
from conftest import assert_one_line_error

runner = CliRunner()
# validation f1_macro, validation loss, test f1_macro of the finished copies
SCORES = {"alpha": (0.80, 0.50, 0.70), "beta": (0.95, 0.40, 0.60), "gamma": (0.90, 0.30, 0.90)}


@pytest.fixture
def runs_folder(trained_run, tmp_path):
    """Three finished runs with other numbers, two unfinished ones, a corrupt metrics.json, a bad config.yaml,
    a foreign folder, and what is skipped (a hidden folder, a file)."""
    root = tmp_path / "runs"
    for name, (f1, loss, test_f1) in SCORES.items():
        shutil.copytree(trained_run, root / name)
        metrics = json.loads((root / name / runs.METRICS_FILE).read_text())
        metrics["validation"].update(f1_macro=f1, loss=loss, threshold=0.4)  # a multi-label run's tuned threshold
        metrics["test"]["f1_macro"] = test_f1
        (root / name / runs.METRICS_FILE).write_text(json.dumps(metrics))
    shutil.copytree(trained_run, root / "stopped")  # killed after its checkpoint
    (root / "stopped" / runs.METRICS_FILE).unlink()
    shutil.copytree(root / "stopped", root / "early")  # killed before any checkpoint
    shutil.rmtree(root / "early" / "checkpoint-45")
    shutil.copytree(trained_run, root / "cut")
    (root / "cut" / runs.METRICS_FILE).write_text('{"best_epoch": 3, "valid')
    shutil.copytree(trained_run, root / "garbled")
    (root / "garbled" / runs.CONFIG_FILE).write_text("model: [tiny\n")
    (root / "photos").mkdir()
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    (root / "onnx").mkdir()  # what `bertcls export` writes: its own copy of the run's config.yaml too
    (root / "onnx" / runs.CONFIG_FILE).write_bytes((trained_run / runs.CONFIG_FILE).read_bytes())
    (root / "onnx" / runs.ONNX_META).write_text("{}")
    (root / ".trash").mkdir()
    (root / "notes.txt").write_text("not a folder")
    return root


def _rows(*args):
    result = runner.invoke(app, ["runs", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_rows_say_what_each_folder_is_best_first(runs_folder):
    rows = {row["name"]: row for row in _rows(str(runs_folder))}
    assert list(rows) == ["beta", "gamma", "alpha", "cut", "early", "garbled", "onnx", "photos", "stopped"]  # no metric: by name
    assert {name: (row["status"], row["detail"]) for name, row in rows.items() if name not in SCORES} == {
        "cut": ("corrupt", "metrics.json unreadable: Unterminated string starting at: line 1 column 19 (char 18)"),
        "early": ("unfinished", "stopped at step 45, no checkpoint"),
        "garbled": ("corrupt", "config.yaml:2:1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        "photos": ("not a run", "no bertcls-run.json or config.yaml"),
        "onnx": ("export", f"an ONNX export (bertcls export); bertcls predict -m {runs_folder / 'onnx'}"),
        "stopped": ("unfinished", "stopped at checkpoint-45"),
    }
    beta = rows["beta"]
    assert (beta["status"], beta["model"], beta["best_epoch"], beta["metric_for_best"]) == ("finished", "tiny", 3, "f1_macro")
    assert (beta["validation"]["f1_macro"], beta["test"]["f1_macro"]) == (0.95, 0.60)
    assert beta["train_seconds"] == json.loads((runs_folder / "beta" / runs.METRICS_FILE).read_text())["train"]["seconds"]
    assert beta["date"] == json.loads((runs_folder / "beta" / runs.MANIFEST_FILE).read_text())["ended"]


@pytest.mark.parametrize("key, order", [
    ("loss", ["gamma", "beta", "alpha"]),  # lowest first
    ("test.f1_macro", ["gamma", "alpha", "beta"]),
    ("name", ["alpha", "beta", "cut", "early", "gamma", "garbled", "onnx", "photos", "stopped"]),
])
def test_sort_by_any_metric_or_name(runs_folder, key, order):
    assert [row["name"] for row in _rows(str(runs_folder), "--sort", key)][:len(order)] == order


def test_the_table_shows_the_headline_metric_and_accuracy(runs_folder):
    result = runner.invoke(app, ["runs", str(runs_folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "model", "best", "epoch", "val", "f1_macro", "val", "accuracy", "test", "f1_macro",
                                "test", "accuracy", "train", "time", "date"]
    metrics = json.loads((runs_folder / "beta" / runs.METRICS_FILE).read_text())
    accuracy = [f"{metrics[split]['accuracy']:.4f}" for split in ("validation", "test")]
    assert lines[1].split()[:8] == ["beta", "finished", "tiny", "3", "0.9500", accuracy[0], "0.6000", accuracy[1]]
    assert lines[-1].split()[:5] == ["stopped", "unfinished", "(stopped", "at", "checkpoint-45)"]


def test_a_run_in_progress_is_running(runs_folder):
    with runlock.locked(runs_folder / "stopped"):
        [row] = _rows(str(runs_folder / "stopped"))  # a run folder itself is its one row
    assert (row["status"], row["detail"]) == ("running", f"step 45, pid {os.getpid()}")


def test_an_unknown_metric_or_folder_is_one_line(runs_folder, tmp_path):
    result = runner.invoke(app, ["runs", str(runs_folder), "--sort", "f1"])
    assert_one_line_error(result, "--sort f1: no run has this metric; use name, date, a metric (accuracy, ece, f1_macro,")
    assert "threshold" not in result.output  # a tuned setting, not a metric to sort by
    assert_one_line_error(runner.invoke(app, ["runs", str(tmp_path / "nowhere")]),
                          f"{tmp_path / 'nowhere'}: no such folder; give the folder your runs are in (default ./runs)")


def test_a_search_folder_lists_its_trials(trained_run, tmp_path):
    search = tmp_path / "search"  # what `bertcls tune` leaves: its own record, the study's files, trials, figures
    shutil.copytree(trained_run, search / "trial-0")
    (search / "figures").mkdir()
    for name in (runs.SEARCH_FILE, runs.RECORD_FILE):
        (search / name).write_text("{}")
    assert [(row["name"], row["status"]) for row in _rows(str(search))] == [("trial-0", "finished")]
    # among other runs, a search is one row that says what it is, not a run that never started
    assert [(row["name"], row["status"], row["detail"]) for row in _rows(str(tmp_path))] == [
        ("search", "search", f"1 run(s) in it; bertcls runs {search} lists them")]


def test_a_nan_metric_sorts_with_the_missing_and_leaves_the_order_right():
    from bertcls.compare import Row, sort_rows

    scores = {"a": 0.90, "b": float("nan"), "c": 0.95, "d": 0.70, "e": float("inf"), "f": None}
    rows = [Row(name, name, "finished", validation={"accuracy": value}) for name, value in scores.items()]
    assert [row.name for row in sort_rows(rows, "accuracy")] == ["c", "a", "d", "b", "e", "f"]


def test_numbers_and_sections_no_run_of_ours_writes_are_rows_not_a_crash(trained_run, tmp_path):
    root = tmp_path / "runs"
    for name in ("nan", "listed"):
        shutil.copytree(trained_run, root / name)
    metrics = json.loads((root / "nan" / runs.METRICS_FILE).read_text())
    metrics["train"]["seconds"], metrics["validation"]["accuracy"] = float("inf"), float("nan")
    (root / "nan" / runs.METRICS_FILE).write_text(json.dumps(metrics))  # Python's json writes them as Infinity, NaN
    config = (root / "listed" / runs.CONFIG_FILE).read_text()
    (root / "listed" / runs.CONFIG_FILE).write_text(config.replace("\ntraining:\n", "\ntraining: [1]\nwas_training:\n"))
    result = runner.invoke(app, ["runs", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))}
    assert (rows["nan"]["status"], rows["nan"]["train_seconds"], rows["nan"]["validation"]["accuracy"]) == ("finished", None, None)
    assert (rows["listed"]["status"], rows["listed"]["detail"]) == ("corrupt", "config.yaml: its training section is not a mapping of keys to values")
    table = runner.invoke(app, ["runs", str(root)])
    assert table.exit_code == 0 and [line.split()[:2] for line in table.stdout.splitlines()[1:]] == [["nan", "finished"], ["listed", "corrupt"]]


def test_odd_values_in_a_runs_files_are_a_row_not_a_crash(trained_run, tmp_path):
    for name in ("listed", "deep"):
        shutil.copytree(trained_run, tmp_path / name)
    metrics = json.loads((tmp_path / "listed" / runs.METRICS_FILE).read_text())
    (tmp_path / "listed" / runs.METRICS_FILE).write_text(json.dumps({**metrics, "metric_for_best": ["accuracy"]}))
    (tmp_path / "deep" / runs.METRICS_FILE).write_text("[" * 100_000 + "]" * 100_000)
    rows = {row["name"]: row for row in _rows(str(tmp_path))}
    assert (rows["listed"]["status"], rows["listed"]["metric_for_best"]) == ("finished", "f1_macro")
    assert (rows["deep"]["status"], rows["deep"]["detail"]) == ("corrupt", "metrics.json unreadable: maximum recursion depth exceeded while decoding a JSON array from a unicode string")
