"""bertcls export --format onnx: same logits as PyTorch, int8 close, and predict runs it without torch."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcls.cli import app
from bertcls.errors import ModelError, RunError
from conftest import assert_one_line_error, file_size_limit, files_in

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
runner = CliRunner()
TEXTS = ["a wonderful film", "dreadful acting", "the plot was great and the cast superb", "boring", "great " * 100, "😀 映画"]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A folder with the fp32 export of the shared run in fp32/; `int8` adds the quantized one in int8/."""
    folder = tmp_path_factory.mktemp("exported")
    _export(trained_run, folder / "fp32")
    return folder


@pytest.fixture(scope="module")
def int8(trained_run, exported):
    _export(trained_run, exported / "int8", "--quantize", "int8")
    return exported / "int8"


def _export(run, folder, *extra):
    result = runner.invoke(app, ["export", "--model", str(run), "--format", "onnx", "--output", str(folder), *extra])
    assert result.exit_code == 0, result.output


def test_fp32_logits_match_pytorch(trained_run, exported):
    from bertcls.predict import OnnxPredictor, Predictor

    torch_logits = Predictor.load(trained_run, batch_size=4).logits(TEXTS)
    onnx_logits = OnnxPredictor.load(exported / "fp32", batch_size=4).logits(TEXTS)
    assert abs(onnx_logits - torch_logits).max() < 1e-4
    assert {p.name for p in (exported / "fp32").iterdir()} == {"model.onnx", "tokenizer.json", "config.json", "bertcls-onnx.json", "config.yaml"}


def test_predict_gives_the_same_output_with_an_exported_folder(trained_run, exported):
    outputs = [runner.invoke(app, ["predict", "-m", str(m), "--json", *TEXTS]) for m in (trained_run, exported / "fp32")]
    assert all(o.exit_code == 0 for o in outputs), [o.output for o in outputs]
    torch_rows, onnx_rows = ([json.loads(line) for line in o.stdout.splitlines()] for o in outputs)
    assert [r["label"] for r in torch_rows] == [r["label"] for r in onnx_rows]
    assert [r["score"] for r in torch_rows] == pytest.approx([r["score"] for r in onnx_rows], abs=1e-4)


@pytest.mark.slow  # in CI's second pass: a quantized export
def test_int8_is_smaller_and_as_accurate(trained_run, exported, int8, tmp_path):
    assert (exported / "int8" / "model.onnx").stat().st_size < 0.5 * (exported / "fp32" / "model.onnx").stat().st_size
    test_file = trained_run.parent / "test.csv"
    accuracy = {}
    for name, model in (("torch", trained_run), ("int8", exported / "int8")):
        result = runner.invoke(app, ["evaluate", str(test_file), "-m", str(model), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        accuracy[name] = json.loads((tmp_path / name / "metrics.json").read_text())["accuracy"]
    assert abs(accuracy["int8"] - accuracy["torch"]) <= 1 / 60  # at most one of the 60 test rows differs


def test_onnx_predict_imports_neither_torch_nor_transformers(exported):
    code = ("import sys\nfrom bertcls.cli import app\n"
            f"try:\n    app(['predict', '--model', {str(exported / 'fp32')!r}, 'a wonderful film'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prediction, heavy_modules = done.stdout.splitlines()
    assert prediction.startswith("positive\t") and heavy_modules == "[]"


def test_export_refuses_a_non_empty_folder_and_says_what_to_install(trained_run, tmp_path, monkeypatch):
    from bertcls import export

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RunError, match="is not empty"):
        export.export_onnx(trained_run, tmp_path / "taken")
    monkeypatch.setattr(export, "_importable", lambda name: name != "onnxruntime")
    with pytest.raises(ModelError, match=r'export needs onnxruntime; install them with: pip install -e "\.\[onnx\]" in the bertcls repository$'):
        export.export_onnx(trained_run, tmp_path / "new")


def test_an_export_appears_whole_or_not_at_all_beside_another(trained_run, tmp_path, monkeypatch):
    from bertcls import export

    (tmp_path / "nowhere").symlink_to(tmp_path / "gone")
    result = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(tmp_path / "nowhere")])
    assert_one_line_error(result, f"--output {tmp_path / 'nowhere'} is a link to {tmp_path / 'gone'}, which does not exist; "
                                  "make that folder, or choose another")
    output = tmp_path / "onnx"

    def raced(predictor, inputs, example, model_path, folder, quantize):  # another export finishes first
        for name in ("config.json", "model.onnx"):
            (folder / name).write_text("ours")
        (output / "model.onnx").write_text("theirs")
        return {}

    monkeypatch.setattr(export, "_write_onnx", raced)
    result = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(output)])
    assert_one_line_error(result, f"--output {output}: model.onnx appeared there meanwhile (another process writing the same folder?); "
                                  "nothing of this one was written there; choose a new folder")
    assert files_in(output) == {"model.onnx": b"theirs"}


def test_export_refuses_an_output_in_a_run_or_in_the_model_folder(trained_run, tmp_path):
    # model/ is what `bertcls push` uploads: an export in it doubles the weights there
    run, plain = tmp_path / "run", tmp_path / "plain"
    shutil.copytree(trained_run, run)
    shutil.copytree(trained_run / "model", plain)
    files = sorted(tmp_path.rglob("*"))
    for model, output, message in (
            (run, run / "model" / "onnx", f"is inside the bertcls run folder {run}, which holds what training wrote; choose a folder "
                                          "outside the run, e.g. onnx/run"),
            (run, run, "is a bertcls run folder, which holds what training wrote"),
            (plain, plain / "onnx", f"is inside the model folder {plain}; choose a folder outside it")):
        result = runner.invoke(app, ["export", "--model", str(model), "--output", str(output)])
        assert_one_line_error(result, f"Error: --output {output} {message}")
    assert sorted(tmp_path.rglob("*")) == files


def test_an_export_is_not_exported_again(exported, tmp_path):
    result = runner.invoke(app, ["export", "--model", str(exported / "fp32"), "--output", str(tmp_path / "again")])
    assert result.exit_code == 2 and not (tmp_path / "again").exists()
    assert result.output == f"Error: --model {exported / 'fp32'} is an ONNX export already; export from the run (or model folder) it came from\n"


@pytest.mark.parametrize(("name", "refused", "accepted"), [("fp32", "fp16", ("auto", "fp32")), ("fp32", "bf16", ("auto", "fp32")),
                                                             pytest.param("int8", "fp32", ("auto",), marks=pytest.mark.slow)])
def test_an_export_runs_in_the_precision_it_was_exported_in(trained_run, exported, request, name, refused, accepted):
    folder = exported / "fp32" if name == "fp32" else request.getfixturevalue("int8")
    error = (f"Error: precision: {folder} is an ONNX export, whose precision is fixed at export time ({name}); "
             f"use {' or '.join(accepted)}, or for {refused} --model {trained_run.resolve()} (what it was exported from)\n")
    for command in (["predict", "-m", str(folder), "--precision", refused, "a wonderful film"],
                    ["evaluate", str(trained_run.parent / "test.csv"), "-m", str(folder), "--precision", refused]):
        result = runner.invoke(app, command)
        assert (result.exit_code, result.output) == (2, error)
    for precision in accepted:
        result = runner.invoke(app, ["predict", "-m", str(folder), "-v", "--precision", precision, "a wonderful film"])
        assert result.exit_code == 0, result.output
        assert f"engine: onnx | device: cpu | precision: {name}\n" in result.output


def test_a_model_whose_weights_hold_nan_is_not_exported(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / "model" / "model.safetensors"
    tensors = load_file(weights)
    tensors["bert.embeddings.word_embeddings.weight"][7] = float("nan")  # damaged in place: the texts holding token 7
    save_file(tensors, weights, metadata={"format": "pt"})
    for quantize in ([], ["--quantize", "int8"]):  # int8 failed inside onnxruntime's quantizer ("scale issue")
        result = runner.invoke(app, ["export", "--model", str(run), "--output", str(tmp_path / "onnx"), *quantize])
        assert_one_line_error(result, "its weight bert.embeddings.word_embeddings.weight holds NaN or infinite values")
        assert not (tmp_path / "onnx").exists()


@pytest.mark.slow  # in CI's second pass: an export per refused write
def test_an_export_the_disk_refuses_names_the_output_and_leaves_nothing(trained_run, tmp_path):
    """A real refusal: files this process writes stop at 64 KiB (`ulimit -f`), so the ONNX file fails in torch.onnx.export."""
    made, emptied = tmp_path / "new" / "onnx", tmp_path / "empty"
    emptied.mkdir()
    with file_size_limit(64 << 10):
        results = [runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(folder)]) for folder in (made, emptied)]
    for folder, result in zip((made, emptied), results, strict=True):
        assert (result.exit_code, result.output) == (2, f"Error: --output {folder}: File too large; raise the file-size limit "
                                                        "(ulimit -f; a FAT32 disk holds files of 4 GiB at most), or choose another --output\n")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["empty"]  # as it was


@pytest.mark.slow  # in CI's second pass: an ONNX export that fails late
def test_a_disk_full_after_the_model_is_written_leaves_nothing(trained_run, tmp_path, monkeypatch):
    import transformers

    def full(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{")  # cut short
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write names no file

    monkeypatch.setattr(transformers.PretrainedConfig, "save_pretrained", full)
    result = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(tmp_path / "onnx")])
    assert (result.exit_code, result.output) == (2, f"Error: --output {tmp_path / 'onnx'}: No space left on device; free space on its disk, "
                                                    "or choose another --output\n")
    assert list(tmp_path.iterdir()) == []
