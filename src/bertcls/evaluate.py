"""Evaluation: a model and a labelled loader in, logits in input order and scikit-learn metrics out; `evaluate --output`
goes outside run folders and the model evaluated (`runs.check_outside_runs`).

Macro averages are over the classes that occur in the gold labels or the predictions (scikit-learn's default): a
class with no example that is never predicted has no F1 to average (0/0), so it is left out rather than counted
as 0; one that is predicted without examples counts, with F1 0. `absent_note` names the classes without examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertcls import runs
from bertcls.inference import loss_of
from bertcls.predict import sigmoid, softmax

# Equal-width confidence bins of the reliability diagram and the expected calibration error.
CALIBRATION_BINS = 15
# Up to this many labels metrics.json holds the whole confusion matrix; beyond, only its non-zero cells.
DENSE_CONFUSION_MAX_LABELS = 50
# The classes without examples `absent_note` names; beyond, it counts the rest.
NOTE_MAX_NAMES = 10


def compute_metrics(labels: Sequence[int], preds: Sequence[int], names: Sequence[str], loss: float | None = None,
                    probs: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (macro over the classes in `labels` or `preds`, micro, weighted), a per-class
    report of every class and the confusion matrix; with class probabilities also the expected calibration error and,
    for two classes, ROC and PR AUCs."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    ids = list(range(len(names)))
    metrics: dict[str, Any] = {"num_examples": len(labels), "accuracy": float(accuracy_score(labels, preds))}
    if loss is not None:
        metrics["loss"] = float(loss)
    metrics.update(averaged_prf(labels, preds, labels=np.union1d(labels, preds).astype(np.int64).tolist()))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, average=None, zero_division=0)
    predicted = np.bincount(np.asarray(preds, dtype=np.int64), minlength=len(names))
    metrics["per_class"] = {name: class_scores(p[i], r[i], f[i], s[i], predicted[i]) for i, name in enumerate(names)}
    metrics["confusion_matrix"] = confusion(labels, preds, names)
    if probs is not None:
        metrics.update(probability_metrics(np.asarray(labels), probs, names))
    return metrics


def confusion(gold: Sequence[int], pred: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Rows: gold label, columns: predicted label. Up to DENSE_CONFUSION_MAX_LABELS labels the whole
    matrix (`matrix`); beyond, its non-zero cells as [gold, predicted, count], largest first (`cells`):
    a size that grows with the rows scored, not with the square of the labels (10,000 labels: 800 MB dense)."""
    n = len(names)
    cell, counts = np.unique(np.asarray(gold, dtype=np.int64) * n + np.asarray(pred, dtype=np.int64), return_counts=True)
    if n <= DENSE_CONFUSION_MAX_LABELS:
        matrix = np.zeros(n * n, dtype=np.int64)
        matrix[cell] = counts
        return {"labels": list(names), "matrix": matrix.reshape(n, n).tolist()}
    order = np.lexsort((cell, -counts))
    return {"labels": list(names), "cells": [[names[c // n], names[c % n], int(k)] for c, k in zip(cell[order].tolist(), counts[order], strict=True)]}


def confusion_cells(confusion: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of a `confusion` result, either form: gold ids, predicted ids and counts."""
    if "matrix" in confusion:
        matrix = np.asarray(confusion["matrix"], dtype=np.int64).reshape(len(confusion["labels"]), -1)
        gold, pred = np.nonzero(matrix)
        return gold, pred, matrix[gold, pred]
    ids = {name: i for i, name in enumerate(confusion["labels"])}
    cells = confusion["cells"]
    return (np.array([ids[g] for g, _, _ in cells], dtype=np.int64), np.array([ids[p] for _, p, _ in cells], dtype=np.int64),
            np.array([k for _, _, k in cells], dtype=np.int64))


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a metrics dict, without per-label tables or matrices (for log.jsonl and checkpoints)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def averaged_prf(gold, pred, **options) -> dict[str, float]:
    """precision_/recall_/f1_ macro, micro and weighted (single-label ids, or multi-label 0/1 rows)."""
    from sklearn.metrics import precision_recall_fscore_support

    out: dict[str, float] = {}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, average=average, zero_division=0, **options)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    return out


def probability_metrics(gold: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Expected calibration error of the top-class confidence; ROC AUC and average precision when binary."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == gold
    out: dict[str, Any] = {"ece": reliability(confidence, correct)["ece"]}
    if len(names) == 2 and len(set(gold.tolist())) == 2:  # AUCs need both classes present
        positive = gold == 1  # the second label in sorted order is the positive class
        out.update({"positive_label": names[1], "roc_auc": float(roc_auc_score(positive, probs[:, 1])),
                    "pr_auc": float(average_precision_score(positive, probs[:, 1]))})
    return out


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Per equal-width confidence bin: count, mean confidence and accuracy; and the expected calibration
    error, sum over bins of (share of rows) x |accuracy - confidence|."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    hit_sum = np.bincount(which, weights=correct.astype(float), minlength=bins)
    filled = counts > 0
    mean_conf = np.divide(conf_sum, counts, out=np.zeros(bins), where=filled)
    accuracy = np.divide(hit_sum, counts, out=np.zeros(bins), where=filled)
    ece = float(np.sum(counts / max(len(confidence), 1) * np.abs(accuracy - mean_conf)))
    return {"edges": np.linspace(0, 1, bins + 1), "counts": counts, "confidence": mean_conf, "accuracy": accuracy, "ece": ece}


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


@dataclass
class Evaluation:
    """One scored split: its rows (input order), gold label ids, class probabilities and metrics."""

    texts: Sequence[str]
    pairs: Sequence[str] | None
    names: list[str]
    gold: np.ndarray
    probs: np.ndarray
    metrics: dict[str, Any]
    multi_label: bool = False
    threshold: float | None = None  # multi-label only: a label is predicted when its probability is >= this
    label_separator: str = runs.LABEL_JOIN  # multi-label only: what joins a row's labels in predictions.csv, as in the data
    scored_with: dict[str, str] | None = None  # `evaluate_file`: the model, engine, device and precision that scored it


def score(texts: Sequence[str], pairs: Sequence[str] | None, names: Sequence[str], logits: np.ndarray,
          gold, loss: float | None = None, *, multi_label: bool = False, threshold: float = 0.5, tune: bool = False,
          label_separator: str = runs.LABEL_JOIN) -> Evaluation:
    """Probabilities and metrics from logits and gold ids (single-label) or 0/1 rows (multi-label).

    Multi-label with `tune`: the threshold with the best micro-F1 on these rows replaces `threshold`.
    """
    gold = np.asarray(gold)
    if not multi_label:
        probs = softmax(logits)
        metrics = compute_metrics(gold.tolist(), probs.argmax(-1).tolist(), names, loss, probs)
        return Evaluation(texts, pairs, list(names), gold, probs, metrics)
    probs = sigmoid(logits)
    if tune:
        threshold = tune_threshold(gold, probs)
    return Evaluation(texts, pairs, list(names), gold, probs, multilabel_metrics(gold, probs, names, threshold, loss), True, threshold,
                      label_separator)


# Candidate thresholds for tuning: 0.05, 0.10, ..., 0.95.
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_threshold(gold: np.ndarray, probs: np.ndarray) -> float:
    """The candidate threshold with the best micro-F1 (ties: the one closest to 0.5)."""
    from sklearn.metrics import f1_score

    scores = [(f1_score(gold, probs >= t, average="micro", zero_division=0), -abs(t - 0.5), float(t)) for t in THRESHOLDS]
    return max(scores)[2]


def multilabel_metrics(gold: np.ndarray, probs: np.ndarray, names: Sequence[str], threshold: float,
                       loss: float | None = None) -> dict[str, Any]:
    """Subset accuracy (as `accuracy`: every label of a row right), Hamming loss, precision/recall/F1
    (macro, micro, weighted), per-label counts, and the calibration error over every (row, label)."""
    from sklearn.metrics import accuracy_score, hamming_loss, multilabel_confusion_matrix, precision_recall_fscore_support

    gold, pred = gold.astype(int), (probs >= threshold).astype(int)
    metrics: dict[str, Any] = {"num_examples": len(gold), "threshold": float(threshold),
                               "accuracy": float(accuracy_score(gold, pred)), "hamming_loss": float(hamming_loss(gold, pred))}
    if loss is not None:
        metrics["loss"] = float(loss)
    occurring = np.flatnonzero(gold.any(axis=0) | pred.any(axis=0)).tolist()  # as single-label: classes in gold or predictions
    metrics.update(averaged_prf(gold, pred, labels=occurring or None))
    p, r, f, s = precision_recall_fscore_support(gold, pred, average=None, zero_division=0)
    counts = multilabel_confusion_matrix(gold, pred)  # per label [[tn, fp], [fn, tp]]
    metrics["per_class"] = {
        name: class_scores(p[i], r[i], f[i], s[i], counts[i][0][1] + counts[i][1][1])
        | {"tp": int(counts[i][1][1]), "fp": int(counts[i][0][1]), "fn": int(counts[i][1][0]), "tn": int(counts[i][0][0])}
        for i, name in enumerate(names)
    }
    metrics["ece"] = reliability(*decisions(gold, probs, threshold))["ece"]
    return metrics


def class_scores(precision: float, recall: float, f1: float, support: int, predicted: int) -> dict[str, Any]:
    """One class's row of `per_class`. A score that is 0/0 is None (null in metrics.json), not 0: recall for a class
    without examples, and precision and F1 too where the class is never predicted either (the classes the macro
    averages leave out)."""
    absent = support == 0 and predicted == 0
    return {"precision": None if absent else float(precision), "recall": None if support == 0 else float(recall),
            "f1": None if absent else float(f1), "support": int(support)}


def absent_note(metrics: dict[str, Any], where: str) -> str | None:
    """The line `bertcls evaluate` prints when some classes have no example in `where`: which, and what the macro
    averages then cover; None when every class has one."""
    absent = [name for name, row in metrics["per_class"].items() if row["support"] == 0]
    if not absent:
        return None
    named = ", ".join(absent[:NOTE_MAX_NAMES]) + (f" and {len(absent) - NOTE_MAX_NAMES:,} more" if len(absent) > NOTE_MAX_NAMES else "")
    return (f"note: {where} has no example of {len(absent):,} of the {len(metrics['per_class']):,} classes ({named}); "
            "macro averages are over the classes in its labels or predictions")


def decisions(gold: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label, every (row, label) decision: its confidence (p if predicted, else 1 - p) and whether it is right."""
    p, predicted = probs.ravel(), probs.ravel() >= threshold
    return np.where(predicted, p, 1 - p), predicted == gold.ravel().astype(bool)


# `bertcls evaluate` names its columns with options, so a wrong one is fixed there, not in a config.
EVALUATE_COLUMN_FIXES = {"text_column": "pass --text-column", "text_pair_column": "pass --text-pair-column", "label_column": "pass --label-column"}


def evaluate_file(model_path, data_file: str, *, text_column: str | None = None, text_pair_column: str | None = None,
                  label_column: str | None = None, device: str = "auto", batch_size: int = 64, precision: str = "auto",
                  say: Callable[[str], None] | None = None) -> Evaluation:
    """Metrics of a trained model on a labelled file, read with the run's column mapping unless overridden.

    `say`, if given, is told what runs the model (engine, device, precision).
    """
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split
    from bertcls.predict import load_predictor

    columns = DataConfig(train=data_file, **runs.run_columns(model_path, text_column=text_column, text_pair_column=text_pair_column,
                                                             label_column=label_column))
    predictor = load_predictor(model_path, device=device, batch_size=batch_size, precision=precision)
    if say:
        say(predictor.describe())
    predictor.check_pairing(columns.text_pair_column is not None, "--text-pair-column")
    if predictor.multi_label:
        columns = columns.model_copy(update={"task": "multi_label"})
    split = read_split(data_file, columns, "evaluate", column_fixes=EVALUATE_COLUMN_FIXES)
    names = [predictor.id2label[i] for i in sorted(predictor.id2label)]
    gold = LabelMap(tuple(names), predictor.multi_label).encode(split.labels, f"evaluate ({data_file})")
    logits = predictor.logits(split.texts, split.pairs)
    predictor.check_scores(logits)
    evaluation = score(split.texts, split.pairs, names, logits, gold, loss_of(logits, np.asarray(gold)),
                       multi_label=predictor.multi_label, threshold=predictor.threshold, label_separator=columns.label_separator)
    evaluation.scored_with = {"model": str(Path(model_path).resolve()), "engine": predictor.engine, "device": str(predictor.device),
                              "precision": predictor.precision}
    return evaluation
