"""Prediction: a run folder, any Hugging Face classifier folder, or an exported ONNX folder, and texts
in; labels and scores out.

Texts are tokenised in one batch call, sorted by length so each batch pads little, run (under
`torch.inference_mode`, with bf16 autocast where the run trained in it and the hardware runs it
natively, or in onnxruntime), and returned in input order. The ONNX path imports neither torch
nor transformers: onnxruntime, `tokenizers` and numpy start in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Fallback when neither the run's config nor the tokenizer names a sensible limit.
DEFAULT_MAX_LENGTH = 512
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# Where a saved multi-label model keeps its decision threshold (in config.json, beside id2label).
THRESHOLD_KEY = "multi_label_threshold"
DEFAULT_THRESHOLD = 0.5


@dataclass
class Prediction:
    """The most probable label and its probability; for multi-label models also every label at or above the threshold."""

    label: str
    score: float
    probabilities: dict[str, float] = field(repr=False)
    truncated: bool = False
    labels: list[str] | None = None

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable labels with their probabilities, best first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def to_predictions(logits: np.ndarray, lengths: Sequence[int], id2label: dict[int, str], max_length: int,
                   threshold: float | None = None) -> list[Prediction]:
    """Softmax (or, with a multi-label threshold, sigmoid) rows -> Predictions."""
    probs = softmax(logits) if threshold is None else sigmoid(logits)
    results = []
    for row, length in zip(probs, lengths, strict=True):
        best = int(row.argmax())
        above = None if threshold is None else [id2label[k] for k in np.argsort(-row, kind="stable") if row[k] >= threshold]
        results.append(Prediction(label=id2label[best], score=float(row[best]),
                                  probabilities={id2label[k]: float(p) for k, p in enumerate(row)},
                                  truncated=length >= max_length, labels=above))
    return results


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def load_predictor(path: str | Path, device: str = "auto", batch_size: int = 64, precision: str = "auto"):
    """An OnnxPredictor for a folder `bertcls export` wrote, else a (PyTorch) Predictor for a run or model folder.

    `device` and `precision` apply to the PyTorch path; an exported folder runs as exported, on the CPU.
    """
    if (Path(path) / ONNX_FILE).is_file():
        return OnnxPredictor.load(path, batch_size=batch_size)
    return Predictor.load(path, device=device, batch_size=batch_size, precision=precision)


# The names bertcls.export writes (repeated here so this module needs nothing heavy).
ONNX_FILE = "model.onnx"
ONNX_META = "bertcls-onnx.json"


class _Predicts:
    """What both predictors offer; each supplies `_run(texts, pairs) -> (logits, token lengths)`."""

    id2label: dict[int, str]
    max_length: int
    threshold: float | None

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Raw logits (float32 array, one row per text, input order)."""
        return self._run(texts, pairs)[0]

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Prediction]:
        if not texts:
            return []
        logits, lengths = self._run(texts, pairs)
        return to_predictions(logits, lengths, self.id2label, self.max_length, self.threshold)


class OnnxPredictor(_Predicts):
    """An exported folder run by onnxruntime on the CPU, with the `tokenizers` tokenizer: same results as Predictor."""

    def __init__(self, session, tokenizer, config: dict, meta: dict, batch_size: int = 64) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = int(meta["max_length"])
        self.inputs = list(meta["inputs"])
        self.pad_id = int(meta.get("pad_token_id") or 0)
        self.batch_size = batch_size
        self.id2label = {int(k): v for k, v in config["id2label"].items()}
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.threshold = float(config.get(THRESHOLD_KEY, DEFAULT_THRESHOLD)) if self.multi_label else None

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 64) -> OnnxPredictor:
        import json

        import onnxruntime
        from tokenizers import Tokenizer

        from bertcls.errors import ModelError

        folder = Path(path)
        try:
            meta = json.loads((folder / ONNX_META).read_text(encoding="utf-8"))
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{folder}: not a complete `bertcls export` folder ({exc}); export it again") from None
        tokenizer.enable_truncation(int(meta["max_length"]))
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        return cls(session, tokenizer, config, meta, batch_size)

    def _run(self, texts: Sequence[str], pairs: Sequence[str] | None):
        items = list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)
        encodings = self.tokenizer.encode_batch(items)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(encodings)), key=lambda i: -lengths[i])  # similar lengths together: little padding
        out = None
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(lengths[i] for i in rows)
            feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in self.inputs}
            feed["input_ids"].fill(self.pad_id)
            for j, i in enumerate(rows):
                e, n = encodings[i], lengths[i]
                feed["input_ids"][j, :n] = e.ids
                feed["attention_mask"][j, :n] = 1
                if "token_type_ids" in feed:
                    feed["token_type_ids"][j, :n] = e.type_ids
            logits = self.session.run(["logits"], feed)[0]
            if out is None:
                out = np.empty((len(encodings), logits.shape[1]), dtype=np.float32)
            out[rows] = logits
        return out, lengths


class Predictor(_Predicts):
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 64, precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision  # fp32, or the autocast dtype: bf16 / fp16
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.multi_label = model.config.problem_type == "multi_label_classification"
        self.threshold = float(getattr(model.config, THRESHOLD_KEY, DEFAULT_THRESHOLD)) if self.multi_label else None

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
