"""Damaged and hostile files, as a user meets them: one `Error:` line naming the file, the cause and the
fix, exit 2, no traceback, and nothing already written lost."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bertcls import runs
from bertcls.cli import app
from conftest import assert_one_line_error, make_config

runner = CliRunner()
PICKLED = "it holds pickled objects other than tensors, perhaps code, which bertcls never loads"


@pytest.fixture
def run_copy(tmp_path, trained_run) -> Path:
    """A copy of the shared trained run, to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def unfinished(run_copy) -> Path:
    """The copy as a run that stopped after its last checkpoint (checkpoint-45), before metrics.json."""
    (run_copy / runs.METRICS_FILE).unlink()
    return run_copy


def resume(run: Path):
    return runner.invoke(app, ["train", str(run / runs.CONFIG_FILE), "--set", f"output_dir={run}", "--resume", "-q"])


def resume_command(run: Path) -> str:
    return f"then resume with: bertcls train {run / runs.CONFIG_FILE} --set output_dir={run} --resume"


def cut_short(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


class Payload:
    """Pickled code: unpickling it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- damaged and hostile model files

@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cut_short_model_weights(run_copy, trained_run, command):
    cut_short(run_copy / runs.MODEL_DIR / "model.safetensors", 100_000)  # the traced graph is then stale: transformers loads it
    args = ["great film"] if command == "predict" else [str(trained_run.parent / "test.csv")]
    result = runner.invoke(app, [command, "--model", str(run_copy), *args])
    assert_one_line_error(result, f"Error: {run_copy / runs.MODEL_DIR}: cannot load the model (Error while deserializing header: "
                                  "incomplete metadata, file not fully covered); replace the folder with a complete copy, or train again")


def test_pickled_code_in_a_model_folder_is_refused_not_run(tmp_path, trained_run, toy_data):
    folder = Path(shutil.copytree(trained_run / runs.MODEL_DIR, tmp_path / "hostile", ignore=shutil.ignore_patterns("*.safetensors", "*.pt")))
    marker = tmp_path / "pwned"
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, folder / "pytorch_model.bin")
    result = runner.invoke(app, ["predict", "--model", str(folder), "great film"])
    assert_one_line_error(result, f"Error: {folder}: cannot load the model ({PICKLED}); replace the folder")
    config = make_config(tmp_path, toy_data, model={"name": str(folder)})
    result = runner.invoke(app, ["train", str(config)])
    assert_one_line_error(result, f"Error: model.name {str(folder)!r}: cannot load it as a sequence classifier ({PICKLED})", tmp_path / "run")
    assert not marker.exists()


def test_cut_short_onnx_model(tmp_path, trained_run):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "exported"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(trained_run / runs.MODEL_DIR / name, folder)
    (folder / "bertcls-onnx.json").write_text(json.dumps({"max_length": 32, "inputs": ["input_ids", "attention_mask"]}))
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                                   [onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [None, None])],
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, [None, None])])
    whole = onnx.helper.make_model(graph).SerializeToString()
    (folder / "model.onnx").write_bytes(whole[: len(whole) // 2])
    result = runner.invoke(app, ["predict", "--model", str(folder), "great film"])
    assert_one_line_error(result, f"Error: {folder / 'model.onnx'}: onnxruntime cannot load it (")
    assert result.output.rstrip().endswith("); export it again with `bertcls export`")


# ---------------------------------------------------------------------------- damaged checkpoints

def _state(replace: str, by: str):
    def damage(folder: Path) -> None:
        file = folder / runs.CHECKPOINT_STATE
        text = file.read_text()
        assert replace in text
        file.write_text(text.replace(replace, by, 1))
    return damage


def _write(name: str, content):
    def damage(folder: Path) -> None:
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            torch.save(content(folder), folder / name)
    return damage


CHECKPOINT_DAMAGE = [
    ("weights cut short", lambda f: cut_short(f / runs.CHECKPOINT_WEIGHTS, 1000),
     "model.safetensors: cannot load this checkpoint (Error while deserializing header: invalid header length); "
     "resume from another one, or start over with --overwrite"),
    ("empty optimizer.pt", _write(runs.CHECKPOINT_OPTIMIZER, b""), "optimizer.pt: cannot load this checkpoint (the file is empty, cut short or damaged)"),
    ("optimizer.pt cut short", lambda f: cut_short(f / runs.CHECKPOINT_OPTIMIZER, 5000),
     "optimizer.pt: cannot load this checkpoint (the file is empty, cut short or damaged)"),
    ("optimizer.pt cut shorter", lambda f: cut_short(f / runs.CHECKPOINT_OPTIMIZER, 100),
     "optimizer.pt: cannot load this checkpoint (PytorchStreamReader failed reading zip archive"),
    ("optimizer.pt a list", _write(runs.CHECKPOINT_OPTIMIZER, lambda f: [1, 2]), "optimizer.pt: cannot load this checkpoint (holds a list, not a dict)"),
    ("pickled code in rng-0.pt", _write(runs.CHECKPOINT_RNG.format(0), lambda f: {"rng": Payload(f / "pwned")}),
     f"rng-0.pt: cannot load this checkpoint ({PICKLED})"),
    ("rng-0.pt without its window", _write(runs.CHECKPOINT_RNG.format(0), lambda f: {"rng": {}, "real_tokens": 1}),
     "rng-0.pt: cannot load this checkpoint ('window' is missing or a NoneType)"),
    ("state: a list", _write(runs.CHECKPOINT_STATE, b"[1, 2]"), "state.json: holds a JSON list, not a bertcls checkpoint state (an object)"),
    ("state: not JSON", _write(runs.CHECKPOINT_STATE, b'{"epoch": '), "state.json: unreadable checkpoint state (Expecting value"),
    ("state: step a string", _state('"global_step": 45', '"global_step": "x"'), 'state.json: global_step is "x", not a whole number >= 0'),
    ("state: epoch null", _state('"epoch": 3', '"epoch": null'), "state.json: epoch is null, not a whole number >= 0"),
    ("state: negative batches", _state('"batches_done": 0', '"batches_done": -3'), "state.json: batches_done is -3, not a whole number >= 0"),
    ("state: step a boolean", _state('"global_step": 45', '"global_step": true'), "state.json: global_step is true, not a whole number >= 0"),
    ("state: no step", _state('"global_step": 45,', ""), "state.json: not a bertcls checkpoint state (no global_step)"),
    ("state: metrics a string", _state('"best_metrics": {', '"best_metrics": "x", "old": {'), 'best_metrics is "x", not an object or null'),
    ("state: no processes", _state('"processes": 1', '"processes": 0'), "state.json: processes is 0, not a whole number >= 1"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in CHECKPOINT_DAMAGE], ids=[c[0] for c in CHECKPOINT_DAMAGE])
def test_a_damaged_checkpoint_is_refused_and_kept(unfinished, damage, message):
    folder = runs.checkpoints(unfinished)[-1]
    damage(folder)
    before = snapshot(unfinished)
    result = resume(unfinished)
    assert_one_line_error(result, message, unfinished)
    assert f"Error: {folder}{os.sep}" in result.output  # names the file
    assert "weights_only" not in result.output  # never the advice to unpickle it anyway
    after = snapshot(unfinished)
    assert after.pop(runs.CONFIG_FILE) and before.pop(runs.CONFIG_FILE)  # rewritten for the resume (its output_dir)
    assert after == before  # nothing deleted or trimmed, the damaged file included
    assert not (folder / "pwned").exists()
