import fcntl
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcls import atomic, runs
from bertcls.cli import app
from bertcls.evaluate import absent_note, compute_metrics, is_better, multilabel_metrics, reliability
from bertcls.predict import softmax
from conftest import assert_one_line_error, file_size_limit, files_in, toy_rows, write_csv

runner = CliRunner()


def test_metrics_match_hand_computed_values():
    # gold: a a a b b c ; pred: a a b b c c
    m = compute_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"], loss=0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: a p=1 r=2/3 ; b p=1/2 r=1/2 ; c p=1/2 r=1
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["f1_micro"] == pytest.approx(4 / 6)
    assert m["f1_weighted"] == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    assert m["loss"] == 0.5 and m["num_examples"] == 6


def test_a_class_neither_in_gold_nor_predicted_is_left_out_of_macro_averages():
    m = compute_metrics([0, 0], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": None, "recall": None, "f1": None, "support": 0}  # listed, not an error; 0/0 is no score
    assert (m["f1_macro"], m["precision_macro"], m["recall_macro"], m["f1_weighted"]) == (1.0, 1.0, 1.0, 1.0)
    # predicted without examples, b counts (F1 0: its one prediction is wrong); c, in neither, is still left out
    m = compute_metrics([0, 0], [0, 1], ["a", "b", "c"])
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3) and m["per_class"]["b"]["f1"] == 0.0
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0) / 2) and m["recall_macro"] == pytest.approx((1 / 2 + 0) / 2)
    # 0/0 is no score: b's recall (no example); c's precision, recall and F1 (neither an example nor a prediction)
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}


def test_multi_label_macro_averages_leave_out_labels_neither_in_gold_nor_predicted():
    gold = np.array([[1, 0, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.1], [0.8, 0.2, 0.1]])  # at 0.5: a right twice, b missed once, c never there
    m = multilabel_metrics(gold, probs, ["a", "b", "c"], threshold=0.5)
    assert m["per_class"]["c"]["support"] == 0 and m["per_class"]["b"]["f1"] == 0.0
    assert [m["per_class"]["c"][key] for key in ("precision", "recall", "f1", "tp", "fp")] == [None, None, None, 0, 0]
    assert m["f1_macro"] == pytest.approx((1.0 + 0.0) / 2)


def test_evaluate_names_the_classes_a_file_has_no_example_of(trained_run, tmp_path):
    texts = ["a wonderful film", "the plot was great and the cast superb", "superb"]  # the toy run gets these right
    only_positive = write_csv(tmp_path / "positive.csv", [(text, "positive") for text in texts])
    result = runner.invoke(app, ["evaluate", str(only_positive), "-m", str(trained_run), "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert (f"note: {only_positive} has no example of 1 of the 2 classes (negative); "
            "macro averages are over the classes in its labels or predictions") in result.stderr.splitlines()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["accuracy"], metrics["f1_macro"], metrics["per_class"]["negative"]) == (
        1.0, 1.0, {"precision": None, "recall": None, "f1": None, "support": 0})
    assert metrics["scored_with"] == {"model": str(trained_run.resolve()), "engine": "torchscript", "device": "cpu", "precision": "fp32"}
    assert "f1_macro 1.0000" in result.stdout
    assert re.search(r"negative\s+│\s+—\s+│\s+—\s+│\s+—\s+│\s+0\s", result.stdout), result.stdout



def test_what_a_killed_evaluate_left_in_its_output_goes_with_the_next_one(trained_run, tmp_path):
    """A killed command's temporary folder holds its mark, unlocked, or (killed while making it) is an old, empty new one;
    a live one's mark is locked; a folder of the user's that shares a prefix holds no mark of ours. Only the first two go."""
    output = tmp_path / "eval"
    for name, mark in (("killed00", atomic.MARK_TEXT), ("live0000", atomic.MARK_TEXT), ("mine", None), ("mine0000", b"")):
        folder = output / f"{atomic.FILLING_PREFIX}{name}"
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text("half a fi")
        if mark is not None:
            (folder / atomic.FILLING_MARK).write_bytes(mark)
    for name, age in (("unmade00", 3600), ("making00", 0)):
        (output / f"{atomic.NEW_PREFIX}{name}").mkdir()
        os.utime(output / f"{atomic.NEW_PREFIX}{name}", (time.time() - age,) * 2)
    (output / "notes.txt").write_text("mine")
    held = os.open(output / f"{atomic.FILLING_PREFIX}live0000" / atomic.FILLING_MARK, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the command filling it holds it
    try:
        data = write_csv(tmp_path / "holdout.csv", toy_rows(6, 5))
        result = runner.invoke(app, ["evaluate", str(data), "-m", str(trained_run), "-o", str(output)])
    finally:
        os.close(held)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == [
        f"{atomic.NEW_PREFIX}making00", *(f"{atomic.FILLING_PREFIX}{name}" for name in ("live0000", "mine", "mine0000"))]
    assert (output / f"{atomic.FILLING_PREFIX}mine" / "predictions.csv").read_text() == "half a fi"
    assert (output / "notes.txt").read_text() == "mine" and (output / runs.METRICS_FILE).is_file()


@pytest.mark.parametrize("inside", [".", "model", "CHECKPOINT", "reports/test", "eval"])
def test_evaluate_writes_nothing_into_a_run_folder(trained_run, tmp_path, inside):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    output = run / inside.replace("CHECKPOINT", runs.checkpoints(run)[-1].name)
    data = write_csv(tmp_path / "holdout.csv", toy_rows(6, 5))
    before = files_in(run)
    result = runner.invoke(app, ["evaluate", str(data), "-m", str(run), "-o", str(output)])
    where = "a bertcls run folder" if inside == "." else f"inside the bertcls run folder {run}"
    assert_one_line_error(result, f"--output {output} is {where}, which holds what training wrote; "
                                  "choose a folder outside the run, e.g. eval/run")
    assert files_in(run) == before


def test_evaluate_writes_nothing_into_the_model_folder_it_evaluates(trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run / runs.MODEL_DIR, model)  # a plain model folder, outside any run
    data = write_csv(tmp_path / "holdout.csv", toy_rows(6, 5))
    before = files_in(model)
    result = runner.invoke(app, ["evaluate", str(data), "-m", str(model), "-o", str(model / "eval")])
    assert_one_line_error(result, f"--output {model / 'eval'} is inside the model folder {model}; choose a folder outside it")
    assert files_in(model) == before


def test_no_note_when_every_class_has_an_example():
    assert absent_note(compute_metrics([0, 1], [0, 0], ["a", "b"]), "f.csv") is None
    many = compute_metrics([0], [0], [f"c{i}" for i in range(13)])
    assert absent_note(many, "f.csv") == ("note: f.csv has no example of 12 of the 13 classes (c1, c2, c3, c4, c5, c6, c7, c8, c9, c10 "
                                          "and 2 more); macro averages are over the classes in its labels or predictions")


def test_better_means_lower_only_for_loss():
    assert is_better("loss", 0.1, 0.2) and not is_better("accuracy", 0.1, 0.2) and is_better("f1_macro", 0.1, None)


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p.sum(axis=1), 1) and p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(0.5)


def test_probabilities_add_calibration_error_and_binary_aucs():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    m = compute_metrics([0, 1, 1, 0], probs.argmax(1).tolist(), ["neg", "pos"], probs=probs)
    # gold positive scores 0.2, 0.7; gold negative 0.1, 0.6: 3 of 4 pairs ranked right
    assert m["roc_auc"] == pytest.approx(0.75) and m["positive_label"] == "pos"
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)  # ranked 0.7+ 0.6- 0.2+ 0.1-: precision 1 and 2/3 at the positives
    # one row per confidence bin: |accuracy - confidence| = 0.1 (0.9 right), 0.8 (0.8 wrong), 0.3 (0.7 right), 0.6 (0.6 wrong)
    assert m["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.6) / 4)
    three = compute_metrics([0, 1, 2], [0, 1, 2], ["a", "b", "c"], probs=np.eye(3))
    assert "roc_auc" not in three and three["ece"] == pytest.approx(0.0)


def test_expected_calibration_error_by_hand():
    # bin [0.6, 0.667): confidences 0.6, 0.6, one right -> |0.5 - 0.6| ; bin [0.933, 1]: 1.0 right -> 0
    r = reliability(np.array([0.6, 0.6, 1.0]), np.array([True, False, True]))
    assert r["ece"] == pytest.approx(2 / 3 * 0.1)
    assert r["counts"].sum() == 3 and r["counts"][-1] == 1


def test_evaluate_output_appears_whole_or_not_at_all(trained_run, tmp_path, monkeypatch):
    from bertcls import report

    data = write_csv(tmp_path / "holdout.csv", toy_rows(6, 5))
    output = tmp_path / "new" / "eval"
    with file_size_limit(8 << 10):  # predictions.csv fits, a figure does not: the disk refuses a write half-way
        result = runner.invoke(app, ["evaluate", str(data), "-m", str(trained_run), "-o", str(output)])
    assert result.exit_code == 2 and "Traceback" not in result.output  # after the printed report, one line:
    assert result.output.splitlines()[-1] == (f"Error: --output {output}: File too large; raise the file-size limit (ulimit -f; a FAT32 "
                                              "disk holds files of 4 GiB at most), or choose another --output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holdout.csv"]
    # another process writes the same folder meanwhile: its file stays, and nothing of this one is added beside it
    write_report = report.write_report

    def raced(folder, evaluation, **kwargs):
        (output / runs.METRICS_FILE).write_text("theirs")
        return write_report(folder, evaluation, **kwargs)

    monkeypatch.setattr(report, "write_report", raced)
    result = runner.invoke(app, ["evaluate", str(data), "-m", str(trained_run), "-o", str(output)])
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        f"Error: --output {output}: metrics.json appeared there meanwhile (another process writing the same folder?); "
        "nothing of this one was written there; choose a new folder")
    assert files_in(output) == {"metrics.json": b"theirs"}
    monkeypatch.setattr(report, "write_report", write_report)
    (output / runs.METRICS_FILE).unlink()
    result = runner.invoke(app, ["evaluate", str(data), "-m", str(trained_run), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert sorted(files_in(output)) == sorted([runs.METRICS_FILE, *report.REPORT_FILES])
