"""The traced TorchScript graph training saves: Predictor's results without importing transformers, never used stale."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from bertcls import machine, predict, runs
from bertcls.cli import app
from bertcls.errors import ModelError, WriteError
from bertcls.predict import Predictor, TorchScriptPredictor, load_predictor
from conftest import file_size_limit, files_in, make_config

runner = CliRunner()
TEXTS = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring", "great " * 100, "😀 映画", ""]


def test_training_saves_a_graph_that_predict_uses_on_the_cpu(trained_run):
    assert (trained_run / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).is_file()
    assert load_predictor(trained_run, device="cpu").engine == "torchscript"
    assert load_predictor(trained_run / runs.MODEL_DIR, device="cpu").engine == "torchscript"


@pytest.mark.parametrize(("precision", "onednn"), [("fp32", False), ("fp32", True), ("bf16", True)])
def test_graph_gives_the_models_results_in_input_order(trained_run, precision, onednn, monkeypatch):
    """fp32 on an AMD or Intel CPU with AVX-512 (onednn) multiplies through oneDNN; bf16 autocast always does."""
    monkeypatch.setattr(machine, "onednn_fp32_matmul", lambda: onednn)
    eager = Predictor.load(trained_run, device="cpu", batch_size=3, precision=precision)
    traced = TorchScriptPredictor.load(trained_run, batch_size=3, precision=precision)
    assert traced.onednn is (onednn and precision == "fp32" and torch.backends.mkldnn.is_available())
    long = [False, False, False, False, True, False, False]  # TEXTS[4] is over max_length (32 tokens)
    for args, truncated in (((TEXTS, None), long), ((TEXTS, TEXTS[::-1]), [a or b for a, b in zip(long, long[::-1], strict=True)])):
        assert abs(traced.logits(*args) - eager.logits(*args)).max() < 1e-4
        ours, theirs = traced.predict(*args), eager.predict(*args)
        assert [p.label for p in ours] == [p.label for p in theirs]
        assert [p.truncated for p in ours] == [p.truncated for p in theirs] == truncated


def test_a_onednn_graph_that_disagrees_with_the_traced_one_is_not_used(trained_run, monkeypatch):
    """The rewritten graph is checked on probe texts: here every linear layer wrongly gets a ReLU after it."""
    monkeypatch.setattr(machine, "onednn_fp32_matmul", lambda: True)
    monkeypatch.setattr(predict, "ONEDNN_REWRITES", [(pattern, replacement.replace('"none"', '"relu"')) for pattern, replacement in predict.ONEDNN_REWRITES])
    traced = TorchScriptPredictor.load(trained_run, precision="fp32")
    assert not traced.onednn and "oneDNN" not in traced.describe()
    assert abs(traced.logits(TEXTS) - Predictor.load(trained_run, device="cpu", precision="fp32").logits(TEXTS)).max() < 1e-4


def test_the_onednn_graph_leaves_the_saved_file_as_it_was(trained_run, monkeypatch):
    monkeypatch.setattr(machine, "onednn_fp32_matmul", lambda: True)
    file = trained_run / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE
    before = file.read_bytes()
    traced = TorchScriptPredictor.load(trained_run, precision="fp32")
    if torch.backends.mkldnn.is_available():
        assert traced.onednn and traced.describe().endswith("| matmul: oneDNN")
        kinds = {node.kind() for node in traced.module.graph.nodes()}
        assert "mkldnn::_linear_pointwise" in kinds and "aten::linear" not in kinds and "aten::gelu" not in kinds
    assert file.read_bytes() == before


def test_predict_multiplies_through_onednn_only_for_more_than_one_batch(trained_run, monkeypatch):
    """A few texts on the command line start faster without the rewrite, which pays off over many batches."""
    monkeypatch.setattr(machine, "onednn_fp32_matmul", lambda: True)
    for args, rewritten in ((["a wonderful film"], False), (["--batch-size", "1", "a wonderful film", "boring"], True)):
        result = runner.invoke(app, ["predict", "--model", str(trained_run), "--device", "cpu", "-v", *args])
        assert result.exit_code == 0, result.output
        assert ("matmul: oneDNN" in result.stderr) is (rewritten and torch.backends.mkldnn.is_available()), result.stderr


def test_cli_predict_from_the_graph_imports_no_transformers(trained_run):
    code = ("import sys\nfrom bertcls.cli import app\n"
            f"try:\n    app(['predict', '--model', {str(trained_run)!r}, '--device', 'cpu', '-v', 'a wonderful film'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('transformers', 'datasets', 'accelerate', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prediction, heavy_modules = done.stdout.splitlines()
    assert prediction.startswith("positive\t") and heavy_modules == "[]"
    assert "engine: torchscript" in done.stderr


def test_graph_is_not_used_once_the_weights_change(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)  # new mtimes, same bytes: the sha256 still matches
    assert load_predictor(copy, device="cpu").engine == "torchscript"
    model = Predictor.load(copy, device="cpu").model
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))  # every text now gets id2label[0]
    model.save_pretrained(copy / runs.MODEL_DIR)
    predictor = load_predictor(copy, device="cpu")
    assert predictor.engine == "pytorch"
    assert {p.label for p in predictor.predict(TEXTS)} == {model.config.id2label[0]}


def test_a_graph_damaged_in_place_is_an_error_not_random_labels(trained_run, tmp_path):
    """Bytes of a graph overwritten with its size and mtime kept: its weights become NaN, and so would every score."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    graph = copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE
    stat = graph.stat()
    with zipfile.ZipFile(graph) as archive:  # the largest tensor: the word embeddings, stored uncompressed
        record = max(archive.infolist(), key=lambda info: info.file_size)
        with open(graph, "r+b") as f:
            f.seek(record.header_offset + 26)
            start = record.header_offset + 30 + sum(struct.unpack("<HH", f.read(4)))
            f.seek(start)
            f.write(b"\xff" * record.file_size)  # 0xffffffff is a NaN float
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\na wonderful film,positive\nboring,negative\n")
    for command in (["predict", "--model", str(copy), "a wonderful film"], ["predict", "--model", str(copy), "--file", str(texts)],
                    ["evaluate", str(texts), "-m", str(copy), "-o", str(tmp_path / "eval")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "not numbers (NaN or infinite) for" in result.output and f"delete {runs.TORCHSCRIPT_FILE}" in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "eval").exists()
    (copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).unlink()  # the fix the message names
    assert runner.invoke(app, ["predict", "--model", str(copy), "a wonderful film"]).exit_code == 0


def test_run_without_the_graph_predicts_through_transformers(tmp_path, toy_data):
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data, training={"epochs": 1, "save_torchscript": False}))])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).exists()
    out = runner.invoke(app, ["predict", "-m", str(tmp_path / "run"), "-v", "superb"])
    assert out.exit_code == 0, out.output
    assert "engine: pytorch" in out.stderr


def test_a_graph_that_disagrees_with_the_model_is_not_saved(trained_run, tmp_path, monkeypatch):
    from bertcls import export

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).unlink()
    monkeypatch.setattr(export, "FP32_TOLERANCE", -1.0)  # no graph can pass
    with pytest.raises(ModelError, match="differ from the model's"):
        export.save_torchscript(copy)
    assert sorted(p.name for p in (copy / runs.MODEL_DIR).iterdir()) == [runs.CARD_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert load_predictor(copy, device="cpu").engine == "pytorch"


def test_a_disk_that_refuses_the_graph_is_an_error_not_an_abort(trained_run, tmp_path):
    from bertcls import export

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).unlink()
    before = files_in(copy)
    graph_size = (trained_run / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).stat().st_size
    with file_size_limit(graph_size // 2), pytest.raises(WriteError, match="File too large"):  # torch's own writer aborted here
        export.save_torchscript(copy)
    assert files_in(copy) == before


def test_saved_graph_records_what_it_was_traced_from(trained_run):
    extra = {"bertcls.json": ""}
    torch.jit.load(str(trained_run / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE), _extra_files=extra)
    meta = json.loads(extra["bertcls.json"])
    assert meta["max_length"] == 32 and meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(meta["weights"]) == ["model.safetensors"] and len(meta["weights"]["model.safetensors"]["sha256"]) == 64


def test_a_failure_to_save_the_graph_never_costs_the_run(tmp_path, toy_data, monkeypatch):
    from bertcls import export

    def full_disk(run):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_torchscript", full_disk)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data, training={"epochs": 1, "save_torchscript": True}))])
    assert result.exit_code == 0, result.output
    assert "note: no TorchScript graph, so predict will load transformers ([Errno 28] No space left on device)" in result.output
    assert runs.is_finished(tmp_path / "run")
    assert load_predictor(tmp_path / "run", device="cpu").engine == "pytorch"


def test_a_graph_checked_in_fp32_only_is_not_run_in_bf16(trained_run, tmp_path):
    """Graphs of earlier versions record no precisions: they were checked in fp32 alone, so bf16 runs transformers."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    file = copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE
    extra = {"bertcls.json": ""}
    graph = torch.jit.load(str(file), _extra_files=extra)
    meta = json.loads(extra["bertcls.json"])
    assert meta.pop("precisions") == ["fp32", "bf16"]
    torch.jit.save(graph, str(file), _extra_files={"bertcls.json": json.dumps(meta)})
    assert TorchScriptPredictor.load(copy, precision="fp32") is not None
    assert TorchScriptPredictor.load(copy, precision="bf16") is None
    assert load_predictor(copy, device="cpu", precision="bf16").engine == "pytorch"
