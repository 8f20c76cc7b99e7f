"""The training loss: `training.class_weights` and the training labels in, a `loss(model, batch)` function out.

none: the model's own loss (cross-entropy; binary cross-entropy for multi-label). balanced: class c
weighs n / (k * n_c) — rare classes count more, as scikit-learn's `class_weight="balanced"`. A
mapping gives weights by label name, read as the data's labels are (`1.0` is the label `1`); labels
it leaves out weigh 1. Multi-label: the weight of a label multiplies its positive term
(`pos_weight`); balanced = negatives / positives per label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bertcls.data import label_text
from bertcls.errors import ConfigError, listing, shown


def class_weights(setting: str | dict[Any, float], names: Sequence[str], train_ids: Sequence, multi_label: bool = False) -> list[float] | None:
    """One weight per label id, or None for an unweighted loss."""
    if setting == "none":
        return None
    if setting == "balanced" and multi_label:
        positives = torch.tensor(train_ids, dtype=torch.float64).sum(dim=0)
        return ((len(train_ids) - positives) / positives.clamp(min=1)).tolist()
    if setting == "balanced":
        counts = torch.bincount(torch.tensor(list(train_ids)), minlength=len(names)).double()
        return (counts.sum() / (len(names) * counts.clamp(min=1))).tolist()
    check_class_weights(setting, names)
    given = _by_label(setting)
    return [given.get(name, 1.0) for name in names]


def check_class_weights(setting: str | dict[Any, float], names: Sequence[str]) -> None:
    """A mapping may name only labels that train has, each once (checked before anything is loaded)."""
    if not isinstance(setting, dict):
        return
    keys: dict[str, str] = {}
    for key in map(str, setting):
        label = label_text(key)
        if label in keys:
            raise ConfigError(f"training.class_weights: {shown(keys[label])} and {shown(key)} name the same label {shown(label)}; keep one")
        keys[label] = key
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise ConfigError(f"training.class_weights: no label {listing(unknown, show=shown)} in train (labels: {listing(names, 20)})")


def _by_label(setting: dict[Any, float]) -> dict[str, float]:
    """The mapping's weights by label, its keys read as data.py reads label text: `1.0` is the label `1`."""
    return {label_text(str(k)): float(v) for k, v in setting.items()}


def build_loss(setting: str | dict[Any, float], names: Sequence[str], train_ids: Sequence, device,
               multi_label: bool = False) -> Callable[[Any, dict], torch.Tensor]:
    """`loss(model, batch)` for the training loop; the batch holds the labels."""
    weights = class_weights(setting, names, train_ids, multi_label)
    if weights is None:
        return lambda model, batch: model(**batch).loss
    weight = torch.tensor(weights, dtype=torch.float32, device=device)

    def weighted(model, batch: dict) -> torch.Tensor:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"], pos_weight=weight)
        return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weight)

    return weighted
