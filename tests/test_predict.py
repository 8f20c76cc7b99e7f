import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bertcls import runs
from bertcls.cli import app
from bertcls.errors import RunError
from bertcls.predict import ONNX_META, Predictor, load_predictor
from conftest import assert_one_line_error


def test_predicts_labels_from_id2label_in_input_order(trained_run):
    p = Predictor.load(trained_run, batch_size=2)
    texts = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring"]
    out = p.predict(texts)
    assert [o.label for o in out] == ["positive", "negative", "positive", "negative"]
    assert all(abs(sum(o.probabilities.values()) - 1) < 1e-5 and o.score == max(o.probabilities.values()) for o in out)


def test_batching_does_not_change_results(trained_run):
    texts = [f"the movie {w} really" for w in ["great", "awful", "dull", "charming", "the"] * 3]
    one = Predictor.load(trained_run, batch_size=1).predict(texts)
    many = Predictor.load(trained_run, batch_size=64).predict(texts)
    assert [o.label for o in one] == [o.label for o in many]
    assert [o.score for o in one] == pytest.approx([o.score for o in many], abs=1e-5)


@pytest.mark.parametrize("text", ["", "   ", "x" * 100_000, "😀 映画 فيلم", "\x00\x07\t\n"])
def test_edge_texts_all_get_a_label(trained_run, text):
    (out,) = Predictor.load(trained_run).predict([text])
    assert out.label in ("positive", "negative")


def test_bytes_that_are_not_utf8_are_a_one_line_error_naming_the_text(trained_run):
    """On a command line or stdin, Python keeps such bytes as lone surrogates, which no tokenizer takes."""
    command = [sys.executable, "-m", "bertcls", "predict", "--model", str(trained_run)]
    for extra, stdin, number in (([b"fine", b"caf\xe9 movie"], None, 2), (["-"], b"caf\xe9 movie\nfine\n", 1)):
        done = subprocess.run([*command, *extra], input=stdin, capture_output=True)
        assert done.returncode == 2 and done.stdout == b"", done.stderr
        assert done.stderr.decode() == (f"Error: text {number} is not valid Unicode (a lone surrogate at character 4, from bytes "
                                        "that are not UTF-8 or an escape like \\ud800); give UTF-8 text\n")


def test_long_text_is_marked_truncated(trained_run):
    long, short = Predictor.load(trained_run).predict(["great " * 500, "great"])
    assert long.truncated and not short.truncated


def test_plain_model_folder_works_too(trained_run):
    assert Predictor.load(trained_run / "model").predict(["superb"])[0].label == "positive"


def test_default_model_is_the_newest_finished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runs.MODEL_ENV, raising=False)
    with pytest.raises(RunError, match="no finished run under ./runs"):
        runs.find_model(None)
    for name in ("old", "new", "unfinished"):
        (tmp_path / "runs" / name / "model").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "metrics.json").write_text("{}")
    (tmp_path / "runs" / "new" / "metrics.json").write_text("{}")
    import os

    os.utime(tmp_path / "runs" / "old" / "metrics.json", (1, 1))
    assert runs.find_model(None)[0].name == "new"
    (tmp_path / "runs" / "old" / "model" / "config.json").write_text("{}")
    monkeypatch.setenv(runs.MODEL_ENV, str(tmp_path / "runs" / "old"))
    assert runs.find_model(None) == (tmp_path / "runs" / "old", f"${runs.MODEL_ENV}")


def test_precision_auto_follows_the_run_and_bf16_keeps_the_labels(trained_run):
    fp32 = Predictor.load(trained_run)  # the toy run trained in fp32, so auto predicts in fp32
    assert fp32.precision == "fp32"
    bf16 = Predictor.load(trained_run, precision="bf16")
    texts = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring"]
    assert [o.label for o in bf16.predict(texts)] == [o.label for o in fp32.predict(texts)]
    assert bf16.logits(texts) == pytest.approx(fp32.logits(texts), abs=0.1)


@pytest.mark.parametrize(("precision", "message"), [("fp8", "use one of auto, fp32, bf16, fp16"), ("fp16", "fp16 needs a CUDA device")])
def test_bad_precision_is_a_config_error(trained_run, precision, message):
    from bertcls.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Predictor.load(trained_run, device="cpu", precision=precision)


def test_a_model_folder_copied_without_its_run_reads_texts_as_the_run_did(trained_run, tmp_path):
    """Training records its max_length in the model's config.json: the folder alone (no run config.yaml beside it,
    no traced graph) truncates a long text where the run does, and gives the run's scores."""
    alone = shutil.copytree(trained_run / "model", tmp_path / "copied", ignore=shutil.ignore_patterns(runs.TORCHSCRIPT_FILE))
    text = "the plot " + "is long " * 40
    run = load_predictor(trained_run, device="cpu")
    copied = load_predictor(alone, device="cpu")
    assert (run.engine, copied.engine) == ("torchscript", "pytorch") and copied.max_length == run.max_length == 32
    ((ours, theirs),) = zip(copied.predict([text]), run.predict([text]), strict=True)
    assert ours.truncated and theirs.truncated
    assert dict(ours.probabilities) == pytest.approx(dict(theirs.probabilities), abs=1e-4)


def _edit_json(file, **changes):
    file.write_text(json.dumps({**json.loads(file.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def _one_label(run):
    _edit_json(run / "model" / "config.json", id2label={"0": "negative"}, label2id={"negative": 0})
    return run


def _threshold(run):
    _edit_json(run / "model" / "config.json", problem_type="multi_label_classification", multi_label_threshold="0.5x")
    return run


def _config_json_list(run):
    (run / "model" / "config.json").write_text("[]", encoding="utf-8")
    return run


def _config_yaml(text):
    def spoil(run):
        (run / runs.CONFIG_FILE).write_text(text, encoding="utf-8")
        return run
    return spoil


def _export_meta(run):
    """The run's ONNX export, whose bertcls-onnx.json lost its keys."""
    export = run.parent / "export"
    result = CliRunner().invoke(app, ["export", "--model", str(run), "--format", "onnx", "--output", str(export)])
    assert result.exit_code == 0, result.output
    (export / ONNX_META).write_text('{"max_length": 32}', encoding="utf-8")
    return export


def _export_max_length(run):
    export = _export_meta(run)
    (export / ONNX_META).write_text('{"max_length": -5, "inputs": ["input_ids", "attention_mask"]}', encoding="utf-8")
    return export


# How a copy of the shared run is damaged (returning the folder to give --model), the command, what the one line must say.
DAMAGED = [
    pytest.param(_one_label, "predict", "id2label in its config.json names 1 label(s) (ids 0)", id="id2label-short"),
    pytest.param(_threshold, "predict", "its multi_label_threshold ('0.5x') is not a number between 0 and 1", id="threshold"),
    pytest.param(_config_json_list, "predict", "cannot load the model (its config.json is no model config (a JSON object, its id2label a mapping))", id="config-json-list"),
    pytest.param(_config_yaml("data: [\n"), "predict", "config.yaml:2:1: invalid YAML", id="yaml-predict"),
    pytest.param(_config_yaml("data: [\n"), "evaluate", "config.yaml:2:1: invalid YAML", id="yaml-evaluate"),
    pytest.param(_config_yaml("- data\n"), "predict", "config.yaml: holds a list, not the run's config", id="yaml-list"),
    pytest.param(_config_yaml("data: [1]\n"), "evaluate", "its data section is not a mapping", id="yaml-section-list"),
    pytest.param(_config_yaml(""), "evaluate", "config.yaml: incomplete (no data or model section), not the config bertcls wrote; "
                 "restore the file the run was trained with, or train again", id="yaml-emptied"),
    pytest.param(_export_meta, "predict", "not a complete `bertcls export` folder (bertcls-onnx.json has no inputs)", id="export-meta",
                 marks=pytest.mark.slow),  # in CI's second pass: a real export
    pytest.param(_export_max_length, "predict", "not a complete `bertcls export` folder (its max_length -5 is no number of tokens)",
                 id="export-max-length", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("spoil", "command", "message"), DAMAGED)
def test_a_damaged_or_edited_model_folder_is_a_one_line_error(trained_run, tmp_path, spoil, command, message):
    """On the CPU: the traced graph's path (a run) or ONNX's (the export)."""
    model = spoil(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*", "reports", "*.png")))
    options = ["a wonderful film"] if command == "predict" else [str(trained_run.parent / "validation.csv")]
    result = CliRunner().invoke(app, [command, "--model", str(model), "--device", "cpu", *options])
    assert_one_line_error(result, message)
