"""Every BERT-family architecture through every engine: train, predict (transformers, the traced graph,
ONNX) in fp32 and bf16 with single texts and pairs, evaluate and export, on tiny random models built
offline (tests/tiny_models.py). The default run trains each architecture once and predicts through the
traced graph in both precisions; the whole matrix is behind `-m slow`."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcls import runs
from bertcls import train as train_mod
from bertcls.cli import app
from bertcls.export import BF16_TOLERANCE, FP32_TOLERANCE
from bertcls.predict import OnnxPredictor, Predictor, TorchScriptPredictor, load_predictor
from conftest import make_config, toy_rows, write_csv
from test_pairs import pair_rows
from tiny_models import ARCHITECTURES, build

runner = CliRunner()
TEXTS = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring", "great " * 100, "😀 映画", ""]
PAIRS = TEXTS[::-1]
# DeBERTa fills its attention mask with torch.finfo(dtype).min: traced in fp32, that constant overflows bf16.
GRAPH_PRECISIONS = {name: ["fp32"] if name.startswith("deberta") else ["fp32", "bf16"] for name in ARCHITECTURES}
TOLERANCE = {"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE}


@pytest.fixture(autouse=True)
def _own_process_state():
    """One thread: on models this small, a second one mostly spins (the default battery took 106 s instead of 29 s
    on 2 busy cores). These tests train in bf16 and the rest in fp32, in one process: each train() sets its own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_run(folder: Path, architecture: str, rows: dict[str, list], precision: str, pair_column: str | None = None,
              device: str = "cpu") -> Path:
    """`bertcls train` (1 epoch, on `device`) on a tiny random `architecture` whose tokenizer was trained on the train texts."""
    header = ("text", "pair", "label") if pair_column else ("text", "label")
    data = {name: write_csv(folder / f"{name}.csv", split, header=header) for name, split in rows.items()}
    model = build(architecture, folder / "base", [text for row in rows["train"] for text in row[:-1]])
    training = {"epochs": 1, "precision": precision, "save_torchscript": True, "device": device}
    config = make_config(folder, data, model={"name": str(model)}, training=training)
    result = runner.invoke(app, ["train", str(config), *(["--set", f"data.text_pair_column={pair_column}"] if pair_column else [])])
    assert result.exit_code == 0, result.output
    if "bf16" not in GRAPH_PRECISIONS[architecture]:
        assert ("note: the TorchScript graph is not used in bf16, where predict will load transformers "
                "(RuntimeError: value cannot be converted to type c10::BFloat16 without overflow)") in result.output
    return folder / "run"


def graph_precisions(run: Path) -> list[str]:
    import torch

    extra = {"bertcls.json": ""}
    torch.jit.load(str(run / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE), _extra_files=extra)
    return json.loads(extra["bertcls.json"])["precisions"]


def assert_agree(ours, theirs, tolerance: float) -> None:
    """Probabilities within `tolerance`; labels equal wherever the reference's two best are more than 2 * tolerance apart
    (closer than that, within tolerance either label is right)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in b.probabilities) <= tolerance
        best, second = sorted(b.probabilities.values(), reverse=True)[:2]
        assert a.label == b.label or best - second <= 2 * tolerance
        assert a.truncated == b.truncated


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_trains_and_predicts_through_the_graph_in_both_precisions(architecture, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "_write_reports", lambda *args: None)  # the figures do not depend on the architecture
    run = train_run(tmp_path, architecture, {"train": toy_rows(32, 0), "validation": toy_rows(8, 1)}, precision="bf16")
    assert graph_precisions(run) == GRAPH_PRECISIONS[architecture]
    for precision in ("fp32", "bf16"):
        predictor = load_predictor(run, device="cpu", precision=precision)
        assert predictor.engine == ("torchscript" if precision in GRAPH_PRECISIONS[architecture] else "pytorch")
        reference = Predictor.load(run, device="cpu", precision=precision)
        predictor.trained_on = None  # past the rule that a single-text run takes no pairs: the graph's pair input is checked too
        for pairs in (None, PAIRS):
            assert_agree(predictor.predict(TEXTS, pairs), reference.predict(TEXTS, pairs), TOLERANCE[precision])
    result = runner.invoke(app, ["predict", "-m", str(run), "--device", "cpu", "--precision", "bf16", "-v", "a wonderful film"])
    assert result.exit_code == 0, result.output
    engine = "torchscript" if "bf16" in GRAPH_PRECISIONS[architecture] else "pytorch"
    assert f"engine: {engine} | device: cpu | precision: bf16" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_engine_precision_and_input_kind(architecture, tmp_path):
    pytest.importorskip("onnxscript")
    rows = {"train": pair_rows(48, 0), "validation": pair_rows(16, 1)}
    run = train_run(tmp_path, architecture, rows, precision="fp32", pair_column="pair")
    assert graph_precisions(run) == GRAPH_PRECISIONS[architecture]
    exported = runner.invoke(app, ["export", "-m", str(run), "-o", str(tmp_path / "onnx")])
    assert exported.exit_code == 0, exported.output
    assert "warning" not in exported.stderr
    onnx = OnnxPredictor.load(tmp_path / "onnx")
    for precision in ("fp32", "bf16"):
        reference = Predictor.load(run, device="cpu", precision=precision)
        traced = TorchScriptPredictor.load(run, precision=precision)
        assert (traced is not None) == (precision in GRAPH_PRECISIONS[architecture])
        engines = [e for e in (traced, onnx if precision == "fp32" else None) if e is not None]
        for pairs in (None, PAIRS):
            expected = reference.predict(TEXTS, pairs)
            for engine in engines:
                assert_agree(engine.predict(TEXTS, pairs), expected, TOLERANCE[precision])

    # evaluate and predict --file on the run (its traced graph, fp32 as it trained) and on the export agree row by row
    scored = {}
    for name, model in (("run", run), ("onnx", tmp_path / "onnx")):
        result = runner.invoke(app, ["evaluate", str(tmp_path / "validation.csv"), "-m", str(model), "-o", str(tmp_path / f"eval-{name}")])
        assert result.exit_code == 0, result.output
        scored[name] = list(csv.DictReader(open(tmp_path / f"eval-{name}" / "predictions.csv", encoding="utf-8")))
        result = runner.invoke(app, ["predict", "-m", str(model), "-f", str(tmp_path / "validation.csv"), "-o", str(tmp_path / f"{name}.jsonl")])
        assert result.exit_code == 0, result.output
    assert len(scored["run"]) == len(scored["onnx"]) == 16 and scored["run"][0]["text_pair"] == rows["validation"][0][1]
    for ours, theirs in zip(scored["onnx"], scored["run"], strict=True):
        probabilities = {k: float(v) for k, v in theirs.items() if k.startswith("prob_")}
        assert max(abs(float(ours[k]) - v) for k, v in probabilities.items()) <= 2e-6 + FP32_TOLERANCE  # printed to 6 places
        best, second = sorted(probabilities.values(), reverse=True)[:2]
        assert ours["predicted"] == theirs["predicted"] or best - second <= 2 * FP32_TOLERANCE


@pytest.mark.gpu
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_trains_predicts_and_evaluates_on_a_gpu(architecture, tmp_path):
    """Trained on a GPU in bf16 with pairs: predict there in fp32 and bf16 agrees with the CPU, and evaluate runs there."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rows = {"train": pair_rows(48, 0), "validation": pair_rows(16, 1)}
    run = train_run(tmp_path, architecture, rows, precision="bf16", pair_column="pair", device="cuda")
    trained = json.loads((run / runs.METRICS_FILE).read_text())["train"]
    assert trained["device"].startswith("cuda") and trained["precision"] == "bf16"
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # cuDNN's attention builds itself for each new text length
    for precision in ("fp32", "bf16"):
        expected = Predictor.load(run, device="cpu", precision=precision).predict(TEXTS, PAIRS)
        on_gpu = load_predictor(run, device="cuda", precision=precision)
        assert on_gpu.engine == "pytorch" and str(on_gpu.device).startswith("cuda")
        assert_agree(on_gpu.predict(TEXTS, PAIRS), expected, TOLERANCE[precision])
    result = runner.invoke(app, ["evaluate", str(tmp_path / "validation.csv"), "-m", str(run), "--device", "cuda", "-v"])
    assert result.exit_code == 0, result.output
    assert "device: cuda" in result.stderr and "precision: bf16" in result.stderr


@pytest.mark.parametrize("failing", ["torch.onnx.export", "torch.jit.trace"])
def test_an_architecture_that_does_not_export_is_refused_in_one_line(trained_run, tmp_path, monkeypatch, failing):
    import torch

    def unsupported(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::made_up\nmore detail")

    monkeypatch.setattr(torch.onnx if failing == "torch.onnx.export" else torch.jit, failing.rsplit(".", 1)[1], unsupported)
    if failing == "torch.onnx.export":
        result = runner.invoke(app, ["export", "-m", str(trained_run), "-o", str(tmp_path / "onnx")])
        assert result.exit_code == 2
        assert result.stderr == (f"Error: {trained_run / runs.MODEL_DIR}: torch.onnx.export failed "
                                 "(unsupported operator aten::made_up); --debug shows why\n")
        assert not (tmp_path / "onnx").exists()  # the folder export made is gone with it
        return
    from bertcls import export
    from bertcls.errors import ModelError

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).unlink()
    with pytest.raises(ModelError, match=r"torch.jit.trace failed \(unsupported operator aten::made_up\)$"):
        export.save_torchscript(copy)
    assert not (copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).exists()
    assert load_predictor(copy, device="cpu", precision="fp32").engine == "pytorch"


def test_a_model_folder_with_the_default_label_names_predicts_through_the_graph(tmp_path):
    """transformers leaves the default id2label (LABEL_0, LABEL_1) out of config.json; the graph's predictor names them too."""
    from bertcls.export import save_torchscript

    folder = build("bert", tmp_path / "model", [text for text, _ in toy_rows(32, 0)])
    assert "id2label" not in json.loads((folder / "config.json").read_text())
    save_torchscript(folder)
    traced, reference = load_predictor(folder, device="cpu", precision="fp32"), Predictor.load(folder, device="cpu", precision="fp32")
    assert traced.engine == "torchscript" and traced.id2label == reference.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert_agree(traced.predict(TEXTS), reference.predict(TEXTS), FP32_TOLERANCE)
