"""Sentence pairs end to end: text_pair_column in train, evaluate, predict --pair and predict --file."""

import csv
import json
import random

from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.config import load_config
from bertcls.train import train
from conftest import BAD, FILLER, GOOD, make_config, write_csv

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


def test_pairs_train_evaluate_and_predict(tmp_path):
    header = ("premise", "hypothesis", "label")
    data = {name: write_csv(tmp_path / f"{name}.csv", pair_rows(n, seed), header=header)
            for name, n, seed in (("train", 240, 0), ("validation", 60, 1), ("test", 60, 2))}
    config = make_config(tmp_path, data)
    run = train(load_config(config, ["data.text_column=premise", "data.text_pair_column=hypothesis"]), quiet=True)
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.85
    header_row = next(csv.reader(open(run / "reports" / "test" / "predictions.csv", encoding="utf-8")))
    assert header_row[:2] == ["text", "text_pair"]

    evaluated = runner.invoke(app, ["evaluate", str(data["test"]), "-m", str(run), "-o", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] >= 0.85

    predicted = runner.invoke(app, ["predict", "-m", str(run), "the plot and the cast", "the plot and the cast",
                                    "--pair", "really superb", "--pair", "quite dreadful"])
    assert predicted.exit_code == 0, predicted.output
    assert [line.split("\t")[0] for line in predicted.stdout.splitlines()] == ["positive", "negative"]

    # --file reads both columns with the run's mapping
    result = runner.invoke(app, ["predict", "-m", str(run), "-f", str(data["test"]), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    out = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert sum(r["predicted"] == r["label"] for r in out) >= 0.85 * len(out)
