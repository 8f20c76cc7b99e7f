"""The CLI as a user runs it: exit codes, one-line errors, files on disk."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bertcls.cli import app
from conftest import make_config, write_csv

runner = CliRunner()


def bertcls(*args, cwd=None, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bertcls", *map(str, args)], capture_output=True, text=True, cwd=cwd, input=stdin, env=env, timeout=300)


def test_train_then_predict_end_to_end(tmp_path, toy_data, monkeypatch):
    config = make_config(tmp_path, toy_data, output_dir="runs/toy")
    done = bertcls("train", config, "--set", "training.epochs=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "toy"
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.8
    # the rest in this process: what the CLI prints, without paying a Python start-up each
    # no --model: the newest finished run under ./runs, and stderr says which
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTCLS_MODEL", raising=False)
    pred = runner.invoke(app, ["predict", "the film was superb", "the plot was dreadful"])
    assert pred.exit_code == 0, pred.output
    assert [line.split("\t")[0] for line in pred.stdout.splitlines()] == ["positive", "negative"]
    assert "runs/toy" in pred.stderr
    as_json = runner.invoke(app, ["predict", "--json", "--model", str(run), "-"], input="\ufeffgreat acting\nawful\n")  # a BOM, as PowerShell pipes it
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"] and set(rows[0]) == {"text", "label", "score", "probabilities"}
    assert rows[0]["text"] == "great acting"
    evaluated = runner.invoke(app, ["evaluate", str(toy_data["test"]), "--model", str(run), "--output", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] >= 0.8
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"metrics.json", "predictions.csv", "confusion_matrix.png", "roc_curve.png",
                                                               "pr_curve.png", "reliability.png"}
    accuracy = json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"]
    assert "│ negative │" in evaluated.stdout and "│ positive │" in evaluated.stdout  # the per-class table
    assert f"accuracy {accuracy:.4f}" in evaluated.stdout


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["--set", "training.lr=0.1"], "training.lr: unknown key (did you mean 'learning_rate'?)"),
        (lambda d: ["--set", "data.text_column=sentence"], "no column 'sentence' (columns: text, label)"),
        (lambda d: ["--set", f"data.train={d / 'missing.csv'}"], "missing.csv: no such file"),
        (lambda d: ["--set", "model.name=" + str(d)], "not a Hugging Face model folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, toy_data, setup, message):
    config = make_config(tmp_path, toy_data)
    result = runner.invoke(app, ["train", str(config), *setup(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_evaluate_label_unknown_to_the_model(tmp_path, trained_run):
    data = write_csv(tmp_path / "odd.csv", [("great film", "positive"), ("so so", "neutral")])
    result = runner.invoke(app, ["evaluate", str(data), "--model", str(trained_run)])
    assert result.exit_code == 2 and "labels not seen in train: 'neutral'" in result.output


def test_predict_without_any_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTCLS_MODEL", raising=False)
    result = runner.invoke(app, ["predict", "hello"])
    assert result.exit_code == 2 and "no finished run under ./runs" in result.output


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and all(c in result.output for c in ("train", "predict", "evaluate"))


@pytest.mark.parametrize("command", [[], *([name] for name in ("train", "tune", "predict", "evaluate", "check", "export", "serve", "push", "runs"))])
def test_help_shows_no_value_for_a_flag(command):
    """`--json <bool>` reads as if it took a value; `--json true` would then classify the text "true"."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    flags = [line for line in result.output.splitlines() if "<bool>" in line]
    assert not flags, flags


def test_predict_precision_option(trained_run):
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--precision", "fp8", "great"])
    assert result.exit_code == 2 and "Error: --precision: 'fp8' is not a precision; use one of auto, fp32, bf16, fp16" in result.output
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--precision", "bf16", "-v", "a superb film"])
    assert result.exit_code == 0, result.output
    assert "precision: bf16" in result.output and "positive\t" in result.output


# Start-up time: `--help` must not import torch; `predict` must not import what only training needs.
HEAVY_FOR_HELP = ("torch", "transformers", "datasets", "sklearn", "accelerate", "bertcls.config")
TRAINING_ONLY = ("datasets", "sklearn", "bertcls.config", "bertcls.train")


def test_help_and_predict_import_only_what_they_need(trained_run):
    probe = ("import sys, runpy\n"
             "sys.argv = ['bertcls', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('bertcls', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(' '.join(sorted(m for m in {} if m in sys.modules)), file=sys.stderr)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, banned in ((["--help"], HEAVY_FOR_HELP), (["predict", "--model", str(trained_run), "great"], TRAINING_ONLY)):
        done = subprocess.run([sys.executable, "-c", probe.format(banned), *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1:] in ([], [""]), f"{args[0]} imported {done.stderr.strip().splitlines()[-1]}"


def test_ctrl_c_during_an_import_is_interrupted_not_a_traceback(trained_run, monkeypatch):
    from bertcls import predict

    def importing(*args, **kwargs):  # transformers' lazy import wraps a Ctrl-C that lands while it imports
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ModuleNotFoundError("Could not import module 'BertForSequenceClassification'") from exc

    monkeypatch.setattr(predict, "load_predictor", importing)
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "great"])
    assert (result.exit_code, result.output) == (130, "Interrupted.\n")


@pytest.mark.parametrize(("args", "said"), [
    (["export", "--model", "x", "--quantize", "int4"], "Invalid value for '--quantize': 'int4' is not one of 'int8' (see bertcls export --help)"),
    (["predict", "--batch-size", "many", "x"], "Invalid value for '--batch-size': Input should be a valid integer, unable to parse "
                                               "string as an integer (see bertcls predict --help)"),
    (["runs", "--sortt", "x"], "No such option: --sortt (Possible options: --json, --sort) (see bertcls runs --help)"),
    (["train"], "Missing argument 'config' (see bertcls train --help)"),
    (["predict", "-k"], "Option '-k' requires an argument (see bertcls predict --help)"),
    (["--bogus"], "No such option: --bogus (see bertcls --help)"),
    (["trian", "c.yaml"], "No such command 'trian'. Did you mean 'train'? (see bertcls --help)"),
])
def test_options_refused_by_the_command_line_parser_are_one_line_too(args, said):
    result = runner.invoke(app, args)
    assert (result.exit_code, result.stderr) == (2, f"Error: {said}\n")
