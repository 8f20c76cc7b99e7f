"""Bad input, as a user meets it: exit code 2, one `Error:` line naming the problem and the fix, no
traceback, and no finished-looking run folder. Plus the odd-but-valid inputs that must just work,
and the security rules (safe YAML, no pickle, nothing written outside output_dir)."""

import errno
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bertcls import atomic, runs
from bertcls.cli import app
from conftest import assert_one_line_error, file_size_limit, make_config, toy_rows, write_csv

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src" / "bertcls"


# ---------------------------------------------------------------------------- the config file

@pytest.mark.parametrize(
    "text, message",
    [
        ("data: [\n", "c.yaml:2:1: invalid YAML: expected the node content"),
        ("data:\n  train: a.csv\n   bad: indent\n", "c.yaml:3:7: invalid YAML"),
        ("", "the config is empty; it needs at least `data: {train: FILE}`"),
        ("- data\n- model\n", "the top level must be a mapping of keys (seed, output_dir, data, model, training, tune), not a list"),
        ("data:\n\ttrain: a.csv\n", "c.yaml:2:1: invalid YAML: a tab where YAML reads only spaces; indent with spaces, not tabs"),
        ("data: {train: a.csv}\n---\ndata: {train: b.csv}\n", "c.yaml:2:1: invalid YAML: a second YAML document (after a `---` line) "
                                                              "follows the config; a config is one document: remove the `---` and what follows it"),
        ("just a string\n", "the top level must be a mapping"),
        ("data: {train: a.csv}\ntrainig: {epochs: 1}\n", "trainig: unknown key (did you mean 'training'?)"),
        ("data: {train: a.csv, text_col: t}\n", "data.text_col: unknown key (did you mean 'text_column'?)"),
        ("data: {train: a.csv}\nmodel: {nme: tiny}\n", "model.nme: unknown key (did you mean 'name'?)"),
        ("data: {train: a.csv}\ntraining: {lr: 0.1}\n", "training.lr: unknown key (did you mean 'learning_rate'?)"),
        ("data: {train: a.csv}\ntraining: {epochs: three}\n", "training.epochs: input should be a valid integer (got 'three')"),
        ("data: {train: a.csv}\ntraining: {epochs: '3'}\n", "training.epochs: input should be a valid integer (got '3')"),
        ("data: {train: a.csv}\ntraining: 5\n", "training: a section of keys (got 5); set its keys, e.g. --set training.KEY=VALUE"),
        ("data: {train: a.csv}\ntraining: {batch_size: 0}\n", "training.batch_size: input should be greater than or equal to 1 (got 0)"),
        ("data: {train: a.csv}\ntraining: {epochs: -1}\n", "training.epochs: input should be greater than or equal to 1 (got -1)"),
        ("data: {train: a.csv}\ntraining: {learning_rate: 5}\n", "training.learning_rate: input should be less than or equal to 1 (got 5)"),
        ("data: {train: a.csv}\ntraining: {learning_rate: 0}\n", "training.learning_rate: input should be greater than 0 (got 0)"),
        ("data: {train: a.csv}\ntraining: {learning_rate: .nan}\n", "training.learning_rate: input should be less than or equal to 1 (got nan)"),
        ("data: {train: a.csv}\ntraining: {save_every_steps: 0}\n", "training.save_every_steps: input should be greater than or equal to 1"),
        ("data: {train: a.csv}\ntraining: {keep_checkpoints: 0}\n", "training.keep_checkpoints: input should be greater than or equal to 1"),
        ("data: {train: a.csv, max_length: 100000}\n", "data.max_length: input should be less than or equal to 8192"),
        ("data: {train: a.csv, validation_split: 1.5}\n", "data.validation_split: input should be less than 1"),
        ("data: {train: a.csv, max_train_samples: 1}\n", "data.max_train_samples: input should be greater than or equal to 2"),
        ("data: {train: ''}\n", "data.train: string should have at least 1 character"),
        ("data: {train: a.csv, label_column: text}\n", "data.label_column must differ from the text columns"),
        ("seed: -1\ndata: {train: a.csv}\n", "seed: input should be greater than or equal to 0"),
        ("model: {name: tiny}\n", "data: required key is missing"),
        ("data: {train: a.csv}\ntraining: {device: gpu}\n", "training.device: 'gpu' is not a device; use one of auto, cpu, cuda, cuda:N"),
        ("data: {train: a.csv}\ntraining: {precision: fp8}\n", "training.precision: input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("data: !!python/object/apply:os.system ['touch pwned']\n", "invalid YAML: could not determine a constructor for the tag"),
    ],
)
def test_bad_config_files(tmp_path, text, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    assert_one_line_error(runner.invoke(app, ["train", "c.yaml"]), message)
    assert not (tmp_path / "pwned").exists()  # yaml.safe_load: tags never run code


def test_config_that_is_not_utf8_or_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_bytes(b"data: {train: caf\xe9.csv}\n")
    assert_one_line_error(runner.invoke(app, ["train", "c.yaml"]), "c.yaml: not UTF-8 text (byte 17); save the config as UTF-8")
    assert_one_line_error(runner.invoke(app, ["train", "nope.yaml"]), "nope.yaml: no such config file")


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs", "--set training.epochs: no value; write --set training.epochs=VALUE, with `=` and no spaces"),
        ("training..epochs=1", "expected KEY=VALUE with a dotted key"),
        ("seed.x=1", "--set seed.x: seed is not a section"),
        ("training.batch_size=[1, 2]", "training.batch_size: input should be a valid integer (got [1, 2])"),
    ],
)
def test_bad_overrides(tmp_path, toy_data, override, message):
    assert_one_line_error(runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--set", override]), message)


# ---------------------------------------------------------------------------- data files

BAD_DATA = [
    ("train.csv", b"", "the file is empty"),
    ("train.csv", b"text,label\n", "no rows"),
    ("train.csv", b"text,label\na,b,c\ngood,pos\nbad,neg\n", "line 2 has 3 field(s) but the header has 2; quote texts that hold commas"),
    ("train.csv", b"text,label\ngood,pos,\nbad,neg\n", "line 2 has 3 field(s) but the header has 2"),
    ("train.csv", b"text,label\ngood,pos\nlonely\nbad,neg\n", "line 3 has 1 field(s) but the header has 2; fill in the missing field(s)"),
    ("train.csv", b'text,label\n"never closed,pos\nbad,neg\n', 'the quoted text opened on line 2 runs to line 3; close its quote'),
    ("train.csv", b'text,label\nhi,pos\nho,neg\n"never closed,pos\n', 'the quoted text opened on line 4 is never closed; close its quote'),
    ("train.tsv", b"text\tlabel\ngood\tpos\ttab\nbad\tneg\n", "line 2 has 3 field(s) but the header has 2; a text that holds a tab must be in quotes"),
    ("train.csv", b"text,label\n\xff\xfe bad,pos\nok,neg\n", "not UTF-8 text (undecodable byte near offset 11); re-save the file as UTF-8"),
    ("train.csv", "text,label\nhi,pos\nho,neg\n".encode("utf-16"), "train.csv: UTF-16 text, not UTF-8; re-save the file as UTF-8"),
    ("train.csv", b"sentence,label\nhi,pos\nho,neg\n", "no column 'text' (columns: sentence, label); set data.text_column"),
    ("train.csv", b"text,label\nhi,pos\n,neg\n   ,pos\n", "2 empty or missing text(s) in column 'text' (data rows 2, 3)"),
    ("train.jsonl", b'{"text": "hi", "label": "a"}\n{"text": null, "label": "b"}\n', "1 empty or missing text(s) in column 'text' (data rows 2)"),
    # a column of numbers: NaN is a missing text there, not the text "nan"
    ("train.jsonl", b'{"text": 1.5, "label": "a"}\n{"text": NaN, "label": "b"}\n', "1 empty or missing text(s) in column 'text' (data rows 2)"),
    ("train.csv", b"text,label\nhi,pos\nho,\n", "1 missing label(s) in column 'label' (data rows 2)"),
    ("train.csv", b"text,label\nhi,pos\nho,pos\nhe,pos\n", "only one class ('pos'); a classifier needs at least two labels"),
    ("train.csv", b"text,label\nhi,1.5\nho,2\n", "column 'label' holds fractional numbers; labels must be names or integers"),
    ("train.jsonl", b'{"text": "hi", "label": [1]}\n{"text": "ho", "label": [2]}\n', "holds lists or objects; single-label classification"),
    ("train.jsonl", b'{"text": ["hi", "ho"], "label": 1}\n{"text": "he", "label": 2}\n', "column 'text' holds lists or objects, not texts (data rows 1)"),
    ("train.jsonl", b'{"text": "hi", "label": 1}\nnot json\n', "train.jsonl: line 2 is not valid JSON (Expecting value)"),
    ("train.jsonl", b'{"text": "hi", "label": 1}\n{"text": "a \\ud800 b", "label": 2}\n',
     "train.jsonl: line 2 holds an escape like \\ud800 that is no Unicode character (a lone surrogate); fix that text"),
    ("train.json", b'[{"text": "hi", "label": 1}, {"text": "ho", "label": 2}', "train.json: the file is not valid JSON (Expecting ',' delimiter)"),
    ("train.parquet", b"not parquet at all", "cannot be parsed as parquet"),
    ("train.xlsx", b"PK\x03\x04", "unsupported extension '.xlsx'; use one of .csv, .tsv, .json, .jsonl, .parquet"),
]


@pytest.mark.parametrize("name, content, message", BAD_DATA, ids=[f"{n}-{m[:30]}" for n, _, m in BAD_DATA])
def test_bad_training_files(tmp_path, toy_data, name, content, message):
    (tmp_path / name).write_bytes(content)
    config = make_config(tmp_path, {**toy_data, "train": tmp_path / name})
    assert_one_line_error(runner.invoke(app, ["train", str(config)]), message, tmp_path / "run")


def test_missing_and_odd_data_paths(tmp_path, toy_data, trained_run, monkeypatch):
    config = str(make_config(tmp_path, toy_data))
    assert_one_line_error(runner.invoke(app, ["train", config, "--set", f"data.train={tmp_path / 'nope.csv'}"]), "nope.csv: no such file")
    (tmp_path / "folder.csv").mkdir()
    assert_one_line_error(runner.invoke(app, ["train", config, "--set", f"data.train={tmp_path / 'folder.csv'}"]), "folder.csv: a folder, not a data file; give the csv, tsv, json, jsonl or parquet file itself")
    assert_one_line_error(runner.invoke(app, ["train", config, "--set", "data.train=nosuchdataset"]),
                          "nosuchdataset: not a local file, and a hub dataset not in the local Hugging Face cache, and "
                          "HF_HUB_OFFLINE is set, so it was not downloaded; give a local file, or unset HF_HUB_OFFLINE to download it")
    # `name:split` where name is a local folder: the hub's loader would read the folder, and the model card call it a hub dataset
    (tmp_path / "myds").mkdir()
    beside = make_config(tmp_path, {**toy_data, "train": "myds:train"})  # relative to the config's folder
    assert_one_line_error(runner.invoke(app, ["train", str(beside)]),
                          f"{tmp_path / 'myds'}: a folder, not a data file; give the csv, tsv, json, jsonl or parquet file itself")
    monkeypatch.chdir(tmp_path)  # the same name from the current folder, as a command-line argument names it
    assert_one_line_error(runner.invoke(app, ["evaluate", "myds:test", "--model", str(trained_run)]),
                          "myds:test: myds is a local folder or file, not a hub dataset; give its csv, tsv, json, jsonl or parquet file itself")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_data_file(tmp_path, toy_data):
    toy_data["train"].chmod(0)
    assert_one_line_error(runner.invoke(app, ["train", str(make_config(tmp_path, toy_data))]), "cannot read it (Permission denied)")


def test_a_test_label_that_train_lacks(tmp_path, toy_data):
    test = write_csv(tmp_path / "odd.csv", [("great", "positive"), ("meh", "neutral")])
    result = runner.invoke(app, ["train", str(make_config(tmp_path, {**toy_data, "test": test}))])
    assert_one_line_error(result, "labels not seen in train: 'neutral'; the model can only predict negative, positive", tmp_path / "run")


# ---------------------------------------------------------------------------- models and run folders

def test_model_folders_that_are_not_models(tmp_path, toy_data):
    config = str(make_config(tmp_path, toy_data))
    empty, broken, no_weights = (tmp_path / n for n in ("empty", "broken", "noweights"))
    empty.mkdir()
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, message in [(empty, "not a Hugging Face model folder (no config.json)"), (broken, "is not a valid JSON file"),
                            (no_weights, "cannot load it as a sequence classifier"), (tmp_path / "absent", "no such folder")]:
        assert_one_line_error(runner.invoke(app, ["train", config, "--set", f"model.name={folder}"]), message, tmp_path / "run")


def test_max_length_above_the_models_limit(tmp_path, toy_data, trained_run):
    config = str(make_config(tmp_path, toy_data, model={"name": str(trained_run / "model")}))
    result = runner.invoke(app, ["train", config, "--set", "data.max_length=1000"])
    assert_one_line_error(result, "data.max_length=1000 is above what", tmp_path / "run")
    assert "supports (512 tokens); set data.max_length <= 512" in result.output


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.precision=fp16", "training.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU"),
        ("output_dir=config.yaml", "config.yaml is a file; choose a folder"),
    ],
)
def test_run_settings_this_machine_cannot_honour(tmp_path, toy_data, override, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--set", override]), message)


def test_debug_shows_the_traceback(tmp_path, toy_data):
    result = runner.invoke(app, ["train", str(make_config(tmp_path, toy_data)), "--set", "data.text_column=nope", "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output and "Error: " in result.output


# ---------------------------------------------------------------------------- odd but valid

def test_odd_but_valid_files_train(tmp_path, toy_data):
    """BOM, CRLF, quoted fields with commas, quotes and newlines, control characters, emoji/CJK/RTL,
    numeric-looking texts and labels written as 1 and "1": all load intact and train."""
    rows = toy_rows(40, 3)
    odd = ['he said "wow, great"\r\nthen left', "\x00\x07 bell \x1b[31m red", "😀 映画 فيلم great", "12345", "NA", "null"]
    texts = [odd[i] + " " + t if i < len(odd) else t for i, (t, _) in enumerate(rows)]
    import csv

    with open(tmp_path / "odd.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, [label for _, label in rows], strict=True))
    tsv = tmp_path / "odd.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f'"{t}" it\'s "fine\t{label}\n' for t, label in toy_rows(20, 4)), encoding="utf-8")
    jsonl = tmp_path / "odd.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": [1, "1", 2, "2"][i % 4]}) + "\n" for i, (t, _) in enumerate(toy_rows(20, 5))))
    config = make_config(tmp_path, {"train": tmp_path / "odd.csv", "validation": tsv, "test": tsv}, training={"epochs": 1})
    result = runner.invoke(app, ["train", str(config), "-q"])
    assert result.exit_code == 0, result.output
    from bertcls.config import DataConfig
    from bertcls.data import LabelMap, read_split

    assert read_split(str(tmp_path / "odd.csv"), DataConfig(train="x.csv"), "train").texts[:len(odd)] == texts[:len(odd)]
    assert read_split(str(tsv), DataConfig(train="x.csv"), "v").texts[0].startswith('"')
    assert LabelMap.from_values(read_split(str(jsonl), DataConfig(train="x.csv"), "t").labels).names == ("1", "2")


def test_predict_on_edge_texts(trained_run):
    texts = ["", "   ", "great " * 20_000, "😀 映画 فيلم", "\x00\x07\t bell", "‮right-to-left override"]
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--verbose", *texts])
    assert result.exit_code == 0, result.output
    labels = [line.split("\t")[0] for line in result.output.splitlines() if "\t" in line and not line.startswith(("model:", "note:"))]
    assert len(labels) == len(texts) and set(labels) <= {"positive", "negative"}
    assert "note: text truncated to 32 tokens: 'great great" in result.output


# ---------------------------------------------------------------------------- security

def test_no_pickle_loads_anywhere():
    """Every torch.load passes weights_only=True; nothing calls pickle.load(s)."""
    for path in SRC.glob("*.py"):
        code = path.read_text(encoding="utf-8")
        assert not re.search(r"pickle\.loads?\(", code), path
        for call in re.findall(r"torch\.load\([^)]*\)", code):
            assert "weights_only=True" in call, (path, call)
        assert "yaml.load(" not in code and "unsafe_load" not in code, path


def test_trust_remote_code_warns(tmp_path, toy_data, trained_run):
    config = make_config(tmp_path, toy_data, model={"name": str(trained_run / "model"), "trust_remote_code": True},
                         training={"epochs": 1})
    result = runner.invoke(app, ["train", str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: model.trust_remote_code is on: code shipped with {trained_run / 'model'} will run\n"


def test_a_run_writes_only_inside_output_dir(tmp_path, toy_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    config = make_config(tmp_path, toy_data, output_dir=str(tmp_path / "out" / "run"), training={"epochs": 1})
    before.add(config)
    assert runner.invoke(app, ["train", str(config), "-q"]).exit_code == 0
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == tmp_path / "out" or (tmp_path / "out" / "run") in (p, *p.parents) for p in written), written
    assert yaml.safe_load((tmp_path / "out" / "run" / "config.yaml").read_text())["output_dir"] == str(tmp_path / "out" / "run")


# ---------------------------------------------------------------------------- a file system that refuses writes

TOO_LARGE = "File too large; raise the file-size limit (ulimit -f; a FAT32 disk holds files of 4 GiB at most)"



def test_a_checkpoint_over_the_file_size_limit_is_one_line(tmp_path, trained_run):
    """One short training: its first checkpoint's weights fit under the limit, its optimizer state (twice the
    weights) does not, which torch's writer reports only as "unexpected pos", wrapping the OSError."""
    data = {name: write_csv(tmp_path / f"{name}.csv", toy_rows(n, seed)) for name, n, seed in (("train", 32, 0), ("validation", 16, 1))}
    config = make_config(tmp_path, data, training={"epochs": 1, "save_every_steps": 1})
    run = tmp_path / "run"
    weights = (trained_run / runs.MODEL_DIR / "model.safetensors").stat().st_size  # the same tiny model
    with file_size_limit(weights * 3 // 2):
        result = runner.invoke(app, ["train", str(config), "-q"])
    assert_one_line_error(result, f"Error: {run / 'checkpoint-1'}: {TOO_LARGE}, then train again", run)
    assert not runs.checkpoints(run) and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_predictions_over_the_file_size_limit_are_one_line(trained_run, tmp_path):
    output = tmp_path / "predictions.csv"
    with file_size_limit(2048):  # the 60 rows of test.csv with their predictions take more
        result = runner.invoke(app, ["predict", "--model", str(trained_run), "--file", str(trained_run.parent / "test.csv"),
                                     "--output", str(output)])
    assert_one_line_error(result, f"Error: {output}: {TOO_LARGE}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not atomic._in_virtual_fs(Path("/proc")), reason="needs Linux's /proc")
def test_an_output_in_a_virtual_file_system_is_one_line(tmp_path, toy_data, trained_run):
    """/proc refuses a new file or folder with "no such file" although the folder is there: said, not a traceback."""
    fix = "its folder is in a virtual file system (such as /proc or /sys), which takes no new files; choose another path"
    commands = [["train", str(make_config(tmp_path, toy_data)), "--set", "output_dir=/proc/bertcls-run"],
                ["predict", "-m", str(trained_run), "-f", str(trained_run.parent / "test.csv"), "-o", "/proc/bertcls.jsonl"],
                ["evaluate", str(trained_run.parent / "test.csv"), "-m", str(trained_run), "-o", "/proc/bertcls-eval"]]
    for command in commands:
        assert_one_line_error(runner.invoke(app, command), fix)
    assert not atomic._in_virtual_fs(tmp_path)


def test_a_missing_file_read_in_proc_is_no_refused_write(trained_run, monkeypatch):
    """Only a path bertcls writes gets the virtual file system's message: a read of a missing /proc file keeps its
    traceback (a bug, or a library's)."""
    from bertcls import cli

    def reads_proc(*args, **kwargs):
        open("/proc/bertcls-no-such-file")

    monkeypatch.setattr(cli, "predict_file", reads_proc)
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(trained_run.parent / "test.csv")])
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError), result.output


def test_a_refused_temporary_copy_of_the_data_is_not_blamed_on_the_file(tmp_path, toy_data):
    """datasets reads a file through an Arrow copy in a temporary folder: a full disk or a size limit there is said
    as such, naming TMPDIR, not as a csv that 'cannot be parsed'."""
    config = make_config(tmp_path, toy_data)
    with file_size_limit(1):
        result = runner.invoke(app, ["check", str(config)])
    assert_one_line_error(result, f"Error: {toy_data['train']}: its temporary copy for reading: ")
    assert "File too large; raise the file-size limit" in result.output and "set TMPDIR to a folder with room" in result.output


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_quota_or_size_limit_is_a_refused_write_however_it_surfaces(tmp_path, code):
    target = tmp_path / "checkpoint-3"
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(code, os.strerror(code))  # torch.save into a Python file
    rust = Exception(f"Error while serializing: IoError({os.strerror(code)} (os error {code}))")  # safetensors
    assert atomic.refused_write(wrapped, target) == atomic.refused_write(rust, target) == code
    assert code in atomic.FIXABLE_IN_PLACE  # a run can resume in place once space is freed or the limit raised
    assert str(atomic.write_error(target, code)).startswith(f"{target}: {os.strerror(code)}; ")


# ---------------------------------------------------------------------------- where the model comes from

@pytest.mark.parametrize("command", [["predict", "a wonderful film"], ["serve"]])
def test_a_bad_model_in_the_environment_is_named_as_such(tmp_path, monkeypatch, command):
    fix = f"set ${runs.MODEL_ENV} to a run or model folder, or pass --model"
    (tmp_path / "empty").mkdir()
    for folder, problem in [(tmp_path / "absent", "no such folder"),
                            (tmp_path / "empty", "neither a finished run folder (with model/) nor a model folder (with config.json)")]:
        monkeypatch.setenv(runs.MODEL_ENV, str(folder))
        result = runner.invoke(app, command)
        assert (result.exit_code, result.output) == (2, f"Error: ${runs.MODEL_ENV} {folder}: {problem}; {fix}\n")


@pytest.mark.slow  # four whole processes: about 20 s
def test_a_reader_that_goes_away_ends_a_command_as_sigpipe_does(tmp_path, toy_data, trained_run):
    """`bertcls check CONFIG | head -1`: exit 141, as for any program SIGPIPE ends, and no word; not 1, which
    `check --strict` gives to findings (rich's tables and plain lines alike)."""
    import subprocess
    import sys

    scored = tmp_path / "scored"  # written whole before the table that meets the broken pipe
    for command in (["check", str(make_config(tmp_path, toy_data))], ["predict", "-m", str(trained_run), "-f", str(toy_data["validation"])],
                    ["evaluate", str(toy_data["validation"]), "-m", str(trained_run), "-o", str(scored)], ["--version"]):
        read, write = os.pipe()
        os.close(read)  # the reader has gone before the first line: every write meets a broken pipe
        try:
            done = subprocess.run([sys.executable, "-m", "bertcls", *command], stdout=write, stderr=subprocess.PIPE, timeout=300,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (141, b""), command
    assert (scored / runs.METRICS_FILE).is_file()


@pytest.mark.slow  # a whole process: about 10 s
def test_a_training_whose_terminal_went_away_finishes(tmp_path):
    """`bertcls train config.yaml 2>&1 | head -2`: the reader closes the pipe after two lines, and the run goes on."""
    import subprocess
    import sys

    data = {name: write_csv(tmp_path / f"{name}.csv", toy_rows(n, seed)) for name, n, seed in (("train", 64, 0), ("validation", 16, 1))}
    config = make_config(tmp_path, data, training={"epochs": 2, "batch_size": 8, "log_every_steps": 1})
    process = subprocess.Popen([sys.executable, "-m", "bertcls", "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [process.stdout.readline() for _ in range(2)]
    process.stdout.close()
    assert process.wait(timeout=300) == 0
    assert lines[0].startswith(b"train 64 | validation 16"), lines
    assert json.loads((tmp_path / "run" / runs.METRICS_FILE).read_text())["train"]["optimizer_steps"] == 16
