"""Prediction: a run folder (or any Hugging Face classifier folder) and texts in, labels and scores out.

Texts are tokenised in one batch call, sorted by length so each batch pads little, run under
`torch.inference_mode` (and bf16 autocast where the run trained in it and the hardware runs it
natively), and returned in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Fallback when neither the run's config nor the tokenizer names a sensible limit.
DEFAULT_MAX_LENGTH = 512
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float] = field(repr=False)
    truncated: bool = False


class Predictor:
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 64, precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision  # fp32, or the autocast dtype: bf16 / fp16
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 64, precision: str = "auto") -> Predictor:
        """`precision` auto: the run's training.precision where this device runs it natively (bf16 on CPUs with
        AVX512-BF16/AMX and recent GPUs), else fp32; a plain model folder follows the hardware alone."""
        import torch

        from bertcls import runs
        from bertcls.errors import ConfigError
        from bertcls.model import load_trained, resolve_precision

        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        on_cpu = torch.device(device).type == "cpu"
        if precision == "fp16" and on_cpu:
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        model, tokenizer = load_trained(path)
        run_config = runs.read_run_config(Path(path)) or {}
        max_length = (run_config.get("data") or {}).get("max_length")
        if not max_length:
            limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH)
            max_length = limit if isinstance(limit, int) and limit <= 8192 else DEFAULT_MAX_LENGTH
        if precision == "auto":
            trained = (run_config.get("training") or {}).get("precision", "auto")
            native = resolve_precision("auto", on_cpu)
            # Follow the run (its validation and test scores were computed so) unless the hardware lacks it.
            precision = native if trained in ("auto", native) else "fp32"
        return cls(model.to(device), tokenizer, max_length, batch_size, precision)

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None):
        """Raw logits (float32 array, one row per text, input order)."""
        return self._run(texts, pairs)[0]

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Prediction]:
        from bertcls.evaluate import softmax

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
        from contextlib import nullcontext

        import torch

        from bertcls.data import Split, encode, loader, sorted_batches
        from bertcls.evaluate import predict_logits

        encoded = encode(Split("predict", list(texts), list(pairs) if pairs is not None else None, None), self.tokenizer, self.max_length)
        batches = loader(encoded, self.tokenizer.pad_token_id or 0, sorted_batches(encoded.lengths, self.batch_size))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=dtype) if dtype else nullcontext():
            return predict_logits(self.model, batches)[0], encoded.lengths
