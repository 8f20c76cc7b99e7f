"""Sentence pairs end to end: text_pair_column in train, evaluate, predict --pair and predict --file; and a model is
given texts as it was trained, pairs or single texts."""

import csv
import json
import random
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import DataError
from bertcls.train import train
from conftest import BAD, FILLER, GOOD, assert_one_line_error, make_config, write_csv

runner = CliRunner()


def pair_rows(n, seed):
    """The label lives only in the second segment: a model that ignores the pair cannot learn it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        first = " ".join(rng.sample(FILLER, 4))
        second = " ".join(rng.sample(FILLER, 2) + [rng.choice(GOOD if label == "positive" else BAD)])
        rows.append((first, second, label))
    return rows


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """A tiny run trained on sentence pairs (columns premise and hypothesis), and its data files; shared, read-only."""
    folder = tmp_path_factory.mktemp("pairs")
    header = ("premise", "hypothesis", "label")
    data = {name: write_csv(folder / f"{name}.csv", pair_rows(n, seed), header=header)
            for name, n, seed in (("train", 240, 0), ("validation", 60, 1), ("test", 60, 2))}
    config = make_config(folder, data)
    return train(load_config(config, ["data.text_column=premise", "data.text_pair_column=hypothesis"]), quiet=True), data


def test_pairs_train_evaluate_and_predict(pair_run, tmp_path, monkeypatch):
    run, data = pair_run
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.85
    header_row = next(csv.reader(open(run / "reports" / "test" / "predictions.csv", encoding="utf-8")))
    assert header_row[:2] == ["text", "text_pair"]

    (tmp_path / "best").symlink_to(run / "model")
    monkeypatch.chdir(run / "model")
    # the run's model/ folder reads files with its run's columns too, however it is named
    for i, model in enumerate((run, run / "model", Path("."), tmp_path / "best")):
        evaluated = runner.invoke(app, ["evaluate", str(data["test"]), "-m", str(model), "-o", str(tmp_path / f"eval-{i}")])
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads((tmp_path / f"eval-{i}" / "metrics.json").read_text())["accuracy"] >= 0.85

    predicted = runner.invoke(app, ["predict", "-m", str(run), "the plot and the cast", "the plot and the cast",
                                    "--pair", "really superb", "--pair", "quite dreadful"])
    assert predicted.exit_code == 0, predicted.output
    assert [line.split("\t")[0] for line in predicted.stdout.splitlines()] == ["positive", "negative"]

    # --file reads both columns with the run's mapping
    result = runner.invoke(app, ["predict", "-m", str(run), "-f", str(data["test"]), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    out = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert sum(r["predicted"] == r["label"] for r in out) >= 0.85 * len(out)


PAIR_MODEL = "the model was trained on text pairs (columns 'premise' and 'hypothesis'); give the second texts with "
SINGLE_MODEL = "the model was trained on single texts (column 'text'), not pairs; drop "


@pytest.mark.parametrize("where", ["run", "model folder"])
def test_a_pair_model_refuses_single_texts(pair_run, tmp_path, where):
    run, data = pair_run
    model = run if where == "run" else run / "model"  # the model/ folder of a run is known by its run's record
    result = runner.invoke(app, ["predict", "-m", str(model), "the plot and the cast"])
    assert_one_line_error(result, PAIR_MODEL + "--pair")
    single = write_csv(tmp_path / "single.csv", [(p, label) for p, _, label in pair_rows(10, 3)], header=("premise", "label"))
    for command in (["predict", "-m", str(model), "-f", str(single), "--text-column", "premise"],
                    ["evaluate", str(single), "-m", str(model), "--text-column", "premise"]):
        result = runner.invoke(app, command)  # the run's own pair column is read, and the file lacks it
        assert_one_line_error(result, "no column 'hypothesis' (columns: premise, label); pass --text-pair-column")


def test_a_single_text_model_refuses_pairs(trained_run, tmp_path):
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "a wonderful film", "--pair", "a second text"])
    assert_one_line_error(result, SINGLE_MODEL + "--pair")
    with_pairs = write_csv(tmp_path / "pairs.csv", [("a wonderful film", "superb", "positive")], header=("text", "second", "label"))
    for command in (["predict", "-m", str(trained_run), "-f", str(with_pairs), "--text-pair-column", "second"],
                    ["evaluate", str(with_pairs), "-m", str(trained_run), "--text-pair-column", "second"]):
        assert_one_line_error(runner.invoke(app, command), SINGLE_MODEL + "--text-pair-column")


def test_the_library_refuses_what_the_cli_refuses(trained_run, pair_run):
    from bertcls.predict import load_predictor

    with pytest.raises(DataError, match=re.escape(SINGLE_MODEL.removesuffix("drop ") + "give it texts without pairs")):
        load_predictor(trained_run, device="cpu").predict(["a wonderful film"], ["superb"])
    with pytest.raises(DataError, match=re.escape(PAIR_MODEL.removesuffix("; give the second texts with ") + "; give each text its second text")):
        load_predictor(pair_run[0], device="cpu").logits(["the plot and the cast"])


def test_a_plain_model_folder_takes_texts_with_or_without_pairs(trained_run, tmp_path):
    """Nothing records what a model folder outside a run was trained on: either is taken."""
    plain = tmp_path / "plain"
    shutil.copytree(trained_run / "model", plain)
    for extra in ([], ["--pair", "a second text"]):
        result = runner.invoke(app, ["predict", "-m", str(plain), "a wonderful film", *extra])
        assert result.exit_code == 0, result.output


def test_verbose_names_both_texts_of_a_truncated_pair(pair_run):
    long = " ".join(f"word{i}" for i in range(100))
    result = runner.invoke(app, ["predict", "-m", str(pair_run[0]), "-v", "short", "--pair", long])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [f"note: text pair truncated to 32 tokens together: 'short' with pair {long[:60]!r}..."]


@pytest.mark.slow  # in CI's second pass: an ONNX export of the pair run
def test_an_export_of_a_pair_runs_model_folder_keeps_the_rule(pair_run, tmp_path):
    pytest.importorskip("onnxscript")
    run, _ = pair_run
    exported = runner.invoke(app, ["export", "-m", str(run / "model"), "-o", str(tmp_path / "onnx")])
    assert exported.exit_code == 0, exported.output
    assert_one_line_error(runner.invoke(app, ["predict", "-m", str(tmp_path / "onnx"), "the plot and the cast"]), PAIR_MODEL + "--pair")
