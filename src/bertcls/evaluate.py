"""Evaluation: a model and a labelled loader in, logits in input order and scikit-learn metrics out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def compute_metrics(labels: Sequence[int], preds: Sequence[int], names: Sequence[str], loss: float | None = None) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (macro, micro, weighted), a per-class report and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(names)))
    metrics: dict[str, Any] = {"num_examples": len(labels), "accuracy": float(accuracy_score(labels, preds))}
    if loss is not None:
        metrics["loss"] = float(loss)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=ids, average=average, zero_division=0)
        metrics.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, average=None, zero_division=0)
    metrics["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, name in enumerate(names)
    }
    metrics["confusion_matrix"] = {"labels": list(names), "matrix": confusion_matrix(labels, preds, labels=ids).tolist()}
    return metrics


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


def predict_logits(model, loader, accelerator=None) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Logits (float32), labels and mean loss over `loader`, rows back in the data's original order.

    With an Accelerator over N processes, each process scores its own batches; the rows are
    gathered once at the end and each example counted exactly once (see `_gather_rows`).
    """
    # FSDP swaps parameter storage in place around each forward, which inference tensors forbid
    # in older PyTorch (no version counter; pytorch/pytorch#197327): no_grad there, to be safe.
    sharded = accelerator is not None and accelerator.distributed_type == "FSDP"
    with torch.no_grad() if sharded else torch.inference_mode():
        return _predict_logits(model, loader, accelerator)


def _predict_logits(model, loader, accelerator):
    model.eval()
    device = next(model.parameters()).device
    logits_parts, index_parts, label_parts = [], [], []
    for batch in loader:
        if accelerator is None:  # a prepared loader already places batches on the device
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        index_parts.append(batch.pop("index"))
        if "labels" in batch:
            label_parts.append(batch["labels"])
        logits_parts.append(model(**batch).logits.float())
    logits, index = torch.cat(logits_parts), torch.cat(index_parts)
    labels = torch.cat(label_parts) if label_parts else None
    if accelerator is not None and accelerator.num_processes > 1:
        logits, index, labels = _gather_rows(accelerator, logits, index, labels)
    order = index.argsort()
    logits_all = logits[order].cpu().numpy()
    labels_all = labels[order].cpu().numpy() if labels is not None else None
    mean_loss = None
    if labels_all is not None:
        mean_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits_all), torch.from_numpy(labels_all)))
    return logits_all, labels_all, mean_loss


def _gather_rows(accelerator, logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None):
    """Every process's rows on every process, each example once.

    Accelerate gives every process the same number of batches by repeating the first batches
    on the processes that run out, and our length-sorted batches differ in size, so
    `gather_for_metrics` (which trims a fixed-size remainder) cannot be used: pad each
    process's rows to the longest (index -1), gather, drop the padding, keep each index once.
    """
    def gather(tensor: torch.Tensor, pad: int = 0) -> torch.Tensor:
        return accelerator.gather(accelerator.pad_across_processes(tensor, dim=0, pad_index=pad)).cpu()

    logits, index = gather(logits), gather(index, pad=-1)
    labels = gather(labels) if labels is not None else None
    _, first = np.unique(index.numpy(), return_index=True)  # first row of each index, -1 (padding) included
    keep = torch.from_numpy(first)
    keep = keep[index[keep] >= 0]
    return logits[keep], index[keep], (labels[keep] if labels is not None else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def format_report(metrics: dict[str, Any]) -> str:
    """A per-class precision/recall/F1/support table and the headline figures, for the terminal."""
    rows = [f"{'label':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for name, m in metrics["per_class"].items():
        rows.append(f"{name[:20]:<20} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>9d}")
    rows.append(f"accuracy {metrics['accuracy']:.4f} | f1_macro {metrics['f1_macro']:.4f} | f1_weighted {metrics['f1_weighted']:.4f} | examples {metrics['num_examples']}")
    return "\n".join(rows)


def evaluate_file(model_path, data_file: str, *, text_column: str | None = None, text_pair_column: str | None = None,
                  label_column: str | None = None, device: str = "auto", batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a trained model on a labelled file, read with the run's column mapping unless overridden."""
    from pathlib import Path

    from bertcls import runs
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split
    from bertcls.predict import Predictor

    saved = (runs.read_run_config(Path(model_path)) or {}).get("data") or {}
    columns = DataConfig(
        train=data_file,
        text_column=text_column or saved.get("text_column", "text"),
        text_pair_column=text_pair_column or saved.get("text_pair_column"),
        label_column=label_column or saved.get("label_column", "label"),
    )
    predictor = Predictor.load(model_path, device=device, batch_size=batch_size)
    split = read_split(data_file, columns, "evaluate")
    names = [predictor.id2label[i] for i in sorted(predictor.id2label)]
    gold = LabelMap(tuple(names)).encode(split.labels, f"evaluate ({data_file})")
    logits = predictor.logits(split.texts, split.pairs)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(gold)))
    return compute_metrics(gold, logits.argmax(-1).tolist(), names, loss)
