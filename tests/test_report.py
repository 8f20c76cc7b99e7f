import csv
import io
import json

import numpy as np
import pytest

from bertcls import report, runs
from bertcls.evaluate import compute_metrics, score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluation(names, gold, logits, pairs=None):
    texts = [f"text {i}" for i in range(len(gold))]
    return score(texts, pairs, names, np.asarray(logits, dtype=np.float32), gold, loss=0.3)


def _is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_binary_report_has_every_file_and_the_curves(tmp_path):
    ev = _evaluation(["negative", "positive"], [0, 1, 1, 0, 1], [[2, 0], [0, 1], [1, 0], [0, 3], [-1, 1]])
    written = report.write_report(tmp_path, ev)
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "pr_curve.png", "predictions.csv", "reliability.png", "roc_curve.png"]
    assert all(_is_png(p) for p in written if p.suffix == ".png")
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv", encoding="utf-8")))
    assert list(rows[0]) == ["text", "gold", "predicted", "score", "prob_negative", "prob_positive"]
    assert [r["gold"] for r in rows] == ["negative", "positive", "positive", "negative", "positive"]
    assert [r["predicted"] for r in rows] == ["negative", "positive", "negative", "positive", "positive"]
    assert float(rows[0]["prob_negative"]) + float(rows[0]["prob_positive"]) == pytest.approx(1, abs=1e-5)
    assert float(rows[0]["score"]) == pytest.approx(1 / (1 + np.exp(-2)), abs=1e-5)


def test_multiclass_report_has_no_binary_curves_and_keeps_pairs(tmp_path):
    ev = _evaluation(["a", "b", "c"], [0, 1, 2], np.eye(3), pairs=["x", "y", "z"])
    names = sorted(p.name for p in report.write_report(tmp_path, ev))
    assert names == ["confusion_matrix.png", "predictions.csv", "reliability.png"]
    header = next(csv.reader(open(tmp_path / "predictions.csv", encoding="utf-8")))
    assert header[:2] == ["text", "text_pair"] and header[-3:] == ["prob_a", "prob_b", "prob_c"]


def test_many_long_labels_still_draw(tmp_path):
    names = [f"category number {i}" for i in range(30)]
    gold = list(range(30)) * 2
    report.write_report(tmp_path, _evaluation(names, gold, np.random.default_rng(0).normal(size=(60, 30))))
    assert _is_png(tmp_path / "confusion_matrix.png")


def test_terminal_report_shows_classes_headline_and_worst_confusions():
    out = io.StringIO()
    metrics = compute_metrics([0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 2, 2], ["alpha", "beta", "gamma"])
    report.print_report(metrics, file=out)
    text = out.getvalue()
    assert all(n in text for n in ("alpha", "beta", "gamma", "precision", "support", "accuracy 0.5000"))
    assert "alpha → beta: 2 (66.7% of alpha)" in text and text.index("alpha → beta") < text.index("beta → gamma")
    assert "gamma →" not in text  # no mistakes on gamma


def test_loss_curve_reads_the_run_log(tmp_path):
    lines = [{"step": s, "epoch": 1, "loss": 1 / s} for s in (1, 2, 3)] + [{"step": 3, "epoch": 1, "split": "validation", "loss": 0.5}]
    (tmp_path / runs.LOG_FILE).write_text("\n".join(map(json.dumps, lines)) + "\n")
    assert _is_png(report.write_loss_curve(tmp_path))


def test_a_training_run_writes_reports_and_loss_curve(trained_run):
    for split in ("validation", "test"):
        folder = trained_run / runs.REPORTS_DIR / split
        assert {p.name for p in folder.iterdir()} >= {"predictions.csv", "confusion_matrix.png", "roc_curve.png", "pr_curve.png", "reliability.png"}
        assert sum(1 for _ in open(folder / "predictions.csv", encoding="utf-8")) == 61  # header + 60 rows
    metrics = json.loads((trained_run / runs.METRICS_FILE).read_text())
    assert metrics["test"]["roc_auc"] > 0.9 and 0 <= metrics["test"]["ece"] < 0.5
    assert _is_png(trained_run / runs.LOSS_FILE)
