"""Scale and hostile inputs: many labels, YAML alias bombs, very long texts, and local data kept out
of shared caches. Each check asserts what stays small (files, messages) rather than timing anything."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcls import data, model, predict, report, runs
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.errors import ConfigError
from bertcls.evaluate import compute_metrics, confusion_cells, score
from bertcls.longtext import Reading
from conftest import make_config, toy_rows, write_csv

runner = CliRunner()


# ---------------------------------------------------------------------------- many labels

@pytest.mark.slow  # in CI's second pass: a run with hundreds of labels and its reports
def test_a_many_label_run_writes_small_files_and_capped_reports(tmp_path, capsys):
    """300 labels: no labels-squared matrix in metrics.json, no per-label table in a checkpoint,
    top-k columns in predictions.csv, a focused confusion figure and a capped terminal table."""
    from bertcls.train import train

    labels = 300
    rows = lambda n, seed: [(f"{text} cue{i % labels}", f"label{i % labels:03d}") for i, (text, _) in enumerate(toy_rows(n, seed))]  # noqa: E731
    files = {"train": write_csv(tmp_path / "train.csv", rows(600, 0)), "validation": write_csv(tmp_path / "validation.csv", rows(300, 1))}
    config = make_config(tmp_path, files, training={"epochs": 1, "batch_size": 64, "precision": "fp32", "loss_curve": False,
                                                     "save_torchscript": False, "report_figures": True})
    run = train(load_config(config))
    metrics_file, state_file = run / runs.METRICS_FILE, next(run.glob("checkpoint-*")) / runs.CHECKPOINT_STATE
    # Dense, one matrix is 90,000 numbers (over 700 KB indented); per-class results are ~40 KB a split.
    assert metrics_file.stat().st_size < 200_000 and state_file.stat().st_size < 20_000
    metrics = json.loads(metrics_file.read_text())["test"]
    assert len(metrics["per_class"]) == labels and set(metrics["confusion_matrix"]) == {"labels", "cells"}
    assert sum(count for _, _, count in metrics["confusion_matrix"]["cells"]) == 300
    state = json.loads(state_file.read_text())
    assert "per_class" not in state["best_metrics"] and "confusion_matrix" not in state["best_metrics"]
    assert state["best_metrics"]["f1_macro"] == pytest.approx(json.loads(metrics_file.read_text())["validation"]["f1_macro"])
    folder = run / runs.REPORTS_DIR / "test"
    header = next(csv.reader(open(folder / report.PREDICTIONS_FILE, encoding="utf-8")))
    assert header == ["text", "gold", "predicted", "score", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3",
                      "label_4", "score_4", "label_5", "score_5"]
    assert (folder / report.CONFUSION_FILE).stat().st_size > 2000 and (folder / report.RELIABILITY_FILE).is_file()
    assert "... and 250 more labels (shown: the 50 with the most rows)" in capsys.readouterr().err


@pytest.mark.parametrize("labels", [3, 60])
def test_both_confusion_forms_read_back_the_same_cells(labels):
    gold = [0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 2, 2, 2, 0]
    names = [f"l{i:02d}" for i in range(labels)]
    confusion = compute_metrics(gold, pred, names)["confusion_matrix"]
    assert ("matrix" in confusion) == (labels <= 50)
    cells = sorted(zip(*(part.tolist() for part in confusion_cells(confusion)), strict=True))
    assert cells == [(0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 2, 1), (2, 0, 1), (2, 2, 2)]
    assert report.worst_confusions(confusion, top=2) == [("l00", "l01", 1, 0.5), ("l01", "l02", 1, 0.5)]
    if labels == 60:  # largest cell first, then by gold and predicted label
        assert confusion["cells"][:2] == [["l02", "l02", 2], ["l00", "l00", 1]]


def test_the_confusion_figure_beyond_fifty_labels_shows_the_largest_confusions():
    names = [f"l{i:03d}" for i in range(500)]
    gold = list(range(500)) + [7] * 5 + [300] * 3
    pred = list(range(500)) + [400] * 5 + [9] * 3
    gold_ids, pred_ids, counts = confusion_cells(compute_metrics(gold, pred, names)["confusion_matrix"])
    kept = report._most_confused(gold_ids, pred_ids, counts, np.bincount(gold_ids, weights=counts, minlength=500))
    assert len(kept) == report.FOCUS_LABELS and {7, 9, 300, 400} <= set(kept.tolist())


def test_many_labels_keep_predictions_csv_to_the_top_labels(tmp_path):
    names = [f"l{i:03d}" for i in range(80)]
    logits = np.zeros((2, 80), dtype=np.float32)
    logits[0, [5, 6, 7]] = [3, 2, 1]
    logits[1, [70, 71]] = [2, 4]
    report.write_report(tmp_path, score(["x", "y"], None, names, logits, [5, 70]))
    rows = list(csv.DictReader(open(tmp_path / report.PREDICTIONS_FILE, encoding="utf-8")))
    assert [rows[0][f"label_{k}"] for k in (1, 2, 3)] == ["l005", "l006", "l007"] and rows[1]["label_1"] == "l071"
    assert float(rows[0]["score_1"]) == pytest.approx(float(rows[0]["score"])) and rows[1]["predicted"] == "l071"


def test_predictions_read_probabilities_from_the_row_and_rank_ties_in_label_order():
    rng = np.random.default_rng(0)
    for _ in range(200):  # few distinct values: many ties, also at the k-th place
        row = rng.integers(0, 4, size=int(rng.integers(1, 12))).astype(np.float32)
        k = int(rng.integers(1, 14))
        assert predict.top_ids(row, k).tolist() == np.argsort(-row, kind="stable")[:k].tolist()
    out = predict.to_predictions(np.array([[0.0, 2.0, 2.0, 1.0]]), Reading([False]), {0: "a", 1: "b", 2: "c", 3: "d"})[0]
    assert list(out.probabilities) == ["a", "b", "c", "d"] and out.probabilities["b"] == out.probabilities["c"] == out.score
    assert out.top(3) == [("b", out.score), ("c", out.score), ("d", out.probabilities["d"])] and sum(out.probabilities.values()) == pytest.approx(1)


# ---------------------------------------------------------------------------- YAML alias bombs, echoed values

LAUGHS = "".join(f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'lol'] * 9)}]\n"
                 for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True))


@pytest.mark.parametrize("uses", ["seed: *i\ndata: {train: a.csv}\n", "data: {train: a.csv, text_column: *i}\n",
                                  "data: {train: a.csv}\ntraining: {class_weights: {a: *i}}\n"])
def test_a_billion_laughs_config_is_refused_at_once(tmp_path, uses):
    (tmp_path / "c.yaml").write_text(LAUGHS + uses, encoding="utf-8")  # 9 ** 9 = 387,420,489 values written out
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert str(err.value) == (f"{tmp_path / 'c.yaml'}: its aliases (*name) repeat more than 10,000 values "
                              '(nested aliases, a "billion laughs"?); write the values out instead')


def test_hostile_set_values_and_recursive_aliases_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: {train: a.csv}\n", encoding="utf-8")
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcd", "bcde", strict=True)]
    result = runner.invoke(app, ["train", "c.yaml", "--set", f"seed=[{', '.join(levels)}]"])
    assert result.exit_code == 2 and result.output == ('Error: --set seed: its aliases (*name) repeat more than 10,000 values '
                                                       '(nested aliases, a "billion laughs"?); write the values out instead\n')
    (tmp_path / "r.yaml").write_text("data: {train: a.csv}\nseed: &s [1, *s]\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "r.yaml"])
    assert result.output == "Error: r.yaml: an alias (*name) refers to the value it is part of; a config cannot be recursive\n"


def test_a_config_with_a_few_anchors_still_loads(tmp_path):
    text = "data:\n  train: &f d.csv\n  validation: *f\n  test: *f\ntraining: {epochs: &n 2, early_stopping_patience: *n}\n"
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.validation == cfg.data.test == str(tmp_path / "d.csv") and cfg.training.early_stopping_patience == 2


def test_echoed_values_and_listed_problems_are_capped(tmp_path):
    unknown = "".join(f"  key{i}: 1\n" for i in range(30))
    (tmp_path / "c.yaml").write_text(f"data: {{train: a.csv}}\ntraining:\n{unknown}", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", ["seed=" + "x" * 100_000])
    message = str(err.value)
    assert message.startswith("seed: input should be a valid integer (got 'xxx") and "...x" in message
    assert message.endswith("; ... and 21 more problem(s)") and message.count("unknown key") == 9 and len(message) < 5000


# ---------------------------------------------------------------------------- very long texts

LONG = " ".join(text for text, _ in toy_rows(3000, 5))  # about 100,000 characters


def _tokenizer():
    from bertcls.model import build_tiny_tokenizer

    return build_tiny_tokenizer([LONG])


@pytest.mark.parametrize("texts, pairs, full", [
    ([LONG, "a short one"], None, [True, False]),
    (["   " * 20_000 + LONG[:400], LONG], None, [True, True]),  # mostly spaces: the cut leaves too few tokens, so it is tokenised whole
    ([LONG, "short"], ["short pair", LONG], [True, True]),  # one long side of a pair
    ([LONG], ["   " * 20_000 + LONG[:400]], [True]),  # a side the cut leaves empty, behind one that fills the row
    ([" ".join(["a" * 120] * 4 + ["c" * 150] + ["a"] * 40)], None, [True]),  # the bound falls in a word: one unknown token whole, many cut
    (["東京 タイトル\n" + "東" * 20_000], None, [True]),  # a run without spaces
])
def test_cutting_long_texts_keeps_exactly_the_tokens_truncation_keeps(texts, pairs, full):
    tokenizer = _tokenizer()
    assert model.cut_long_texts(texts, pairs, 32)[2] == [i for i, long in enumerate(full) if long]  # cut by characters
    encoded = data.encode(data.Split("x", texts, pairs, None), tokenizer, 32)
    whole = tokenizer(texts, pairs, truncation=True, max_length=32)
    assert encoded.input_ids == whole["input_ids"] and encoded.token_type_ids == whole["token_type_ids"]
    assert [len(ids) == 32 for ids in encoded.input_ids] == full


def test_a_long_run_without_spaces_is_cut_not_dropped():
    """Dropped, the text would be left short and tokenised whole: the memory the cut exists to save."""
    texts = ["東京 タイトル\n" + "東" * 100_000, "a few words " + "qz" * 100_000]
    assert [len(text) for text in model.cut_long_texts(texts, None, 32)[0]] == [32 * model.CHARS_PER_TOKEN] * 2


def test_a_pair_with_two_long_sides_is_cut_and_truncated():
    encoded = data.encode(data.Split("x", [LONG], [LONG[::-1]], None), _tokenizer(), 32)
    assert len(encoded.input_ids[0]) == 32 and 0 < sum(encoded.token_type_ids[0]) < 31


@pytest.mark.parametrize("engine", ["torchscript", "pytorch"])
def test_predictors_give_a_cut_long_text_the_logits_of_the_whole(trained_run, monkeypatch, engine):
    predictor = predict.load_predictor(trained_run, device="cpu") if engine == "torchscript" else predict.Predictor.load(trained_run, device="cpu")
    assert predictor.engine == engine
    texts = [LONG, "a great film", "  " * 10_000 + "awful"]
    cut, cut_logits = predictor.predict(texts), predictor.logits(texts)
    monkeypatch.setattr(model, "CHARS_PER_TOKEN", 10**9)  # no cut: the whole texts tokenised, then truncated
    whole, whole_logits = predictor.predict(texts), predictor.logits(texts)
    assert [p.truncated for p in cut] == [p.truncated for p in whole] == [True, False, False]
    np.testing.assert_array_equal(cut_logits, whole_logits)


# ---------------------------------------------------------------------------- no copies in shared caches

READ_ALL = """
import sys
from bertcls.config import DataConfig
from bertcls.data import read_split
for source in sys.argv[1:]:
    split = read_split(source, DataConfig(train=source), "train")
    assert split.texts == ["good film", "bad film"] and split.labels == ["pos", "neg"], split
"""


@pytest.mark.slow  # in CI's second pass: a fresh Python process reading every format
def test_reading_local_files_leaves_nothing_in_the_hugging_face_cache_or_temp(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    write_csv(tmp_path / "d.csv", [(r["text"], r["label"]) for r in rows])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    home, temp = tmp_path / "hf", tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"), "TMPDIR": str(temp)}
    files = [str(tmp_path / f"d.{kind}") for kind in ("csv", "jsonl", "parquet")]
    done = subprocess.run([sys.executable, "-c", READ_ALL, *files], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*")), sorted(home.rglob("*"))
    assert list(temp.iterdir()) == []
