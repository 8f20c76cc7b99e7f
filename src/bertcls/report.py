"""Reports: an `Evaluation` in, files out (predictions.csv and PNG figures) and a per-class table on the terminal.

    DIR/predictions.csv        text, [text_pair,] gold, predicted, score, prob_<label> per label
                               (beyond PROB_COLUMNS_MAX_LABELS labels: label_1, score_1 ... the TOP_K best)
    DIR/confusion_matrix.png   counts and row-normalised, side by side (multi-label: one 2x2 per label);
                               beyond FIGURE_MAX_LABELS labels only those of the largest confusions
    DIR/pr_curve.png           binary tasks: precision-recall curve (average precision in metrics.json)
    DIR/roc_curve.png          binary tasks: ROC curve (AUC in metrics.json)
    DIR/reliability.png        accuracy per confidence bin (expected calibration error in metrics.json)

Figures use matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from bertcls import atomic, runs
from bertcls.evaluate import Evaluation, confusion_cells, decisions, reliability
from bertcls.predict import top_ids

PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
PR_FILE = "pr_curve.png"
ROC_FILE = "roc_curve.png"
RELIABILITY_FILE = "reliability.png"
REPORT_FILES = (PREDICTIONS_FILE, CONFUSION_FILE, PR_FILE, ROC_FILE, RELIABILITY_FILE)  # every name write_report may write
# Above this many classes the confusion matrix cells are too small to print numbers in.
ANNOTATE_MAX_CLASSES = 20
WORST_CONFUSIONS = 5
# Reports stay proportional to rows + labels, never rows x labels or labels squared: beyond these many labels
# predictions.csv keeps only the TOP_K best labels of a row, the confusion figures FOCUS_LABELS labels,
# and the terminal table TABLE_MAX_ROWS labels.
PROB_COLUMNS_MAX_LABELS = 50
TOP_K = 5
FIGURE_MAX_LABELS = 50
FOCUS_LABELS = 30
TABLE_MAX_ROWS = 50


def write_report(folder: Path, ev: Evaluation, figures: bool = True) -> list[Path]:
    """Write every report file for `ev` into `folder` (predictions.csv alone without `figures`); return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [_write_predictions(folder / PREDICTIONS_FILE, ev)]
    if not figures:
        return written
    figure = multilabel_confusion_figure(ev.metrics["per_class"]) if ev.multi_label else confusion_figure(ev.metrics["confusion_matrix"])
    written.append(_save(figure, folder / CONFUSION_FILE))
    if "roc_auc" in ev.metrics:
        written.append(_save(roc_figure(ev), folder / ROC_FILE))
        written.append(_save(pr_figure(ev), folder / PR_FILE))
    written.append(_save(reliability_figure(ev), folder / RELIABILITY_FILE))
    return written


def _write_predictions(path: Path, ev: Evaluation) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    every, k = len(ev.names) <= PROB_COLUMNS_MAX_LABELS, min(TOP_K, len(ev.names))
    probability_columns = [f"prob_{n}" for n in ev.names] if every else [f"{c}_{r}" for r in range(1, k + 1) for c in ("label", "score")]
    writer.writerow(["text"] + (["text_pair"] if ev.pairs is not None else []) + ["gold", "predicted", "score"] + probability_columns)
    names = np.asarray(ev.names, dtype=object)
    best = ev.probs.argmax(axis=1)
    for i, text in enumerate(ev.texts):
        probs, row = ev.probs[i], [text] + ([ev.pairs[i]] if ev.pairs is not None else [])
        if ev.multi_label:  # labels joined as in the data, the score is the top label's probability
            join = ev.label_separator.join
            gold, predicted = join(names[np.flatnonzero(ev.gold[i])]), join(names[np.flatnonzero(probs >= ev.threshold)])
        else:
            gold, predicted = ev.names[ev.gold[i]], ev.names[best[i]]
        row += [gold, predicted, f"{probs[best[i]]:.6f}"]
        if every:
            row += [f"{p:.6f}" for p in probs]
        else:
            row += [x for j in top_ids(probs, k) for x in (names[j], f"{probs[j]:.6f}")]
        writer.writerow(row)
    atomic.write_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------- figures

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_atomic(path, buffer.getvalue())
    return path


def confusion_figure(confusion: dict[str, Any]):
    """Counts (left) and row-normalised shares (right): row = gold label, column = predicted label.

    Beyond FIGURE_MAX_LABELS labels, only the FOCUS_LABELS labels of the largest confusions (shares
    stay shares of all of a gold label's rows).
    """
    gold, pred, cell_counts = confusion_cells(confusion)
    everything = len(confusion["labels"])
    row_totals = np.bincount(gold, weights=cell_counts, minlength=everything)
    kept = np.arange(everything) if everything <= FIGURE_MAX_LABELS else _most_confused(gold, pred, cell_counts, row_totals)
    position = np.full(everything, -1)
    position[kept] = np.arange(len(kept))
    inside = (position[gold] >= 0) & (position[pred] >= 0)
    n, names = len(kept), [confusion["labels"][i] for i in kept]
    counts = np.zeros((n, n), dtype=np.int64)
    counts[position[gold[inside]], position[pred[inside]]] = cell_counts[inside]
    totals = row_totals[kept][:, None]
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(max(3.2, 0.45 * n + 1.8), 14)
    fig = _figure(2 * side + 1.2, side + 0.3)
    fig.suptitle("Confusion matrix (rows: gold label, columns: predicted label)" if n == everything else
                 f"Confusion matrix of the {n} labels in the largest confusions, of {everything:,} "
                 "(rows: gold label, columns: predicted label)")
    for ax, values, title, fmt in zip(fig.subplots(1, 2), (counts, shares), ("counts", "row-normalised"), ("d", ".2f"), strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if fmt == ".2f" else max(int(values.max()), 1))
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set(title=title, xlabel="predicted label", ylabel="gold label",
               xticks=range(n), yticks=range(n), xticklabels=names, yticklabels=names)
        if n > 4 or max(map(len, names)) > 8:  # slanted, each label ending under its column
            for label in ax.get_xticklabels():
                label.set(rotation=45, horizontalalignment="right", rotation_mode="anchor")
        if n <= ANNOTATE_MAX_CLASSES:
            threshold = values.max() / 2
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=9,
                            color="white" if values[i, j] > threshold else "black")
    return fig


def _most_confused(gold: np.ndarray, pred: np.ndarray, counts: np.ndarray, row_totals: np.ndarray) -> np.ndarray:
    """FOCUS_LABELS label ids, in label order: those of the largest off-diagonal cells, topped up with the labels with most rows."""
    off = gold != pred
    order = np.lexsort((pred[off], gold[off], -counts[off]))
    chosen: dict[int, None] = {}  # an ordered set
    for label in np.stack([gold[off][order], pred[off][order]], axis=1).ravel().tolist():
        if len(chosen) >= FOCUS_LABELS:
            break
        chosen.setdefault(label)
    for label in np.argsort(-row_totals, kind="stable").tolist():
        if len(chosen) >= FOCUS_LABELS:
            break
        chosen.setdefault(label)
    return np.array(sorted(chosen), dtype=np.int64)


def multilabel_confusion_figure(per_class: dict[str, dict[str, Any]]):
    """Multi-label: one 2x2 matrix per label (rows: gold no/yes, columns: predicted no/yes); beyond
    FIGURE_MAX_LABELS labels only the FOCUS_LABELS labels with the most errors, most first."""
    names, title = list(per_class), "Confusion per label (rows: gold, columns: predicted)"
    if len(names) > FIGURE_MAX_LABELS:
        names = sorted(names, key=lambda name: -(per_class[name]["fp"] + per_class[name]["fn"]))[:FOCUS_LABELS]
        title = f"Confusion of the {len(names)} labels with the most errors, of {len(per_class):,} (rows: gold, columns: predicted)"
    cols = min(len(names), 5)
    rows = -(-len(names) // cols)
    fig = _figure(2.6 * cols, 2.5 * rows + 0.4)
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, names, strict=False):
        c = per_class[name]
        values = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(values, cmap="Blues", vmin=0, vmax=max(int(values.max()), 1))
        ax.set(title=name[:24], xlabel="predicted", ylabel="gold", xticks=[0, 1], yticks=[0, 1], xticklabels=["no", "yes"], yticklabels=["no", "yes"])
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(values[i, j]), ha="center", va="center", color="white" if values[i, j] > values.max() / 2 else "black")
    for ax in axes[len(names):]:
        ax.set_axis_off()
    return fig


def roc_figure(ev: Evaluation):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(ev.gold == 1, ev.probs[:, 1])
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {ev.metrics['roc_auc']:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(title=f"ROC curve (positive: {ev.names[1]})", xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    return fig


def pr_figure(ev: Evaluation):
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(ev.gold == 1, ev.probs[:, 1])
    base = float(np.mean(ev.gold == 1))
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    ax.step(recall, precision, where="post", lw=2, label=f"average precision {ev.metrics['pr_auc']:.4f}")
    ax.axhline(base, ls="--", color="grey", lw=1, label=f"chance ({base:.2f})")
    ax.set(title=f"Precision-recall (positive: {ev.names[1]})", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return fig


def reliability_figure(ev: Evaluation):
    """Accuracy against mean confidence per bin, over a histogram of how many rows fall in each bin.

    Multi-label: every (row, label) decision counts, its confidence being p if predicted, else 1 - p.
    """
    if ev.multi_label:
        bins = reliability(*decisions(ev.gold, ev.probs, ev.threshold))
    else:
        bins = reliability(ev.probs.max(axis=1), ev.probs.argmax(axis=1) == ev.gold)
    edges, width = bins["edges"], bins["edges"][1] - bins["edges"][0]
    filled = bins["counts"] > 0
    fig = _figure(4.6, 5.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(edges[:-1][filled], bins["accuracy"][filled], width=width, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.set(title=f"Reliability (ECE {bins['ece']:.4f})", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], bins["counts"], width=width, align="edge", edgecolor="black", color="grey")
    bottom.set(xlabel="confidence (probability of the decision)" if ev.multi_label else "confidence (probability of the predicted label)",
               ylabel="decisions" if ev.multi_label else "rows")
    return fig


def loss_figure(log_path: Path):
    """Training loss per logged step and validation loss per evaluation, from a run's log.jsonl."""
    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "split" not in r and "loss" in r]
    valid = [(r["step"], r["loss"]) for r in records if r.get("split") == "validation" and "loss" in r]
    fig = _figure(6, 4)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), lw=1.5, label="training (mean over logging window)")
    if valid:
        ax.plot(*zip(*valid, strict=True), marker="o", lw=1.5, label="validation")
    ax.set(title="Loss", xlabel="optimizer step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def write_loss_curve(run: Path) -> Path:
    return _save(loss_figure(Path(run) / runs.LOG_FILE), Path(run) / runs.LOSS_FILE)


# ---------------------------------------------------------------------------- terminal

def print_report(metrics: dict[str, Any], file: IO[str] | None = None, title: str | None = None, multi_label: bool = False) -> None:
    """A per-class precision/recall/F1/support table, the headline figures and the worst confusions."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=True)
    table = Table(title=title, title_justify="left")
    table.add_column("label")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    rows = list(metrics["per_class"].items())
    if len(rows) > TABLE_MAX_ROWS:  # stable: label order among equal supports
        rows = sorted(rows, key=lambda row: -row[1]["support"])[:TABLE_MAX_ROWS]
    for name, m in rows:
        table.add_row(name, *("—" if m[key] is None else f"{m[key]:.4f}" for key in ("precision", "recall", "f1")), str(m["support"]))
    console.print(table)
    hidden = len(metrics["per_class"]) - len(rows)
    if hidden:
        console.print(f"... and {hidden:,} more labels (shown: the {len(rows)} with the most rows)")
    console.print(headline(metrics, multi_label))
    worst = worst_confusions(metrics["confusion_matrix"]) if "confusion_matrix" in metrics else []
    if worst:
        console.print("worst confusions (gold → predicted):")
        for gold, predicted, count, share in worst:
            console.print(f"  {gold} → {predicted}: {count} ({share:.1%} of {gold})")


def headline(metrics: dict[str, Any], multi_label: bool = False) -> str:
    if multi_label:
        keys = ("accuracy", "hamming_loss", "f1_micro", "f1_macro", "ece", "loss", "threshold")
        names = {"accuracy": "subset accuracy"}
    else:
        keys, names = ("accuracy", "f1_macro", "f1_weighted", "roc_auc", "pr_auc", "ece", "loss"), {}
    return " | ".join([f"{names.get(k, k)} {metrics[k]:.4f}" for k in keys if k in metrics] + [f"examples {metrics['num_examples']}"])


def worst_confusions(confusion: dict[str, Any], top: int = WORST_CONFUSIONS) -> list[tuple[str, str, int, float]]:
    """The largest off-diagonal cells: (gold, predicted, count, share of the gold label's rows)."""
    names = confusion["labels"]
    gold, pred, counts = confusion_cells(confusion)
    row_totals = np.bincount(gold, weights=counts, minlength=len(names))
    off = gold != pred
    gold, pred, counts = gold[off], pred[off], counts[off]
    order = np.lexsort((pred, gold, -counts))[:top]
    return [(names[g], names[p], int(c), float(c / row_totals[g])) for g, p, c in zip(gold[order], pred[order], counts[order], strict=True)]
