"""Damaged and hostile files, and a file system that refuses writes, as a user meets them: one `Error:`
line naming the file, the cause and the fix, exit 2, no traceback, and nothing already written lost."""

import csv
import errno
import json
import os
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bertcls import atomic, runlock, runs
from bertcls.cli import app
from bertcls.errors import DataError, WriteError
from conftest import assert_one_line_error, make_config, toy_rows, write_csv

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
    """Every file's bytes, but the run lock's: whoever takes the lock writes its pid there (`bertcls.runlock`)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != runlock.LOCK_FILE}


# ---------------------------------------------------------------------------- damaged and hostile model files

@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cut_short_model_weights(run_copy, trained_run, command):
    cut_short(run_copy / runs.MODEL_DIR / "model.safetensors", 100_000)  # the traced graph is then stale: transformers loads it
    args = ["great film"] if command == "predict" else [str(trained_run.parent / "test.csv")]
    result = runner.invoke(app, [command, "--model", str(run_copy), *args])
    assert_one_line_error(result, f"Error: {run_copy / runs.MODEL_DIR / 'model.safetensors'}: cannot load the model (Error while "
                                  "deserializing header: incomplete metadata, file not fully covered); replace the folder with a complete "
                                  "copy, or train again")


def test_a_cut_short_tokenizer_is_named_by_predict_and_by_train(run_copy, tmp_path, toy_data):
    (run_copy / runs.MODEL_DIR / runs.TORCHSCRIPT_FILE).unlink()  # the graph's predictor reads tokenizer.json on its own
    cut_short(run_copy / runs.MODEL_DIR / "tokenizer.json", 100)
    (run_copy / runs.MODEL_DIR / "eval_results.json").write_text('{"accuracy": 0.9')  # not the loader's: never blamed
    result = runner.invoke(app, ["predict", "--model", str(run_copy), "great film"])
    assert_one_line_error(result, f"Error: {run_copy / runs.MODEL_DIR / 'tokenizer.json'}: cannot load the model (")
    (tmp_path / "new").mkdir()
    config = make_config(tmp_path / "new", toy_data, model={"name": str(run_copy / runs.MODEL_DIR)})
    result = runner.invoke(app, ["train", str(config)])
    assert_one_line_error(result, f"Error: model.name {str(run_copy / runs.MODEL_DIR)!r}: cannot load its tokenizer (tokenizer.json: ",
                          tmp_path / "new" / "run")


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
    ("text in rng-0.pt", _write(runs.CHECKPOINT_RNG.format(0), b"garbage"),
     "rng-0.pt: cannot load this checkpoint (it is not a file torch saved: damaged, or another kind of file)"),
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
    assert snapshot(unfinished) == before  # nothing written, deleted or trimmed: config.yaml and the damaged file included
    assert not (folder / "pwned").exists()


# ---------------------------------------------------------------------------- data oddities

@pytest.fixture
def default_csv_field_limit():
    """csv's limit is global to the process: training (tsv.check_fields) may have lifted it already."""
    before = csv.field_size_limit(128 * 1024)
    yield
    csv.field_size_limit(before)


def test_predict_file_reads_texts_over_the_csv_field_limit(tmp_path, trained_run, default_csv_field_limit):
    long = "great film " * 15_000  # 165 KB: over csv's 128 KiB default limit
    source = write_csv(tmp_path / "long.csv", [(long, "x"), ("awful", "y")], header=("text", "note"))
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--file", str(source), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [long, "awful"] and all(r["predicted"] in ("positive", "negative") for r in rows)


@pytest.mark.parametrize("name, content, taken", [
    ("in.csv", "text,label_2\ngreat,a\nawful,b\n", "label_2"),
    ("in.jsonl", '{"text": "great"}\n{"text": "awful", "score_1": 3}\n', "score_1"),  # only the second row has it
])
def test_predict_file_top_k_refuses_to_overwrite_columns(tmp_path, trained_run, name, content, taken):
    (tmp_path / name).write_text(content)
    output = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--file", str(tmp_path / name), "--top-k", "2", "--output", str(output)])
    assert_one_line_error(result, f"already has column(s) {taken}, which the output adds; rename them")
    assert not output.exists()
    no_top_k = runner.invoke(app, ["predict", "--model", str(trained_run), "--file", str(tmp_path / name), "--output", str(tmp_path / "out.jsonl")])
    assert no_top_k.exit_code == 0, no_top_k.output  # label_i/score_i are only added with --top-k


def test_integral_decimal_labels_read_as_text_are_integers(tmp_path):
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split

    mixed = tmp_path / "mixed.csv"  # a word in the column: pandas reads it all as text
    mixed.write_text("text,label\na,1\nb,1.0\nc,cat\nd,2.00\ne, 2 \nf,1.5\ng,-3.0\n")
    split = read_split(str(mixed), DataConfig(train="x.csv"), "train")
    assert split.labels == ["1", "1", "cat", "2", "2", "1.5", "-3"]
    assert LabelMap.from_values(split.labels).names == ("-3", "1", "1.5", "2", "cat")
    numeric = tmp_path / "numeric.csv"  # all numbers: read as written, each integral one as its integer
    numeric.write_text("text,label\na,1\nb,1.0\nc,2\nd,010\n")
    assert read_split(str(numeric), DataConfig(train="x.csv"), "train").labels == ["1", "1", "2", "010"]
    fractions = tmp_path / "fractions.csv"  # numbers only, some not whole: scores, not labels
    fractions.write_text("text,label\na,1\nb,0.5\n")
    with pytest.raises(DataError, match="holds fractional numbers; labels must be names or integers"):
        read_split(str(fractions), DataConfig(train="x.csv"), "train")
    tags = tmp_path / "tags.csv"
    tags.write_text("text,labels\na,1.0;x\nb,2\n")
    cfg = DataConfig(train="x.csv", label_column="labels", task="multi_label")
    assert read_split(str(tags), cfg, "train").labels == [["1", "x"], ["2"]]


def test_labels_mixing_booleans_and_numbers_are_refused(tmp_path, toy_data):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"text": f"text {i}", "label": label}) + "\n" for i, label in enumerate([True, 1, 0, False])))
    result = runner.invoke(app, ["train", str(make_config(tmp_path, {**toy_data, "train": mixed}))])
    assert_one_line_error(result, "train (" + str(mixed) + "): column 'label' mixes true/false (data rows 1, 4) with other labels "
                                  "(data rows 2, 3); write every label the same way, e.g. all 0/1 or all true/false", tmp_path / "run")
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split

    flags = tmp_path / "flags.jsonl"
    flags.write_text("".join(json.dumps({"text": f"text {i}", "label": label}) + "\n" for i, label in enumerate([True, False, True])))
    labels = read_split(str(flags), DataConfig(train="x.csv"), "train").labels
    assert LabelMap.from_values(labels).encode(labels, "t") == [1, 0, 1]  # booleans alone: the labels False and True


@pytest.mark.parametrize("command", ["train", "check", "evaluate"])
def test_a_column_named_twice_is_refused(tmp_path, toy_data, command, request):
    """pandas would read the first `text` and rename the second `text.1`: half the file silently unread."""
    dup = tmp_path / "dup.csv"
    dup.write_text("text,label,text\ngreat,positive,awful\nawful,negative,great\n")
    before = dup.read_bytes()
    if command == "evaluate":
        args = ["evaluate", "--model", str(request.getfixturevalue("trained_run")), str(dup)]
    else:
        args = [command, str(make_config(tmp_path, {**toy_data, "train": dup}))]
    assert_one_line_error(runner.invoke(app, args), f"Error: {dup}: column 'text' appears twice (columns 1 and 3); rename one", tmp_path / "run")
    assert dup.read_bytes() == before


# ---------------------------------------------------------------------------- paths that are not folders

def test_output_folders_that_are_files_or_under_one(tmp_path, toy_data, trained_run):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    config = str(make_config(tmp_path, toy_data))
    test_csv = str(trained_run.parent / "test.csv")
    cases = [
        (["train", config, "--set", f"output_dir={notes / 'run'}"], f"output_dir {notes / 'run'} is under {notes}, which is a file; choose a folder"),
        (["evaluate", "--model", str(trained_run), test_csv, "--output", str(notes)], f"--output {notes} is a file; choose a folder"),
        (["export", "--model", str(trained_run), "--output", str(notes)], f"--output {notes} is a file; choose a folder"),
        (["export", "--model", str(trained_run), "--output", str(notes / "onnx")], f"--output {notes / 'onnx'} is under {notes}, which is a file"),
        (["predict", "--model", str(trained_run), "--file", test_csv, "--output", str(notes / "out.csv")],
         f"--output {notes / 'out.csv'}: its folder {notes} is a file; choose a folder"),
    ]
    for args, message in cases:
        assert_one_line_error(runner.invoke(app, args), message)
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("name", [runs.MODEL_DIR, runs.LOG_FILE])
def test_no_writing_through_a_symlink_in_the_run_folder(run_copy, tmp_path, name):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_copy / name, elsewhere)
    (run_copy / name).symlink_to(elsewhere)
    before, kept = snapshot(run_copy), snapshot(elsewhere) if elsewhere.is_dir() else elsewhere.read_bytes()
    result = runner.invoke(app, ["train", str(run_copy / runs.CONFIG_FILE), "--set", f"output_dir={run_copy}", "--overwrite"])
    assert_one_line_error(result, f"Error: {run_copy / name} is a link (to {elsewhere}), which bertcls did not write and will not replace; "
                                  "remove the link, or choose another output_dir")
    assert snapshot(run_copy) == before and (snapshot(elsewhere) if elsewhere.is_dir() else elsewhere.read_bytes()) == kept


# ---------------------------------------------------------------------------- a file system that refuses writes

def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one_and_resumes(tmp_path, monkeypatch):
    """The one short training here (4 steps): the disk fills up at the second checkpoint (in torch.save, as
    a real full disk would surface there); the first stays complete, and --resume finishes the run."""
    data = {name: write_csv(tmp_path / f"{name}.csv", toy_rows(n, seed)) for name, n, seed in (("train", 64, 0), ("validation", 16, 1))}
    config = make_config(tmp_path, data, training={"epochs": 1, "save_every_steps": 1, "save_torchscript": False, "loss_curve": False})
    config.write_text(config.read_text().replace(f"test: {data['validation']}", "test: null"))  # fewer reports to draw
    run, save, calls = tmp_path / "run", torch.save, []

    def filling_up(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # checkpoint-1 writes optimizer.pt and rng-0.pt; checkpoint-2 finds the disk full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_up)
    result = runner.invoke(app, ["train", str(config), "-q"])
    assert_one_line_error(result, f"Error: {run / 'checkpoint-2'}: No space left on device; free space on its disk, "
                                  f"then resume with: bertcls train {config} --resume", run)
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-1"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"
    monkeypatch.setattr(torch, "save", save)
    resumed = runner.invoke(app, ["train", str(config), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert runs.is_finished(run)


def test_disk_full_while_writing_reports_on_resume(unfinished, monkeypatch):
    write_text = Path.write_text

    def filling_up(self, *args, **kwargs):
        if self.name.startswith(".predictions.csv."):  # write_atomic's temporary file for it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write names no file
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", filling_up)
    checkpoint = snapshot(runs.checkpoints(unfinished)[-1])
    result = resume(unfinished)
    assert_one_line_error(result, f"Error: {unfinished / runs.REPORTS_DIR / 'validation' / 'predictions.csv'}: No space left on device; "
                                  f"free space on its disk, {resume_command(unfinished)}", unfinished)
    assert snapshot(runs.checkpoints(unfinished)[-1]) == checkpoint
    assert not list((unfinished / runs.REPORTS_DIR / "validation").glob(".*"))


def test_disk_full_while_saving_the_model_keeps_the_previous_one(run_copy, monkeypatch):
    import transformers

    from bertcls.model import load_trained, save_model

    model, tokenizer = load_trained(run_copy)
    before = snapshot(run_copy / runs.MODEL_DIR)

    def filling_up(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", filling_up)
    with pytest.raises(WriteError, match=f"^{run_copy / runs.MODEL_DIR}: No space left on device; free space on its disk$"):
        save_model(model, tokenizer, run_copy / runs.MODEL_DIR)
    assert snapshot(run_copy / runs.MODEL_DIR) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")], "the half-written model/ was left behind"


def test_which_errors_are_a_refused_write(tmp_path):
    target = tmp_path / "run" / "model"
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")  # torch.save into a Python file
    assert atomic.refused_write(wrapped, target) == errno.ENOSPC
    rust = Exception('Error while serializing: I/O error: Operation not permitted (os error 1) at path "/x/.tmp"')
    assert atomic.refused_write(rust, target) == errno.EPERM  # safetensors
    assert atomic.refused_write(OSError(errno.EACCES, "Permission denied", str(target.parent / ".model.tmp-x1")), target) == errno.EACCES
    assert atomic.refused_write(OSError(errno.EACCES, "Permission denied", str(tmp_path / "train.csv")), target) is None  # reading a source
    assert atomic.refused_write(OSError(errno.EIO, "Input/output error"), target) is None
    assert atomic.refused_write(ValueError("no"), target) is None
    with pytest.raises(WriteError, match=f"^{tmp_path}: Read-only file system; its file system is mounted read-only; write elsewhere$"):
        with atomic.writing(tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    with pytest.raises(ValueError), atomic.writing(tmp_path):
        raise ValueError("a bug stays a bug")


@pytest.mark.parametrize("raised, exit_code, shown", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/models/x"), 2,
     "Error: /srv/models/x: Permission denied; check the permissions of /srv/models/x and its folder\n"),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/cache/x"), 2, "Error: /srv/cache/x: No space left on device; free space on its disk\n"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "Traceback"),  # no file named: cannot say which, so a bug
    (OSError(errno.EIO, "Input/output error", "/srv/x"), 1, "Traceback"),
    (EOFError(), 1, "RuntimeError: an EOFError escaped"),  # never click's bare "Aborted."
])
def test_the_error_boundary_on_os_errors(monkeypatch, raised, exit_code, shown):
    def failing(given):
        raise raised

    monkeypatch.setattr(runs, "find_model", failing)
    result = runner.invoke(app, ["predict", "great"])
    assert result.exit_code == exit_code
    if exit_code == 2:
        assert result.output == shown
    else:
        assert shown in "".join(traceback.format_exception(result.exception)) + result.output
        assert "Aborted" not in result.output


# ---------------------------------------------------------------------------- the real thing, where this machine allows it

@pytest.fixture
def immutable():
    """`chattr +i` a folder (root on a file system that supports it; else skip), undone afterwards."""
    done = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0 or shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("needs root and chattr +i on this file system")
        done.append(folder)

    yield make
    for folder in done:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_resume_into_a_read_only_run_folder(unfinished, immutable):
    before = snapshot(unfinished)
    immutable(unfinished)
    result = resume(unfinished)
    assert_one_line_error(result, f"Error: {unfinished / runs.RECORD_FILE}: Operation not permitted; make {unfinished} writable, "
                                  f"{resume_command(unfinished)}", unfinished)
    assert snapshot(unfinished) == before


def test_a_fresh_run_into_a_folder_that_refuses_entries_names_that_folder(tmp_path, toy_data, immutable):
    folder = tmp_path / "locked"
    folder.mkdir()
    immutable(folder)
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data, output_dir=str(folder)))])
    assert_one_line_error(result, f"Error: {folder}: Operation not permitted; make {folder} writable, then train again\n")
    assert not any(folder.iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root, where mounting is allowed; else skip), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs root and permission to mount a tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_evaluate_output_on_a_full_disk(small_disk, trained_run):
    result = runner.invoke(app, ["evaluate", "--model", str(trained_run), str(trained_run.parent / "test.csv"), "--output", str(small_disk / "eval")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # after the printed metrics
    assert last == f"Error: --output {small_disk / 'eval'}: No space left on device; free space on its disk, or choose another --output"
    assert "Traceback" not in result.output
    assert not (small_disk / "eval").exists(), "a half-written evaluation left behind"


def test_csv_values_are_read_as_written_in_every_chunk(tmp_path):
    """pandas guesses a column's type per 10,000 rows: "01" was text where a chunk also held "x", and 1 after."""
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split

    rows = [(f"{i:05d}", "x" if i == 0 else f"0{1 + i % 2}") for i in range(10_060)]
    path = tmp_path / "codes.csv"
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    split = read_split(str(path), DataConfig(train="x.csv"), "train")
    assert split.texts[-1] == "10059" and split.texts[1] == "00001"
    assert LabelMap.from_values(split.labels).names == ("01", "02", "x")
