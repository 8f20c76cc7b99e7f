"""Prediction: a run folder (or any Hugging Face classifier folder) and texts in, labels and scores out.

Texts are tokenised in one batch call, sorted by length so each batch pads little, run under
`torch.inference_mode`, and returned in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Fallback when neither the run's config nor the tokenizer names a sensible limit.
DEFAULT_MAX_LENGTH = 512


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float] = field(repr=False)
    truncated: bool = False

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable labels with their probabilities, best first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def load_predictor(path: str | Path, device: str = "auto", batch_size: int = 64):
    """A Predictor for a run or model folder."""
    return Predictor.load(path, device=device, batch_size=batch_size)


class Predictor:
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 64) -> Predictor:
        import torch

        from bertcls import runs
        from bertcls.model import load_trained

        model, tokenizer = load_trained(path)
        run_config = runs.read_run_config(Path(path)) or {}
        max_length = (run_config.get("data") or {}).get("max_length")
        if not max_length:
            limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH)
            max_length = limit if isinstance(limit, int) and limit <= 8192 else DEFAULT_MAX_LENGTH
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device), tokenizer, max_length, batch_size)

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None):
        """Raw logits (float32 array, one row per text, input order)."""
        return self._run(texts, pairs)[0]

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Prediction]:
        if not texts:
            return []
        logits, lengths = self._run(texts, pairs)
        results = []
        for row, length in zip(softmax(logits), lengths, strict=False):
            best = int(row.argmax())
            results.append(Prediction(
                label=self.id2label[best], score=float(row[best]),
                probabilities={self.id2label[k]: float(p) for k, p in enumerate(row)},
                truncated=length >= self.max_length,
            ))
        return results

    def _run(self, texts: Sequence[str], pairs: Sequence[str] | None):
        from bertcls.data import Split, encode, loader, sorted_batches
        from bertcls.evaluate import predict_logits

        encoded = encode(Split("predict", list(texts), list(pairs) if pairs is not None else None, None), self.tokenizer, self.max_length)
        batches = loader(encoded, self.tokenizer.pad_token_id or 0, sorted_batches(encoded.lengths, self.batch_size))
        return predict_logits(self.model, batches)[0], encoded.lengths
