"""Inference: a model and batches in, logits in the data's original order (gathered across processes, and
pooled per text where texts were read in windows) out.

The one loop that runs a model without training it: training's evaluation, `bertcls evaluate` and
the transformers predictor all go through `predict_logits`.
"""

from __future__ import annotations

import numpy as np
import torch

from bertcls import distributed
from bertcls.longtext import Reading


def predict_logits(model, loader, accelerator=None, reading: Reading | None = None) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Logits (float32), labels and mean loss over `loader`, rows back in the data's original order.

    With an Accelerator over N processes, each process scores its own batches; the rows are
    gathered once at the end and each example counted exactly once (see `_gather_rows`).
    A windowed `reading` (sliding_window): the examples are windows, gathered by their own index like
    any row, then pooled into one row per text; labels and the loss are then per text too.
    """
    # FSDP swaps parameter storage in place around each forward, which inference tensors forbid
    # in older PyTorch (no version counter; pytorch/pytorch#197327): no_grad there, to be safe.
    sharded = accelerator is not None and distributed.is_sharded(accelerator)
    with torch.no_grad() if sharded else torch.inference_mode():
        return _predict_logits(model, loader, accelerator, reading)


def _predict_logits(model, loader, accelerator, reading):
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
    logits_parts.clear()  # rows x labels: at most two copies alive at once (this and the reordered one)
    labels = torch.cat(label_parts) if label_parts else None
    if accelerator is not None and accelerator.num_processes > 1:
        logits, index, labels = _gather_rows(accelerator, logits, index, labels)
    order = index.argsort()
    logits_all = logits[order].cpu().numpy()
    labels_all = labels[order].cpu().numpy() if labels is not None else None
    if reading is not None and reading.windowed:
        logits_all = reading.pool(logits_all)
        labels_all = reading.per_text(labels_all) if labels_all is not None else None
    mean_loss = None if labels_all is None else loss_of(logits_all, labels_all)
    return logits_all, labels_all, mean_loss


def loss_of(logits: np.ndarray, gold: np.ndarray) -> float:
    """Mean cross-entropy (gold ids), or mean binary cross-entropy over every label (multi-label 0/1 rows)."""
    logits_t, gold_t = torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(np.asarray(gold))
    if gold_t.ndim == 2:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits_t, gold_t.float()))
    return float(torch.nn.functional.cross_entropy(logits_t, gold_t.long()))


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
