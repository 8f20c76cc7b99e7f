"""Prediction: a run folder, any Hugging Face classifier folder, or an exported ONNX folder, and texts
in; labels and scores out.

Texts are tokenised in one batch call, sorted by length so each batch pads little, run (under
`torch.inference_mode`, with bf16 autocast where the run trained in it and the hardware runs it
natively, or in onnxruntime), and returned in input order. A text longer than max_length is read as the
model's saved `data.long_text` says (`bertcls.longtext`), by every engine alike: truncated, by head and
tail, or in windows whose logits are pooled into the text's one row. Two paths skip transformers, whose
import alone takes seconds: a run's traced TorchScript graph (torch and `tokenizers` only), and
an exported ONNX folder (onnxruntime and `tokenizers`, no torch).

A model is given texts as it was trained: pairs to a sentence-pair model, single texts to the others, as its
run recorded (`trained_on`, `pairing_problem`); an export's precision is the one it was exported in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertcls import longtext, machine, runs
from bertcls.errors import ConfigError, DataError, ModelError, first_line, listing, shown
from bertcls.longtext import LONG_TEXT_KEY, LongText, Reading
from bertcls.model import (
    DEFAULT_THRESHOLD,
    MAX_LENGTH_KEY,
    THRESHOLD_KEY,
    load_trained,
    pad_batch,
    read_config_json,
    truncate_long_texts,
    usable_positions,
)

# Fallback when neither the run's config nor the tokenizer names a sensible limit.
DEFAULT_MAX_LENGTH = 512


@dataclass
class Prediction:
    """The most probable label and its probability; for multi-label models also every label at or above the threshold.

    `truncated`: the text is longer than max_length tokens (so it was truncated, or read by head and tail, or in
    `windows` windows, as the model's long_text says; `beyond_windows`: it needed more than longtext.MAX_WINDOWS).
    """

    label: str
    score: float
    probabilities: Mapping[str, float] = field(repr=False)
    truncated: bool = False
    labels: list[str] | None = None
    windows: int = 1
    beyond_windows: bool = False

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable labels with their probabilities, best first."""
        if isinstance(self.probabilities, RowProbabilities):
            row, names = self.probabilities.row, self.probabilities.names
            return [(names[i], float(row[i])) for i in top_ids(row, k)]
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def record(self, text: str, top_k: int | None = None, probabilities: bool = True) -> dict:
        """The record of this prediction, as `bertcls predict --json` prints it, `bertcls serve` answers and
        `predict --file` flattens into columns: text, label, score and probabilities (rounded to 6 places),
        `labels` for a multi-label model, and with `top_k` the K most probable labels."""
        record = {"text": text, "label": self.label, "score": round(self.score, 6)}
        if probabilities:
            record["probabilities"] = {k: round(v, 6) for k, v in self.probabilities.items()}
        if self.labels is not None:
            record["labels"] = self.labels
        if top_k:
            record["top_k"] = [{"label": label, "score": round(score, 6)} for label, score in self.top(top_k)]
        return record


class RowProbabilities(Mapping):
    """label -> probability for one prediction, read from its row of the probabilities on demand: a dict
    per row costs about 100 bytes a label (1 GB for 2,000 texts of a model with 10,000 labels)."""

    def __init__(self, row: np.ndarray, names: Sequence[str], ids: dict[str, int]) -> None:
        self.row, self.names, self.ids = row, names, ids  # names by id; ids: label -> id, shared by every row

    def __getitem__(self, label: str) -> float:
        return float(self.row[self.ids[label]])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def top_ids(row: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest values of `row`, largest first, ties in id order (as a stable sort of the whole row
    would give), without sorting the whole row."""
    k = min(k, len(row))
    kth = np.partition(row, len(row) - k)[len(row) - k]
    above, tied = np.flatnonzero(row > kth), np.flatnonzero(row == kth)
    ids = np.concatenate([above, tied[: k - len(above)]])
    return ids[np.lexsort((ids, -row[ids]))]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' float dtype, in one new array (rows x labels can be large)."""
    out = np.asarray(logits, dtype=np.result_type(logits, np.float32)) - logits.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def to_predictions(logits: np.ndarray, reading: Reading, id2label: dict[int, str], threshold: float | None = None) -> list[Prediction]:
    """Softmax (or, with a multi-label threshold, sigmoid) rows, one per text, -> Predictions."""
    probs = softmax(logits) if threshold is None else sigmoid(logits)
    if sorted(id2label) != list(range(probs.shape[1])):  # config.json edited, or not the one the weights were saved with
        raise ModelError(f"the model gives {probs.shape[1]} scores a text, but id2label in its config.json names "
                         f"{len(id2label)} label(s) (ids {listing(sorted(id2label))}); it needs one for each id from 0 to "
                         f"{probs.shape[1] - 1}: restore config.json from the run, or train again")
    names = [id2label[k] for k in range(probs.shape[1])]
    ids = {name: k for k, name in enumerate(names)}
    windows, beyond = reading.windows().tolist(), reading.beyond or [False] * len(reading.over)
    results = []
    for row, over, n_windows, past in zip(probs, reading.over, windows, beyond, strict=True):
        best = int(row.argmax())
        if threshold is not None:
            above = np.flatnonzero(row >= threshold)
            above = [names[k] for k in above[np.argsort(-row[above], kind="stable")]]
        results.append(Prediction(label=names[best], score=float(row[best]), probabilities=RowProbabilities(row, names, ids),
                                  truncated=over, labels=above if threshold is not None else None, windows=n_windows, beyond_windows=past))
    return results


def saved_threshold(value, where: str) -> float:
    """A multi-label model's decision threshold as `where` (its config.json) holds it under THRESHOLD_KEY."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0 < threshold < 1:  # NaN fails too
        raise ModelError(f"{where}: its {THRESHOLD_KEY} ({shown(value)}) is not a number between 0 and 1; fix the value "
                         f"({DEFAULT_THRESHOLD} unless the run tuned another), or train again")
    return threshold


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def load_predictor(path: str | Path, device: str = "auto", batch_size: int = 64, precision: str = "auto", few_texts: bool = False):
    """The fastest way to run `path` on `device`; `few_texts`: for a handful of texts, where start-up counts more than
    speed (the graph's oneDNN rewrite, which pays off over many batches, is skipped).

    - a folder `bertcls export` wrote: an OnnxPredictor (CPU; `device` does not apply, and `precision` must be auto
      or the one it was exported in);
    - on the CPU, a model whose traced graph (`runs.TORCHSCRIPT_FILE`, saved by training) matches its
      weights and passed its check in `precision`: a TorchScriptPredictor, which starts without importing
      transformers;
    - else a Predictor: the model through transformers, on `device`.
    In fp32 the logits of the first two agree with Predictor's within 1e-4; in bf16 the graph's probabilities
    agree with Predictor's under the same autocast within 1e-2.

    The predictor knows the text columns the model was trained on (`trained_on`), so it refuses pairs a
    single-text model never saw, and single texts where a pair model needs pairs.
    """
    device, precision = resolve_device_precision(path, device, precision)
    predictor = None
    if (Path(path) / ONNX_FILE).is_file():
        predictor = OnnxPredictor.load(path, batch_size=batch_size)
    elif device == "cpu":
        predictor = TorchScriptPredictor.load(path, batch_size=batch_size, precision=precision, few_texts=few_texts)
    if predictor is None:
        predictor = Predictor.load(path, device=device, batch_size=batch_size, precision=precision)
    predictor.trained_on = trained_on(path)
    return predictor


def resolve_device_precision(path: str | Path, device: str, precision: str) -> tuple[str, str]:
    """`device` auto: cuda when there is a GPU. `precision` auto: the precision the run trained in where this device
    computes it natively (bf16 on CPUs with AVX512-BF16/AMX and GPUs of compute capability 8.0+), else fp32; a
    plain model folder follows the hardware alone. An ONNX export runs on the CPU in the precision it was exported
    in: `precision` must be auto or that one (`export_precision`)."""

    machine.check_precision(precision, "precision")
    if (Path(path) / ONNX_FILE).is_file():
        return "cpu", export_precision(Path(path), precision)
    device = machine.pick_device(device, "device")
    resolved = machine.resolve_precision(precision, device)
    if precision == "auto":
        trained = _trained_precision(Path(path))
        # Follow the run (its validation and test scores were computed so) unless the hardware lacks it.
        resolved = resolved if trained in ("auto", resolved) else "fp32"
    return device, resolved


def _trained_precision(path: Path) -> str:
    """The precision the run at `path` trained and was scored in: its metrics.json's, else (not finished) its config's,
    whose auto became fp32 on hardware without native bf16; auto for a plain model folder."""
    try:
        return json.loads((runs.config_folder(path) / runs.METRICS_FILE).read_text(encoding="utf-8"))["train"]["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return runs.run_setting(path, "training", "precision", "auto")


def export_precision(folder: Path, precision: str) -> str:
    """The precision of the ONNX export in `folder` (fp32, or int8: quantized weights), which was fixed when it was
    exported; a ConfigError when `precision` asks for another (auto takes the export's)."""
    try:
        meta = json.loads((folder / ONNX_META).read_text(encoding="utf-8"))
        held, source = meta.get("quantize") or "fp32", meta.get("source")
    except (OSError, ValueError, AttributeError):
        return "fp32"  # not a complete export: OnnxPredictor.load says what is wrong with it
    if precision in ("auto", held):
        return held
    choices = "auto or fp32" if held == "fp32" else "auto"
    elsewhere = f", or for {precision} --model {source} (what it was exported from)" if source and Path(source).is_dir() else ""
    raise ConfigError(f"precision: {folder} is an ONNX export, whose precision is fixed at export time ({held}); "
                      f"use {choices}{elsewhere}")


def trained_on(path: str | Path) -> tuple[str, ...] | None:
    """The text column the model at `path` was trained on, and its pair column for a sentence-pair model, as its run's
    config.yaml records them (in the run folder, in an export of the run, or above the run's model/ folder); None
    where nothing records them (a plain or hub model folder): such a model takes texts with or without pairs."""
    data = runs.run_setting(path, "data")
    if not data:
        return None
    text, pair = data.get("text_column") or runs.DEFAULT_COLUMNS["text_column"], data.get("text_pair_column")
    return (text, pair) if pair else (text,)


def pairing_problem(predictor, given: bool, option: str | None = None) -> str | None:
    """Why `predictor` cannot take texts with second texts (`given`) or without, or None: the one rule predict,
    predict --file, evaluate and serve share. A model that reads long texts by head and tail or in windows takes no
    pairs; a model trained on pairs needs them and one trained on single texts takes none (as `trained_on` says; a
    model with no run to say takes either). `option`: how the caller's user gives second texts, named in the fix."""
    long_text, columns = getattr(predictor, "long_text", None), getattr(predictor, "trained_on", None)
    drop = f"drop {option}" if option else "give it texts without pairs"
    if given and long_text is not None and long_text.pairs_problem():
        return f"{long_text.pairs_problem()}; {drop}"
    if columns is None or given == (len(columns) == 2):
        return None
    if given:
        return f"the model was trained on single texts (column {columns[0]!r}), not pairs; {drop}"
    give = f"give the second texts with {option}" if option else "give each text its second text"
    return f"the model was trained on text pairs (columns {columns[0]!r} and {columns[1]!r}); {give}"


# The files of a folder `bertcls export` writes (see bertcls.export).
ONNX_FILE = "model.onnx"
ONNX_META = runs.ONNX_META
# How to get the optional onnx extra (bertcls is installed from its repository, not from PyPI).
ONNX_INSTALL = 'pip install -e ".[onnx]" in the bertcls repository'
# Inside a traced graph file: what TorchScriptPredictor needs besides the graph (see bertcls.export.save_torchscript).
TORCHSCRIPT_META = "bertcls.json"
# A traced graph's linear layers as oneDNN runs them: a linear followed by a GELU first (one fused op), then the rest.
ONEDNN_REWRITES = [(
    """graph(%x, %w, %b, %approximate):
  %y = aten::linear(%x, %w, %b)
  %r = aten::gelu(%y, %approximate)
  return (%r)""",
    """graph(%x, %w, %b, %approximate):
  %attr : str = prim::Constant[value="gelu"]()
  %scalars : Scalar?[] = prim::ListConstruct()
  %r = mkldnn::_linear_pointwise(%x, %w, %b, %attr, %scalars, %approximate)
  return (%r)"""), (
    """graph(%x, %w, %b):
  %r = aten::linear(%x, %w, %b)
  return (%r)""",
    """graph(%x, %w, %b):
  %attr : str = prim::Constant[value="none"]()
  %scalars : Scalar?[] = prim::ListConstruct()
  %algorithm : str? = prim::Constant()
  %r = mkldnn::_linear_pointwise(%x, %w, %b, %attr, %scalars, %algorithm)
  return (%r)""")]
ONEDNN_PROBE = ["a short text", "and a longer one, so that the batch holds padding as well"]
FP32_PROBE_TOLERANCE = 1e-4  # as export.FP32_TOLERANCE: two fp32 libraries differ in rounding only


class _Predicts:
    """What every predictor offers; each supplies `_run(texts, pairs) -> (logits, longtext.Reading)`, one row per text."""

    engine: str  # pytorch, torchscript or onnx: what runs the model
    device = "cpu"
    precision = "fp32"  # fp32; bf16 or fp16: the autocast dtype; int8: an export's quantized weights
    id2label: dict[int, str]
    max_length: int
    threshold: float | None
    long_text: LongText  # how a text over max_length is read: as the model was trained (its config.json says)
    trained_on: tuple[str, ...] | None = None  # the text (and pair) column it was trained on; see `trained_on`

    def describe(self) -> str:
        """What runs the model, where, in which precision (and how it reads long texts): the line `--verbose` prints."""
        reads = f" | long_text: {self.long_text.describe()}" if self.long_text.mode != "truncate" else ""
        return f"engine: {self.engine} | device: {self.device} | precision: {self.precision}{reads}"

    def check_pairing(self, given: bool, option: str | None = None) -> None:
        """A DataError when this model cannot take texts with second texts (`given`) or without (`pairing_problem`)."""
        problem = pairing_problem(self, given, option)
        if problem:
            raise DataError(problem)

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Raw logits (float32 array, one row per text, input order)."""
        self.check_pairing(pairs is not None)
        check_texts(texts, pairs)
        return self._run(texts, pairs)[0]

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Prediction]:
        self.check_pairing(pairs is not None)
        check_texts(texts, pairs)
        if not texts:
            return []
        logits, reading = self._run(texts, pairs)
        self.check_scores(logits)
        return to_predictions(logits, reading, self.id2label, self.threshold)

    def check_scores(self, logits: np.ndarray) -> None:
        """A ModelError when the model's scores are not numbers (a model file damaged in place, an overflow in a
        16-bit precision): NaN scores would be labels picked at random, written as if they were answers."""
        bad = int((~np.isfinite(logits)).any(axis=-1).sum())
        if not bad:
            return
        if self.precision in ("bf16", "fp16"):
            fix = "predict with --precision fp32, or check the model folder's files"
        elif self.engine == "torchscript":
            fix = f"its traced graph may be damaged: delete {runs.TORCHSCRIPT_FILE} from the model folder, and the model runs through transformers"
        else:
            fix = "its files may be damaged: restore the model folder, or train again"
        raise ModelError(f"the model gave scores that are not numbers (NaN or infinite) for {bad} of {len(logits)} text(s) "
                         f"({self.engine}, {self.precision}); {fix}")


def check_texts(texts: Sequence[str], pairs: Sequence[str] | None = None) -> None:
    """A DataError naming the first text the model cannot read (see `text_problem`)."""
    for kind, column in (("text", texts), ("pair", pairs or ())):
        for number, text in enumerate(column, start=1):
            problem = text_problem(text)
            if problem:
                raise DataError(f"{kind} {number} {problem}")


def text_problem(text) -> str | None:
    """What keeps `text` from being tokenised, or None: not a string, or not Unicode (a lone surrogate: what Python
    makes of bytes that are not UTF-8 on a command line, or of a JSON escape like \\ud800)."""
    if not isinstance(text, str):
        return f"is a {type(text).__name__}, not text; give text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"is not valid Unicode (a lone surrogate at character {exc.start + 1}, from bytes that are not UTF-8 "
                "or an escape like \\ud800); give UTF-8 text")
    return None


class _TokenizersPredictor(_Predicts):
    """A graph with positional inputs (input_ids, attention_mask[, token_type_ids]) -> logits, fed by the
    `tokenizers` tokenizer alone: texts tokenised in one call, sorted by length, padded per batch, returned
    in input order. Subclasses supply `_forward(feed: name -> int64 array) -> float32 logits`."""

    def __init__(self, tokenizer, config: dict, meta: dict, batch_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(meta["max_length"])
        self.inputs = list(meta["inputs"])
        self.pad_id = int(meta.get("pad_token_id") or 0)
        self.batch_size = batch_size
        # transformers leaves the default names (LABEL_0, LABEL_1) out of config.json
        self.id2label = {int(k): v for k, v in config.get("id2label", {0: "LABEL_0", 1: "LABEL_1"}).items()}
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.threshold = saved_threshold(config.get(THRESHOLD_KEY, DEFAULT_THRESHOLD), "config.json") if self.multi_label else None
        self.long_text = LongText.saved(config.get(LONG_TEXT_KEY), "config.json")

    @staticmethod
    def _read(folder: Path, max_length: int):
        """(config.json as a dict, the tokenizer from tokenizer.json, truncating at max_length, not padding)."""
        from tokenizers import Tokenizer

        if max_length < 1:
            raise ValueError(f"its max_length {max_length} is no number of tokens")
        config = read_config_json(folder)
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception for a damaged file
            raise ValueError(f"tokenizer.json: {exc}") from None
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()
        return config, tokenizer

    def _forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _tokenise(self, texts: Sequence[str], pairs: Sequence[str] | None) -> longtext.Rows:
        """The rows of token ids the model reads: as the long_text setting says, or truncated to max_length,
        long texts cut first (see CHARS_PER_TOKEN)."""
        if self.long_text.mode != "truncate":
            return longtext.read(self.tokenizer, texts, self.max_length, self.long_text)

        def encode(texts, pairs):
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts))
            return [(e.ids, e.type_ids, bool(e.overflowing)) for e in encodings]

        input_ids, type_ids, over = truncate_long_texts(encode, texts, pairs, self.max_length)
        return longtext.Rows(input_ids, type_ids, Reading(over))

    def _run(self, texts: Sequence[str], pairs: Sequence[str] | None):
        read = self._tokenise(texts, pairs)
        lengths = [len(ids) for ids in read.input_ids]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # similar lengths together: little padding
        out = None
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            types = [read.type_ids[i] for i in rows] if "token_type_ids" in self.inputs else None
            logits = self._forward(pad_batch([read.input_ids[i] for i in rows], types, self.pad_id))
            if out is None:
                out = np.empty((len(lengths), logits.shape[1]), dtype=np.float32)
            out[rows] = logits
        return read.reading.pool(out), read.reading


class OnnxPredictor(_TokenizersPredictor):
    """An exported folder run by onnxruntime on the CPU, with the `tokenizers` tokenizer: same results as Predictor."""

    engine = "onnx"

    def __init__(self, session, tokenizer, config: dict, meta: dict, batch_size: int = 64) -> None:
        super().__init__(tokenizer, config, meta, batch_size)
        self.session = session
        self.precision = meta.get("quantize") or "fp32"

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 64) -> OnnxPredictor:

        folder = Path(path)
        try:
            import onnxruntime
        except ImportError:
            raise ModelError(f"{folder} is an exported ONNX model, which needs onnxruntime; install it with: {ONNX_INSTALL}") from None
        try:
            meta = json.loads((folder / ONNX_META).read_text(encoding="utf-8"))
            missing = [key for key in ("max_length", "inputs") if key not in meta]
            if missing:
                raise ValueError(f"{ONNX_META} has no {' or '.join(missing)}")
            config, tokenizer = cls._read(folder, int(meta["max_length"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{folder}: not a complete `bertcls export` folder ({exc}); export it again") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except cls._unloadable() as exc:
            why = first_line(exc).rsplit(" failed:", 1)[-1]  # after "[ONNXRuntimeError] : 7 : ... Load model from F failed:"
            raise ModelError(f"{folder / ONNX_FILE}: onnxruntime cannot load it ({why}); "
                             "export it again with `bertcls export`") from None
        return cls(session, tokenizer, config, meta, batch_size)

    @staticmethod
    def _unloadable() -> tuple[type[Exception], ...]:
        """What onnxruntime raises for a model file that is cut short, damaged or needs what this version lacks."""
        from onnxruntime.capi import onnxruntime_pybind11_state as ort

        return ort.Fail, ort.InvalidArgument, ort.InvalidProtobuf, ort.InvalidGraph, ort.NoSuchFile, ort.NotImplemented

    def _forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feed)[0]


class TorchScriptPredictor(_TokenizersPredictor):
    """The traced graph training saves beside the weights, run by torch alone on the CPU: Predictor's
    results (the same operations) without importing transformers, which costs seconds at start-up."""

    engine = "torchscript"

    def __init__(self, module, tokenizer, config: dict, meta: dict, batch_size: int = 64, precision: str = "fp32") -> None:
        super().__init__(tokenizer, config, meta, batch_size)
        self.module = module
        self.precision = precision  # fp32, or bf16: the autocast dtype
        self.onednn = False  # whether the linear layers run through oneDNN (see machine.onednn_fp32_matmul)

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 64, precision: str = "fp32", graph: Path | None = None,
             few_texts: bool = False) -> TorchScriptPredictor | None:
        """None when the model folder has no traced graph, its weights changed since it was traced, or it did not
        pass its check in `precision` (the graph's `precisions`; a graph without them was checked in fp32 only).

        `graph`: read the graph from this file instead (to check one before it is put in place). `few_texts`: as
        load_predictor.
        """
        import torch


        folder = runs.model_dir(path)
        file = graph or folder / runs.TORCHSCRIPT_FILE
        if not file.is_file():
            return None
        extra = {TORCHSCRIPT_META: ""}
        try:
            module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
            meta = json.loads(extra[TORCHSCRIPT_META])
            if precision not in meta.get("precisions", ["fp32"]):
                return None  # e.g. DeBERTa's graph overflows under bf16 autocast: transformers runs it instead
            if not runs.same_weights(folder, meta["weights"]):
                return None  # stale: the weights were replaced after tracing
            return cls.on_graph(module, folder, meta, batch_size, precision, few_texts)
        except (OSError, RuntimeError, ValueError, KeyError):
            return None  # unreadable (or from another torch): the transformers path still works

    @classmethod
    def on_graph(cls, module, folder: Path, meta: dict, batch_size: int = 64, precision: str = "fp32",
                 few_texts: bool = False) -> TorchScriptPredictor:
        """The graph `module` (loaded, or just traced and still to be checked) with the tokenizer of model folder `folder`."""
        config, tokenizer = cls._read(folder, int(meta["max_length"]))
        predictor = cls(module.eval(), tokenizer, config, meta, batch_size, precision)
        if precision == "fp32" and not few_texts and machine.onednn_fp32_matmul():
            predictor._multiply_through_onednn()
        return predictor

    def describe(self) -> str:
        return super().describe() + (" | matmul: oneDNN" if self.onednn else "")

    def _multiply_through_onednn(self) -> None:
        """Run the graph's linear layers (and each GELU that follows one, fused) through oneDNN instead of MKL.

        Done on a frozen copy of the graph (the weights become constants; the file is not touched), and kept
        only when two probe texts get the same logits as the graph as traced, within FP32_PROBE_TOLERANCE.
        """
        import torch

        traced = self.module
        probe = self.logits(ONEDNN_PROBE)
        try:
            frozen = torch.jit.freeze(traced)
            for pattern, replacement in ONEDNN_REWRITES:
                torch._C._jit_pass_custom_pattern_based_rewrite_graph(pattern, replacement, frozen.graph)
            self.module = frozen
            kept = bool(np.allclose(self.logits(ONEDNN_PROBE), probe, rtol=0, atol=FP32_PROBE_TOLERANCE))
        except (RuntimeError, AttributeError):  # a torch without the op or the pass: the graph as traced still works
            kept = False
        if not kept:
            self.module = traced
        self.onednn = kept

    def _forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else None
        # The graph executor's profiling and re-optimising passes made bf16 batches 10% slower: run the graph as traced.
        with torch.inference_mode(), torch.jit.optimized_execution(False), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return self.module(*(torch.from_numpy(feed[name]) for name in self.inputs)).float().numpy()


class Predictor(_Predicts):
    """The model through transformers, on any device."""

    engine = "pytorch"

    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 64, precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision  # fp32, or the autocast dtype: bf16 / fp16
        self.device = str(next(model.parameters()).device)
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.multi_label = model.config.problem_type == "multi_label_classification"
        where = "the model's config.json"
        self.threshold = saved_threshold(getattr(model.config, THRESHOLD_KEY, DEFAULT_THRESHOLD), where) if self.multi_label else None
        self.long_text = LongText.saved(getattr(model.config, LONG_TEXT_KEY, None), where)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 64, precision: str = "auto") -> Predictor:
        """The model through transformers; `device` and `precision` as `resolve_device_precision` says."""
        device, precision = resolve_device_precision(path, device, precision)
        machine.gpu_attention_kernels(device)
        model, tokenizer = load_trained(path)
        return cls(model.to(device), tokenizer, run_max_length(path, tokenizer, model.config), batch_size, precision)

    def _run(self, texts: Sequence[str], pairs: Sequence[str] | None):
        import torch

        from bertcls.data import Split, encode, loader, sorted_batches
        from bertcls.inference import predict_logits

        split = Split("predict", list(texts), list(pairs) if pairs is not None else None, None)
        encoded = encode(split, self.tokenizer, self.max_length, long_text=self.long_text)
        batches = loader(encoded, self.tokenizer.pad_token_id or 0, sorted_batches(encoded.lengths, self.batch_size))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=dtype) if dtype else nullcontext():
            return predict_logits(self.model, batches, reading=encoded.reading)[0], encoded.reading


def run_max_length(path: str | Path, tokenizer, model_config=None) -> int:
    """The run's data.max_length, else the one the model was trained with as its config (`model_config`) records
    it (MAX_LENGTH_KEY, or in a model saved before that key, its long_text setting's), else the tokenizer's limit
    when it names a sensible one, else DEFAULT_MAX_LENGTH; these last two no more than the model's positions take."""

    recorded = getattr(model_config, MAX_LENGTH_KEY, None)
    if recorded is not None and (type(recorded) is not int or recorded < 1):
        raise ModelError(f"the model's config.json: its {MAX_LENGTH_KEY} ({shown(recorded)}) is not a number of tokens; "
                         "set it to the run's data.max_length, or train again")
    saved = recorded or (getattr(model_config, LONG_TEXT_KEY, None) or {}).get("max_length")
    max_length = runs.run_setting(path, "data", "max_length") or saved
    if max_length:
        return int(max_length)
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH)
    limit = limit if isinstance(limit, int) and limit <= 8192 else DEFAULT_MAX_LENGTH
    return min(limit, usable_positions(model_config) or limit)  # a tokenizer may allow more than the model reads
