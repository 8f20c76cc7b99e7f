"""Multi-label classification end to end: labels as lists or separated strings, sigmoid + BCE, thresholds."""

import csv
import importlib.util
import json
import random
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.config import DataConfig, load_config
from bertcls.data import LabelMap, read_split
from bertcls.errors import DataError
from bertcls.evaluate import multilabel_metrics, tune_threshold
from bertcls.predict import Predictor
from bertcls.train import train
from conftest import FILLER, make_config, write_csv

runner = CliRunner()
TOPICS = {"food": ["cheese", "soup"], "music": ["guitar", "piano"], "sport": ["football", "tennis"]}


def topic_rows(n, seed, separator=";"):
    """Each topic present in a row adds one of its cue words; a row may have no topic at all."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topics = sorted(t for t in TOPICS if rng.random() < 0.45)
        words = rng.sample(FILLER, 2) + [rng.choice(TOPICS[t]) for t in topics]
        rng.shuffle(words)
        rows.append((" ".join(words), separator.join(topics)))
    return rows


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilabel")
    data = {name: write_csv(folder / f"{name}.csv", topic_rows(n, seed, "|")) for name, n, seed in (("train", 300, 0), ("validation", 60, 1), ("test", 60, 2))}
    config = make_config(folder, data, training={"epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "tune_threshold": True, "report_figures": True,
                                                                 "save_torchscript": True})
    return train(load_config(config, ["data.task=multi_label", "data.label_separator='|'"]), quiet=True), data


def test_multilabel_run_learns_and_saves_problem_type_and_threshold(multilabel_run):
    run, _ = multilabel_run
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["f1_micro"] >= 0.8 and test["accuracy"] >= 0.6 and test["hamming_loss"] <= 0.15, test
    assert set(test["per_class"]) == {"food", "music", "sport"} and "confusion_matrix" not in test
    model_config = json.loads((run / "model" / "config.json").read_text())
    assert model_config["problem_type"] == "multi_label_classification"
    assert model_config["multi_label_threshold"] == metrics["validation"]["threshold"] == test["threshold"]
    rows = list(csv.DictReader(open(run / "reports" / "test" / "predictions.csv", encoding="utf-8")))
    assert list(rows[0])[-3:] == ["prob_food", "prob_music", "prob_sport"]
    assert sum(r["gold"] == r["predicted"] for r in rows) >= 0.6 * len(rows)
    assert any("|" in r["predicted"] for r in rows)  # a row's labels joined as the data joined them
    assert (run / "reports" / "test" / "confusion_matrix.png").stat().st_size > 2000


def test_predict_prints_every_label_above_the_threshold(multilabel_run):
    run, _ = multilabel_run
    threshold = json.loads((run / "model" / "config.json").read_text())["multi_label_threshold"]
    texts = ["the cheese and the guitar", "the film was quite", "tennis and piano and soup"]
    as_json = runner.invoke(app, ["predict", "-m", str(run), "--json", *texts])
    as_text = runner.invoke(app, ["predict", "-m", str(run), *texts])
    assert as_json.exit_code == 0 and as_text.exit_code == 0, as_json.output + as_text.output
    for record, line in zip(map(json.loads, as_json.stdout.splitlines()), as_text.stdout.removesuffix("\n").split("\n"), strict=True):
        above = sorted((label for label, p in record["probabilities"].items() if p >= threshold), key=lambda k: -record["probabilities"][k])
        assert record["labels"] == above and line.split("\t")[0::2] == (above or [""])
    first = json.loads(as_json.stdout.splitlines()[0])
    assert {"food", "music"} <= set(first["labels"])


def test_evaluate_and_predict_file_on_multilabel(tmp_path, multilabel_run):
    run, data = multilabel_run
    result = runner.invoke(app, ["evaluate", str(data["test"]), "-m", str(run), "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "subset accuracy" in result.stdout and "hamming_loss" in result.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["f1_micro"] >= 0.85
    result = runner.invoke(app, ["predict", "-m", str(run), "-f", str(data["test"]), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(isinstance(r["predicted"], list) for r in out)
    assert sum("|".join(sorted(r["predicted"])) == r["label"] for r in out) >= 0.6 * len(out)
    # A csv output joins a row's labels as the training data did, so that evaluate reads them back as they were: from the
    # run, and from a copy of its model folder alone (what push uploads), whose config.json says how
    shutil.copytree(run / "model", tmp_path / "plain")
    for model in (run, tmp_path / "plain"):
        out = tmp_path / f"{model.name}.csv"
        result = runner.invoke(app, ["predict", "-m", str(model), "-f", str(data["test"]), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert any("|" in row["predicted"] for row in csv.DictReader(open(out, encoding="utf-8")))
        result = runner.invoke(app, ["evaluate", str(out), "-m", str(model), "--label-column", "predicted", "-o", str(tmp_path / f"{model.name}-self")])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"{model.name}-self" / "metrics.json").read_text())["accuracy"] == 1.0  # its own predictions


@pytest.mark.parametrize("kept", ["", "|\n", 7, None])
def test_a_saved_separator_that_is_none_is_one_line_not_a_fallback(tmp_path, multilabel_run, kept):
    """A hand-edited config.json (or a run's config.yaml from before line breaks were refused): said, not replaced by ';'."""
    run, data = multilabel_run
    shutil.copytree(run / "model", tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    (tmp_path / "plain" / "config.json").write_text(json.dumps({**config, "bertcls_label_separator": kept}))
    for command in (["evaluate", str(data["test"]), "-m", str(tmp_path / "plain")],
                    ["predict", "-m", str(tmp_path / "plain"), "-f", str(data["test"]), "-o", str(tmp_path / "out.csv")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output == (f"Error: {tmp_path / 'plain' / 'config.json'}: its bertcls_label_separator ({kept!r}) is no separator "
                                 "of a row's labels (a text on one line); set the one the model was trained with\n")


def test_the_checkpoint_is_multilabel_for_transformers_pipeline(multilabel_run):
    from transformers import pipeline

    run, _ = multilabel_run
    scores = pipeline("text-classification", model=str(run / "model"), device="cpu", top_k=None)(["soup and piano"])[0]
    ours = Predictor.load(run).predict(["soup and piano"])[0].probabilities
    assert {s["label"]: s["score"] for s in scores} == pytest.approx(ours, abs=1e-5)  # the same sigmoid, not a softmax
    assert sum(ours.values()) != pytest.approx(1.0, abs=1e-3)


def test_labels_as_lists_in_jsonl_and_separated_strings_in_csv(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n{"text": "c", "label": ["y"]}\n')
    split = read_split(str(jsonl), DataConfig(train=str(jsonl), task="multi_label"), "train")
    assert split.labels == [["x", "y"], [], ["y"]]
    tsv = write_csv(tmp_path / "d.tsv", [("a", "x|y"), ("b", ""), ("c", " y ")], delimiter="\t")
    split = read_split(str(tsv), DataConfig(train=str(tsv), task="multi_label", label_separator="|"), "train")
    assert split.labels == [["x", "y"], [], ["y"]]
    labels = LabelMap.from_values(split.labels, multi_label=True)
    assert labels.names == ("x", "y") and labels.encode(split.labels, "train") == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    with pytest.raises(DataError, match="labels not seen in train: 'z'"):
        labels.encode([["z"]], "validation")


def write_jsonl(path, labels):
    """One row per label list, with a text the tiny model can read."""
    path.write_text("".join(json.dumps({"text": f"the film {i}", "label": row}) + "\n" for i, row in enumerate(labels)), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "item, message",
    [
        (None, "has null among its labels; a label is a string or an integer: remove the null"),
        (1.5, "has 1.5 among its labels; a label is a string or an integer: write the label's name or a whole number"),
        (["pos", "fun"], 'has ["pos", "fun"] among its labels; a label is a string or an integer: give each row one flat list of labels'),
        ({"k": 1}, 'has {"k": 1} among its labels; a label is a string or an integer: give each row one flat list of labels'),
        (True, "has true among its labels; a label is a string or an integer: list the names of the labels the row has, not true/false per label"),
    ],
    ids=["null", "fraction", "nested list", "object", "true"],
)
def test_a_list_item_that_is_no_string_or_integer_is_refused_naming_row_and_item(tmp_path, item, message):
    path = write_jsonl(tmp_path / "train.jsonl", [["a"], [item, "b"], ["b"]])
    config = make_config(tmp_path, {"train": path, "validation": path})
    result = runner.invoke(app, ["train", str(config), "--set", "data.task=multi_label"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: train ({path}): data row 2 of column 'label' {message}"


def test_a_label_holding_the_separator_is_refused_before_training(tmp_path):
    """Outputs join a row's labels with data.label_separator: a label holding it would read back as two."""
    path = write_jsonl(tmp_path / "train.jsonl", [["a"], ["x|y", "b"], ["b"]])
    with pytest.raises(DataError) as error:
        read_split(str(path), DataConfig(train=str(path), task="multi_label", label_separator="|"), "train")
    assert "data row 2 of column 'label' has the label 'x|y', which holds data.label_separator ('|')" in str(error.value)
    path = write_jsonl(tmp_path / "train.jsonl", [["a"], ["x;y", "b"], ["b"]])  # ';' is a label's own with another separator
    split = read_split(str(path), DataConfig(train=str(path), task="multi_label", label_separator="|"), "train")
    assert split.labels[1] == ["b", "x;y"]


def test_a_row_whose_labels_are_null_or_missing_is_refused_not_read_as_none(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": ["x"]}\n{"text": "b", "labels": ["y"]}\n{"text": "c", "label": null}\n{"text": "d", "label": ["y"]}\n')
    with pytest.raises(DataError) as error:
        read_split(str(path), DataConfig(train=str(path), task="multi_label"), "train")
    assert str(error.value) == (f"train ({path}): 2 row(s) without a value in column 'label' (data rows 2, 3); give each row its list "
                                "of labels ([] for none), or remove those rows")


def test_a_train_file_where_no_row_has_a_label_says_so(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [[], [], []])
    config = make_config(tmp_path, {"train": path, "validation": path})
    result = runner.invoke(app, ["train", str(config), "--set", "data.task=multi_label"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"Error: train ({path}): no row has a label (every row's list of labels is empty); "
                                     "label the rows, with at least two different labels in all")


def test_integer_labels_are_in_numeric_order_in_the_saved_model(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [[2], [10], [1], [2.0, 10], [], [1]] * 2)  # 2.0 is the label 2, as single-label reads it
    config = make_config(tmp_path, {"train": path, "validation": path}, training={"epochs": 1})
    run = train(load_config(config, ["data.task=multi_label"]), quiet=True)
    assert json.loads((run / "model" / "config.json").read_text())["id2label"] == {"0": "1", "1": "2", "2": "10"}
    csv_train = write_csv(tmp_path / "train.csv", [("a", "2"), ("b", "10;2"), ("c", "1"), ("d", " 007 ")])  # csv labels are text
    split = read_split(str(csv_train), DataConfig(train=str(csv_train), task="multi_label"), "train")
    assert LabelMap.from_values(split.labels, multi_label=True).names == ("007", "1", "10", "2")  # "007" is a name: all sort as text
    assert LabelMap.from_values(split.labels[:3], multi_label=True).names == ("1", "2", "10")


def test_lists_without_multi_label_task_say_how_to_fix(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": ["x", "y"]}\n')
    with pytest.raises(DataError, match="set data.task: multi_label"):
        read_split(str(jsonl), DataConfig(train=str(jsonl)), "train")


def test_multilabel_metrics_by_hand_and_threshold_tuning():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.6, 0.1]])
    m = multilabel_metrics(gold, probs, ["a", "b", "c"], 0.5)
    # predicted: [1,0,0] [0,1,0] [1,1,0] -> rows 2 and 3 exact; one of 9 decisions wrong (row 1, c)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["hamming_loss"] == pytest.approx(1 / 9)
    assert m["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1)) and m["per_class"]["c"]["fn"] == 1
    assert tune_threshold(gold, probs) <= 0.4  # 0.4 catches row 1's c without any false positive


@pytest.mark.slow  # in CI's second pass: an ONNX export of the multi-label run
def test_traced_graph_and_onnx_export_keep_the_multilabel_decisions(multilabel_run, tmp_path):
    from bertcls.predict import load_predictor

    run, _ = multilabel_run
    texts = ["the cheese and the guitar", "the film was quite", "tennis and piano and soup", "football"]
    reference = Predictor.load(run, device="cpu").predict(texts)
    traced = load_predictor(run, device="cpu")
    assert traced.engine == "torchscript"
    predictors = [traced]
    if all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")):
        result = runner.invoke(app, ["export", "-m", str(run), "--format", "onnx", "-o", str(tmp_path / "onnx")])
        assert result.exit_code == 0, result.output
        predictors.append(load_predictor(tmp_path / "onnx"))
    for predictor in predictors:
        assert predictor.threshold == Predictor.load(run).threshold
        out = predictor.predict(texts)
        assert [o.labels for o in out] == [o.labels for o in reference], predictor.engine
        assert [o.probabilities for o in out] == [pytest.approx(o.probabilities, abs=1e-4) for o in reference]


def test_multilabel_with_balanced_class_weights_trains(tmp_path):
    data = {name: write_csv(tmp_path / f"{name}.csv", topic_rows(n, seed)) for name, n, seed in (("train", 120, 0), ("validation", 30, 1))}
    config = make_config(tmp_path, data, training={"epochs": 1, "class_weights": "balanced", "save_torchscript": False})
    run = train(load_config(config, ["data.task=multi_label"]), quiet=True)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert set(test["per_class"]) == {"food", "music", "sport"}
    # Hamming loss: the share of (row, label) decisions that are wrong, recomputed from the written predictions
    rows = list(csv.DictReader(open(run / "reports" / "test" / "predictions.csv", encoding="utf-8")))
    wrong = sum(len(set(filter(None, r["gold"].split(";"))) ^ set(filter(None, r["predicted"].split(";")))) for r in rows)
    assert test["hamming_loss"] == pytest.approx(wrong / (len(rows) * 3))
