import subprocess
import sys

import pytest

from bertcls import runs
from bertcls.errors import RunError
from bertcls.predict import Predictor


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
