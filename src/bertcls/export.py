"""Export: a trained run (or model folder) in, an ONNX folder out that `bertcls predict` runs without torch;
and the traced TorchScript graph training saves in the model folder, which `bertcls predict` runs
without transformers (`save_torchscript`).

    DIR/model.onnx        the classifier: input_ids, attention_mask[, token_type_ids] -> logits,
                          batch and sequence axes dynamic (fp32, or int8 weights with --quantize)
    DIR/tokenizer.json    the fast tokenizer, read with `tokenizers` alone
    DIR/config.json       the model's config: id2label, problem_type, multi_label_threshold, bertcls_long_text,
                          bertcls_label_separator
    DIR/bertcls-onnx.json what predict needs besides: max_length, input names, quantization
    DIR/config.yaml       the run's config (when exporting a run), for its column mapping

Needs the optional extra `onnx` (onnx, onnxruntime, onnxscript): pip install -e ".[onnx]" in the repository.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from bertcls import atomic, runs
from bertcls.errors import BertclsWarning, ModelError, RunError, first_line
from bertcls.predict import ONNX_FILE, ONNX_INSTALL, ONNX_META, TORCHSCRIPT_META, OnnxPredictor, Predictor, TorchScriptPredictor

# Texts used to check the exported model against PyTorch (the logits must agree within FP32_TOLERANCE).
CHECK_TEXTS = ["a short one", "a somewhat longer text, with punctuation, to vary the lengths in the batch", "x"]
# All of them in one batch, the same as pairs, and one alone: batch sizes and lengths other than the example's.
CHECK_CASES = ((CHECK_TEXTS, None), (CHECK_TEXTS, CHECK_TEXTS[::-1]), (CHECK_TEXTS[:1], None))
FP32_TOLERANCE = 1e-4
# A traced graph under bf16 autocast against the model under the same autocast: bf16 keeps 8 bits of mantissa
# (about 0.4% per operation), so probabilities are compared, within this.
BF16_TOLERANCE = 1e-2
# The precisions predict may run a traced graph in (on the CPU, so no fp16); each is checked before it is used.
GRAPH_PRECISIONS = ("fp32", "bf16")
OPSET = 18


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if not _importable(name)]
    if missing:
        raise ModelError(f"export needs {', '.join(missing)}; install them with: {ONNX_INSTALL}")


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def export_onnx(model_path: str | Path, output: str | Path, quantize: str | None = None) -> dict[str, Any]:
    """Write an ONNX folder for `model_path`; return what was checked (max logit difference against PyTorch).
    If it fails, what it wrote goes, and so do the folders it made; a write the file system refused
    (disk full, ...) is a WriteError naming `output`."""
    output = Path(output)
    if (Path(model_path) / ONNX_FILE).is_file():
        raise ModelError(f"--model {model_path} is an ONNX export already; export from the run (or model folder) it came from")
    atomic.check_folder_path(output, "--output")
    runs.check_outside_runs(output, Path(model_path), "onnx")
    _require_onnx()
    if output.exists() and any(not entry.name.startswith((atomic.FILLING_PREFIX, atomic.NEW_PREFIX)) for entry in output.iterdir()):
        raise RunError(f"--output {output} is not empty; choose a new folder")
    with warnings.catch_warnings():  # refused below in one line, rather than warned of first
        warnings.filterwarnings("ignore", message=".*classification head was never trained", category=BertclsWarning)
        predictor, inputs, example = _reference(model_path, "the ONNX predictor")
    _check_weights(predictor.model, runs.model_dir(model_path))
    with atomic.filling(output, "--output") as folder:  # the folder is filled whole or not at all
        checked = _write_onnx(predictor, inputs, example, Path(model_path), folder, quantize)
    return checked


def _check_weights(model, folder: Path) -> None:
    """Refuse a model whose classification head was never trained (a plain pretrained encoder), and one whose weights
    hold NaN or infinity (a file damaged in place): its scores are not numbers for some texts at least, and
    quantizing it fails inside onnxruntime."""
    import torch

    if getattr(model, "bertcls_untrained_head", False):  # an export would carry the random head on, without its warning
        raise ModelError(f"{folder}: its classification head was never trained, so its export would predict at random; "
                         f"fine-tune it first (bertcls train with model.name: {folder}); nothing was exported")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{folder}: its weight {name} holds NaN or infinite values (a damaged model file?); restore the "
                             "model folder, or train again; nothing was exported")


def _write_onnx(predictor, inputs: list[str], example, model_path: Path, output: Path, quantize: str | None) -> dict[str, Any]:
    """Fill the empty folder `output` with the ONNX export of `predictor`'s model and check it against PyTorch."""
    import torch

    model, tokenizer = predictor.model, predictor.tokenizer
    batch, sequence = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=predictor.max_length)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and the like
    with tempfile.TemporaryDirectory(dir=output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about axis names and deprecated pytree classes
        fp32 = Path(tmp) / ONNX_FILE
        try:
            with torch.inference_mode():
                torch.onnx.export(_logits_module(model).eval(), tuple(example[name] for name in inputs), str(fp32), input_names=inputs,
                                  output_names=["logits"], dynamic_shapes=tuple({0: batch, 1: sequence} for _ in inputs),
                                  opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # torch.export raises many kinds; all mean this architecture does not export
            if atomic.refused_write(exc, output) is not None:
                raise  # the disk, not the model: export_onnx says so
            raise ModelError(f"{runs.model_dir(model_path)}: torch.onnx.export failed ({first_line(exc)}); --debug shows why") from exc
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

            prepared = Path(tmp) / "prepared.onnx"  # shape inference and graph clean-up first, as onnxruntime advises
            try:
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                # Per output channel: one scale per row of each weight matrix. Per tensor lost 0.8 accuracy points on the
                # MiniLM SST-2 run; per channel 0.2, at the same speed and size.
                quantize_dynamic(str(prepared), str(output / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True)
            except Exception as exc:
                if atomic.refused_write(exc, output) is None and shutil.disk_usage(tmp).free < 2 * fp32.stat().st_size:
                    # onnx writes its shape-inferred copy without checking the write, then fails to parse what it cut short
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output)) from exc
                raise
        else:
            shutil.move(str(fp32), output / ONNX_FILE)
    tokenizer.backend_tokenizer.save(str(output / "tokenizer.json"))
    model.config.save_pretrained(output)
    run_config = runs.config_folder(model_path) / runs.CONFIG_FILE  # a run's, also above its model/ folder
    if run_config.is_file():  # the run's column mapping and pairs, for predict --file and evaluate
        shutil.copyfile(run_config, output / runs.CONFIG_FILE)
    meta = {"max_length": predictor.max_length, "inputs": inputs, "quantize": quantize, "opset": OPSET,
            "source": str(model_path.resolve()), "pad_token_id": tokenizer.pad_token_id or 0}
    (output / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    diff = max_logit_difference(predictor, OnnxPredictor.load(output))
    if not math.isfinite(diff):
        raise ModelError(f"{runs.model_dir(model_path)}: the exported model's scores are not numbers (NaN or infinite) on the check "
                         "texts; nothing was exported")
    return {"max_abs_logit_diff": diff, **meta}


def _logits_module(model):
    """Positional inputs in, logits out: the plain signature an ONNX or TorchScript graph wants."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return Logits(model)


def save_torchscript(model_path: str | Path) -> dict[str, Any]:
    """Trace the model of a run (or model folder) on the CPU in fp32 and save the graph in its model
    folder as `runs.TORCHSCRIPT_FILE`, with what TorchScriptPredictor needs (max_length, input names,
    the precisions it passed its check in, the weights' sizes, mtimes and sha256, so a graph whose
    weights were replaced is never used).

    Tracing records the operations one batch went through. The example batch is padded, so the
    attention mask is part of the graph, and the graph is checked end to end (tokenizer included)
    against the model at other batch sizes and lengths, single texts and pairs, before it is put in
    place: in fp32 (else ModelError) and in every other precision predict may run it in on the CPU
    (`GRAPH_PRECISIONS`), where one that fails is left out of the graph's `precisions`, so predict
    runs transformers instead. Raises ModelError when the model does not trace or fails in fp32.
    """
    import torch


    folder = runs.model_dir(model_path)
    reference, inputs, example = _reference(model_path, "the traced graph's predictor")
    model, tokenizer = reference.model, reference.tokenizer
    meta = {"max_length": reference.max_length, "inputs": inputs, "pad_token_id": tokenizer.pad_token_id or 0,
            "torch": torch.__version__, "weights": runs.weights_stamp(folder)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks that hold for every input; checked below
            graph = torch.jit.trace(_logits_module(model).eval(), tuple(example[name] for name in inputs), check_trace=False)
    except Exception as exc:  # tracing fails in many ways, all meaning this architecture does not trace
        raise ModelError(f"{folder}: torch.jit.trace failed ({first_line(exc)})") from exc
    diff = max_logit_difference(reference, TorchScriptPredictor.on_graph(graph, folder, meta, precision="fp32"))
    if not diff <= FP32_TOLERANCE:
        raise ModelError(f"{folder}: the traced graph's logits differ from the model's by {diff:.2g}; it was not saved")
    failed = {precision: why for precision in GRAPH_PRECISIONS[1:] if (why := _precision_failure(reference, graph, folder, meta, precision))}
    meta["precisions"] = [precision for precision in GRAPH_PRECISIONS if precision not in failed]
    with atomic.atomic_file(folder / runs.TORCHSCRIPT_FILE) as tmp:
        buffer = io.BytesIO()  # not straight to the file: a write that fails there aborts the process from torch's C++
        try:
            torch.jit.save(graph, buffer, _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
        except RuntimeError as exc:
            raise ModelError(f"{folder}: the traced graph could not be saved ({first_line(exc)})") from exc
        tmp.write_bytes(buffer.getbuffer())
        del buffer
        # whether it reads back, no more: the graph's logits (oneDNN's too, where it applies) were checked above
        if TorchScriptPredictor.load(model_path, precision="fp32", graph=tmp, few_texts=True) is None:
            raise ModelError(f"{folder}: the traced graph could not be read back; it was not saved")
    return {"max_abs_logit_diff": diff, "file": str(folder / runs.TORCHSCRIPT_FILE), "precisions": meta["precisions"], "failed": failed}


def _precision_failure(reference, graph, folder: Path, meta: dict, precision: str) -> str | None:
    """Why the graph cannot stand in for the model under `precision` autocast, or None when it can: its
    probabilities within BF16_TOLERANCE of the model's under the same autocast. (Labels can then differ
    only where the model's two best probabilities are within 2 * BF16_TOLERANCE of each other.)"""

    model = Predictor(reference.model, reference.tokenizer, reference.max_length, reference.batch_size, precision)
    try:
        diff = max_probability_difference(model, TorchScriptPredictor.on_graph(graph, folder, meta, precision=precision))
    except RuntimeError as exc:  # e.g. a constant traced in fp32 that overflows bf16 (DeBERTa's attention mask fill)
        # The TorchScript interpreter's message is the graph's traceback, with the error itself on the last line.
        return str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
    return None if diff <= BF16_TOLERANCE else f"probabilities differ from the model's by {diff:.2g}"


def _reference(model_path: str | Path, what: str):
    """The model as a Predictor in exact fp32 on the CPU (what an exported or traced graph is checked against),
    the positional input names the graph takes, and a padded example batch of CHECK_TEXTS to export or trace with."""

    predictor = Predictor.load(model_path, device="cpu", precision="fp32")
    tokenizer = predictor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{runs.model_dir(model_path)}: the tokenizer has no fast (tokenizer.json) version, which {what} needs")
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])
    example = tokenizer(CHECK_TEXTS[:2], padding=True, truncation=True, max_length=predictor.max_length, return_tensors="pt")
    return predictor, inputs, example


def check_cases(reference) -> tuple:
    """CHECK_CASES, for a model that reads long texts by head and tail or in windows (single texts only) its cases
    without pairs, and a text a few times max_length long: the way every engine reads it is checked too."""
    if reference.long_text.mode == "truncate":
        return CHECK_CASES
    long = " ".join(CHECK_TEXTS * max(1, reference.max_length // 4))  # over 5 tokens per repeat: past 2 x max_length
    return (*(case for case in CHECK_CASES if case[1] is None), ([long, *CHECK_TEXTS], None))


def max_logit_difference(reference, candidate) -> float:
    """The largest absolute difference between two predictors' logits on `check_cases`."""
    return max(float(abs(candidate.logits(*case) - reference.logits(*case)).max()) for case in check_cases(reference))


def max_probability_difference(reference, candidate) -> float:
    """The largest absolute difference between two predictors' probabilities on `check_cases`."""
    return max(abs(ours.probabilities[label] - theirs.probabilities[label])
               for case in check_cases(reference) for ours, theirs in zip(candidate.predict(*case), reference.predict(*case), strict=True)
               for label in theirs.probabilities)
