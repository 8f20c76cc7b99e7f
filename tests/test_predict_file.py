"""bertcls predict --file: streamed in chunks, input order and columns kept, csv/tsv/jsonl both ways."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcls import runs, tsv
from bertcls.cli import app
from bertcls.errors import DataError, RunError, UsageError
from bertcls.predict import Prediction, Predictor
from bertcls.predict_file import check_output, predict_file
from conftest import assert_one_line_error, files_in, toy_rows, write_csv

runner = CliRunner()


class CountingPredictor:
    """Labels a text by its length; records how many texts each call got."""

    def __init__(self):
        self.calls = []

    def predict(self, texts, pairs=None):
        self.calls.append(len(texts))
        return [Prediction("long" if len(t) > 30 else "short", 0.9, {"long": 0.9, "short": 0.1}) for t in texts]


def test_rows_are_read_in_chunks_and_written_in_order(tmp_path):
    rows = [(text, label, str(i)) for i, (text, label) in enumerate(toy_rows(20, 3))]
    source = write_csv(tmp_path / "in.csv", rows, header=("text", "label", "id"))
    predictor = CountingPredictor()
    assert predict_file(predictor, source, tmp_path / "out.csv", text_column="text", chunk_rows=7, progress=False) == 20
    assert predictor.calls == [7, 7, 6]  # never more than a chunk in memory
    out = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert [r["id"] for r in out] == [str(i) for i in range(20)] and list(out[0]) == ["text", "label", "id", "predicted", "score"]
    assert [r["predicted"] for r in out] == ["long" if len(t) > 30 else "short" for t, _, _ in rows]


def test_real_model_csv_to_csv_matches_predict_on_texts(tmp_path, trained_run):
    rows = [(text, str(i)) for i, (text, _) in enumerate(toy_rows(50, 4))]
    source = write_csv(tmp_path / "in.csv", rows, header=("text", "id"))
    result = runner.invoke(app, ["predict", "--model", str(trained_run), "--file", str(source), "--output", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    out = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    direct = Predictor.load(trained_run).predict([t for t, _ in rows])
    assert [r["predicted"] for r in out] == [p.label for p in direct]
    assert [float(r["score"]) for r in out] == pytest.approx([p.score for p in direct], abs=1e-5)
    assert [r["id"] for r in out] == [i for _, i in rows]


def test_tsv_to_jsonl_with_top_k_and_another_text_column(tmp_path, trained_run):
    source = tmp_path / "in.tsv"
    source.write_text('sentence\tn\nthe film was superb\t"1"\ndreadful\t2\n', encoding="utf-8")  # GLUE-style: quotes are text
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), "-o", str(tmp_path / "out.jsonl"),
                                 "--text-column", "sentence", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in out] == ["the film was superb", "dreadful"] and [r["n"] for r in out] == ['"1"', "2"]
    assert [r["predicted"] for r in out] == ["positive", "negative"]
    assert out[0]["label_1"] == "positive" and out[0]["label_2"] == "negative" and out[0]["score_1"] >= out[0]["score_2"]


def test_jsonl_in_and_json_lines_on_stdout(tmp_path, trained_run):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "superb", "meta": {"k": 1}}\n\n{"text": "awful", "meta": null}\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source)])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["predicted"], r["meta"]) for r in out] == [("positive", {"k": 1}), ("negative", None)]


def test_texts_with_top_k(trained_run):
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "--top-k", "2", "superb"])
    assert result.exit_code == 0, result.output
    label1, score1, label2, score2 = result.stdout.strip().split("\t")
    assert (label1, label2) == ("positive", "negative") and float(score1) + float(score2) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("name, content, extra, message", [
    ("in.csv", "body,label\nhi,x\n", [], "no column 'text' (columns: body, label); pass --text-column"),
    ("in.json", "[]", [], "unsupported extension '.json'"),
    ("in.jsonl", '{"text": "a"}\nnot json\n', [], "line 2 is not valid JSON"),
    ("in.csv", "text,score\nhi,1\n", [], "already has column(s) score"),
    ("in.csv", "text\n", [], "no rows"),
    ("in.csv", "text\n", ["--output", "outnew/deeper/out.csv"], "no rows"),  # and the folders made for the output go
    ("in.csv", "text\nhi\n", ["--output", "out.xlsx"], "unsupported extension '.xlsx'"),
    ("in.jsonl", '{"text": "fine"}\n{"text": "a \\ud800 b"}\n', [], "data row 2: its 'text' is not valid Unicode (a lone surrogate"),
    ("in.jsonl", '{"text": ["a", "b"]}\n', [], "data row 1: its 'text' is a list, not text"),
    ("in.csv", "text\nhi\n", ["--output", "outdir"], "--output {tmp}/outdir is a folder; give a file name"),
    ("in.csv", "text,id\ngood,1\nbad\nugly,3,extra\n", [], "in.csv: line 3 has 1 field(s) but the header has 2"),
    ("in.csv", 'text,id\ngood,1\n"never closes,2\nmore,3\n', [], "in.csv: the quoted text opened on line 3 runs to line 4"),
    ("in.tsv", "text\tid\ttext\ngood\t1\tbad\n", [], "in.tsv: column 'text' appears twice (columns 1 and 3); rename one"),
    ("in.csv", "text,,\nx,1,2\n", [], "in.csv: columns 2 and 3 have no name in the header; name them"),
    ("in.jsonl", '{"text": "a", "id": 1}\n\n{"text": "b", "id": 2, "note": "keep"}\n', [],
     "in.jsonl: data row 2 has 'note', which the first row lacks; a csv --output takes its columns from the first row"),
    ("in.jsonl", '{"text": "a"}\n{"text": "b", "note": "keep"}\n', ["--output", "out.tsv"], "a tsv --output takes its columns"),
    ("in.jsonl", '{"text": "ok"}\n{"text": true}\n', [], "in.jsonl: data row 2: its 'text' is true, not text; give text or remove the row"),
    ("in.jsonl", '{"text": Infinity}\n', [], "in.jsonl: data row 1: its 'text' is Infinity, not text"),
    ("in.jsonl", '{"text": "ok"}\n{"text": NaN}\n', [], "in.jsonl: data row 2 has no 'text'; fill it in or remove the row"),
])
def test_bad_files_are_one_line_errors_and_leave_no_output(tmp_path, trained_run, name, content, extra, message):
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    extra = [str(tmp_path / e) if e.startswith("out") else e for e in extra] or ["--output", str(tmp_path / "out.csv")]
    if "outdir" in message:
        (tmp_path / "outdir").mkdir()
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), *extra])
    assert result.exit_code == 2 and message.format(tmp=tmp_path) in result.output, result.output
    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir() if p.name != "outdir")


def test_output_may_not_overwrite_the_input(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("a", "b")])
    with pytest.raises(DataError, match="is the input file"):
        predict_file(CountingPredictor(), source, source, text_column="text", progress=False)
    os.link(source, tmp_path / "IN.csv")  # the input by another name: a hard link, or another case on macOS
    with pytest.raises(DataError, match="is the input file"):
        predict_file(CountingPredictor(), source, tmp_path / "IN.csv", text_column="text", progress=False, overwrite=True)
    assert (tmp_path / "IN.csv").read_text() == source.read_text()



def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, trained_run):
    source = write_csv(tmp_path / "in.csv", [("the film was superb", "1"), ("dreadful", "2")], header=("text", "id"))
    out = tmp_path / "train.csv"  # the user's own data, say
    out.write_bytes(b"text,label\nmy own work,positive\n")
    args = ["predict", "-m", str(trained_run), "-f", str(source), "-o", str(out)]
    assert_one_line_error(runner.invoke(app, args), f"--output {out} already exists; pass --overwrite to replace it, or choose another file")
    assert out.read_bytes() == b"text,label\nmy own work,positive\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "train.csv"]
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert [(r["id"], r["predicted"]) for r in csv.DictReader(open(out, encoding="utf-8"))] == [("1", "positive"), ("2", "negative")]
    assert_one_line_error(runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), "--overwrite"]),
                          "--overwrite goes with --output: it lets --output replace an existing file")


def test_an_output_name_near_the_file_systems_limit_is_written(tmp_path, trained_run):
    """The temporary name is longer than the output's: cut, so that any name the file system takes can be written."""
    source = write_csv(tmp_path / "in.csv", [("the film was superb", "1")], header=("text", "id"))
    out = tmp_path / ("é" * 122 + "long.csv")  # 252 bytes
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["predicted"] for r in csv.DictReader(open(out, encoding="utf-8"))] == ["positive"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", out.name])


def test_a_file_made_at_the_output_while_predicting_is_kept(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("a", "b")])
    out = tmp_path / "out.csv"

    class Racing(CountingPredictor):
        def predict(self, texts, pairs=None):
            out.write_text("someone else's\n")
            return super().predict(texts, pairs)

    with pytest.raises(UsageError, match="appeared while predicting; pass --overwrite"):
        predict_file(Racing(), source, out, text_column="text", progress=False)
    assert out.read_text() == "someone else's\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


@pytest.mark.parametrize("inside", ["log.jsonl", "reports/test/predictions.csv", "model/predictions.csv", "CHECKPOINT/predictions.csv",
                                    "LINK/log.jsonl", "LOG.JSONL", "Reports/test/predictions.csv"])  # no case: as on macOS
def test_a_runs_own_files_are_never_written_over_even_with_overwrite(tmp_path, trained_run, inside):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (tmp_path / "link").symlink_to(run, target_is_directory=True)  # the run under another name
    checkpoint = runs.checkpoints(run)[-1].name
    inside = inside.replace("CHECKPOINT", checkpoint)
    named = tmp_path / "link" if inside.startswith("LINK/") else run
    out = named / inside.removeprefix("LINK/")
    source = write_csv(tmp_path / "in.csv", [("superb", "1")], header=("text", "id"))
    before = files_in(run)
    result = runner.invoke(app, ["predict", "-m", str(run), "-f", str(source), "-o", str(out), "--overwrite"])
    assert_one_line_error(result, f"--output {out} is {inside.removeprefix('LINK/')} of the run in {named}, which predict never writes over "
                                  "(not even with --overwrite); choose a file outside the run's own files")
    assert files_in(run) == before
    beside = runner.invoke(app, ["predict", "-m", str(run), "-f", str(source), "-o", str(run / "predictions.csv")])
    assert beside.exit_code == 0, beside.output  # a file of the user's own next to the run's is the user's to write
    assert files_in(run) == {**before, "predictions.csv": (run / "predictions.csv").read_bytes()}


def test_the_model_folder_predicted_with_gets_no_output(tmp_path, trained_run):
    model = tmp_path / "model"
    shutil.copytree(trained_run / runs.MODEL_DIR, model)  # a plain model folder, outside any run
    source = write_csv(tmp_path / "in.csv", [("superb", "1")], header=("text", "id"))
    before = files_in(model)
    result = runner.invoke(app, ["predict", "-m", str(model), "-f", str(source), "-o", str(model / "predictions.csv")])
    assert_one_line_error(result, f"--output {model / 'predictions.csv'} is inside the model folder {model}; choose a file outside it")
    assert files_in(model) == before


@pytest.mark.parametrize("texts", [
    ['he said "hi" loudly', "C:\\dir\\file", "ok"],  # GLUE-style: written back byte for byte
    ['he said "hi" loudly', "a\tb", "two\nlines", '"a quoted title"', "C:\\dir\\file"],  # csv-quoted where it must be
], ids=["glue-style", "csv-quoted"])
def test_a_tsv_output_gives_back_the_input_texts_as_they_were(tmp_path, texts):
    pandas = pytest.importorskip("pandas")
    source = tmp_path / "in.tsv"
    with open(source, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows([("text", "id"), *((t, str(i)) for i, t in enumerate(texts))])
    out = tmp_path / "out.tsv"
    predict_file(CountingPredictor(), source, out, text_column="text", progress=False)
    back = pandas.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert list(back["text"]) == texts and list(back["id"]) == [str(i) for i in range(len(texts))]
    with open(out, encoding="utf-8", newline="") as f:  # as bertcls reads a TSV, for training or predict --file
        assert [row["text"] for row in csv.DictReader(f, delimiter="\t", quoting=tsv.quoting(out))] == texts
    if "\t" not in "".join(texts):
        assert out.read_text(encoding="utf-8").splitlines()[1].startswith('he said "hi" loudly\t0\t')


def test_a_searchs_trial_folders_are_not_an_output(tmp_path):
    """A trial's run folder, or one a search has yet to make: `bertcls tune` would find it taken."""
    search = tmp_path / "search"
    search.mkdir()
    (search / runs.SEARCH_FILE).write_text("{}")
    source = write_csv(tmp_path / "in.csv", [("a", "b")])
    with pytest.raises(RunError, match="trial-2/mine.csv of the search in"):
        check_output(source, search / "trial-2" / "mine.csv")
    check_output(source, search / "mine.csv")  # beside the search's own files: the user's


def test_stdout_as_an_output_says_to_leave_it_out(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("a", "b")])
    for stdout in ("-", "/dev/stdout"):
        with pytest.raises(DataError, match=f"^--output {stdout}: leave out --output to write JSON lines to stdout$"):
            check_output(source, Path(stdout))


@pytest.mark.parametrize("out_name", ["out.csv", "out.tsv"])
def test_a_text_with_a_bare_carriage_return_reads_back_as_its_own_row(tmp_path, out_name):
    pandas = pytest.importorskip("pandas")
    source = tmp_path / "in.csv"
    source.write_bytes(b'text,id\n"a\rb",1\nc,2\n')
    out = tmp_path / out_name
    predict_file(CountingPredictor(), source, out, text_column="text", progress=False)
    back = pandas.read_csv(out, sep="\t" if out_name == "out.tsv" else ",", dtype=str, keep_default_na=False)
    assert back.values.tolist() == [["a\rb", "1", "short", "0.9"], ["c", "2", "short", "0.9"]]
    assert out.read_bytes().endswith(b"\nc\t2\tshort\t0.9\n" if out_name == "out.tsv" else b"\nc,2,short,0.9\n")  # others as before


def test_one_unnamed_column_and_json_lines_short_of_a_key_are_kept(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(",text\n0,x\n1,y\n", encoding="utf-8")  # a pandas index
    predict_file(CountingPredictor(), source, tmp_path / "out.csv", text_column="text", progress=False)
    assert (tmp_path / "out.csv").read_text() == ",text,predicted,score\n0,x,short,0.9\n1,y,short,0.9\n"
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a", "note": "n"}\n{"text": 42}\n{"text": 3.5, "note": null}\n', encoding="utf-8")
    predict_file(CountingPredictor(), source, tmp_path / "out.tsv", text_column="text", progress=False)
    assert (tmp_path / "out.tsv").read_text() == "text\tnote\tpredicted\tscore\na\tn\tshort\t0.9\n42\t\tshort\t0.9\n3.5\t\tshort\t0.9\n"


def test_a_json_line_with_a_new_key_leaves_an_existing_output_as_it_was(tmp_path, trained_run):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "first", "id": 1}\n{"text": "second", "id": 2, "note": "KEEP ME"}\n', encoding="utf-8")
    out = tmp_path / "out.csv"
    out.write_bytes(b"my own work\n")
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), "-o", str(out), "--overwrite"])
    assert_one_line_error(result, f"--file {source}: data row 2 has 'note', which the first row lacks; a csv --output takes its "
                                  "columns from the first row: give every row the same keys, or write a .jsonl --output")
    assert out.read_bytes() == b"my own work\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.csv"]


@pytest.mark.parametrize("args, stdin, message", [
    (["--file", "in.csv", "--pair", "x"], None, "--pair goes with texts on the command line; with --file, name the column of second texts "
                                                "with --text-pair-column"),
    (["--text-column", "body", "great"], None, "--text-column goes with --file; texts on the command line are the texts themselves"),
    (["--text-pair-column", "b", "-"], "great\n", "--text-pair-column goes with --file"),
    (["--file", "in.csv", "--json", "--output", "out.csv"], None, "--json goes with texts on the command line or stdout; --output writes "
                                                                 "the format its extension names (.jsonl for JSON lines)"),
    (["great", "-"], "fine\n", "`-` reads the texts from stdin, one per line; give it alone, or give the texts as arguments"),
    (["-"], "", "stdin is empty; `-` reads one text per line from it, so pipe the texts in (or pass them as arguments)"),
])
def test_options_that_would_do_nothing_are_refused(tmp_path, trained_run, monkeypatch, args, stdin, message):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "in.csv", [("a", "b")])
    result = runner.invoke(app, ["predict", "-m", str(trained_run), *args], input=stdin)
    assert_one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_verbose_names_the_rows_over_max_length_and_a_full_stdout_is_one_line(tmp_path, trained_run):
    source = write_csv(tmp_path / "in.csv", [("great " * (200 if i in (2, 5) else 1), "positive") for i in range(7)], header=("text", "label"))
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(source), "-o", str(tmp_path / "out.csv"), "-v"])
    assert result.exit_code == 0, result.output
    max_length = json.loads((trained_run / runs.MODEL_DIR / "config.json").read_text())["bertcls_max_length"]
    assert (f"note: 2 of 7 texts over max_length {max_length} tokens are cut to max_length tokens, their ends left out (data rows 3, 6)"
            in result.stderr.splitlines())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args in (["great", "awful"], ["-f", str(source)]):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "bertcls", "predict", "-m", str(trained_run), *args], stdout=full,
                                  stderr=subprocess.PIPE, text=True, env=env)
        assert (done.returncode, done.stderr) == (2, "Error: standard output: No space left on device; free space where it goes, "
                                                     "or redirect it elsewhere\n")


def test_sigterm_while_writing_keeps_the_old_output_and_leaves_no_temporary(tmp_path, trained_run):
    from conftest import wait_for

    source = write_csv(tmp_path / "in.csv", [(f"text number {i} " * 8, "x") for i in range(50_000)])
    output = tmp_path / "out.csv"
    output.write_text("an earlier output\n")
    output.chmod(0o600)
    predicting = subprocess.Popen([sys.executable, "-m", "bertcls", "predict", "-m", str(trained_run), "-f", str(source), "-o", str(output),
                                   "--overwrite"], stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(lambda: any(p.name.startswith(".out.csv.") for p in tmp_path.iterdir()), predicting, "the output's temporary file")
    predicting.send_signal(signal.SIGTERM)
    assert (predicting.wait(60), predicting.stderr.read().splitlines()[-1]) == (143, "Terminated.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"] and output.read_text() == "an earlier output\n"
    # --overwrite to the end: the new file keeps the old one's permissions (a private file stays private)
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(write_csv(tmp_path / "few.csv", [("fine", "x")])),
                                 "-o", str(output), "--overwrite"])
    assert result.exit_code == 0 and output.stat().st_mode & 0o777 == 0o600


def test_what_a_killed_predict_left_goes_with_the_next_output_to_the_same_file(tmp_path, trained_run):
    """kill -9 leaves the output's half-written temporary; the next predict -o to that file removes it. One that a live
    command holds, one just made, and files of the user's named alike stay."""
    import fcntl
    import time

    from bertcls import atomic
    from conftest import wait_for

    source = write_csv(tmp_path / "in.csv", [(f"text number {i} " * 8, "x") for i in range(50_000)])
    output = tmp_path / "out.csv"
    predicting = subprocess.Popen([sys.executable, "-m", "bertcls", "predict", "-m", str(trained_run), "-f", str(source), "-o", str(output)],
                                  stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(lambda: any(p.name.startswith(".out.csv.") for p in tmp_path.iterdir()), predicting, "the output's temporary file")
    predicting.kill()
    assert predicting.wait(60) == -signal.SIGKILL
    (killed,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.csv.")]
    live, young = (tmp_path / f".out.csv.{atomic.TEMP_MARK}{name}.tmp" for name in ("live0000", "young000"))
    theirs = [tmp_path / f".out.csv.{name}.tmp" for name in ("notes", "old_copy")]
    for path in (live, young, *theirs):
        path.write_text("half a fi")
    for path in (killed, live, *theirs):
        os.utime(path, (time.time() - 2 * atomic.LEFTOVER_AGE_S,) * 2)
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the command writing it holds it
    try:
        result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(write_csv(tmp_path / "few.csv", [("fine", "x")])),
                                     "-o", str(output)])
    finally:
        os.close(held)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", "few.csv", "out.csv", live.name, young.name, *(p.name for p in theirs)])
    assert output.read_text().splitlines()[1:] and all(path.read_text() == "half a fi" for path in theirs)


def test_a_json_lines_lists_objects_and_booleans_go_to_csv_as_json(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a", "meta": {"x": 1, "y": null}, "tags": ["p", "q"], "ok": true, "none": null}\n', encoding="utf-8")
    for name in ("out.csv", "out.tsv"):
        predict_file(CountingPredictor(), source, tmp_path / name, text_column="text", progress=False)
        with open(tmp_path / name, encoding="utf-8", newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ","))
        assert (json.loads(row["meta"]), json.loads(row["tags"]), row["ok"], row["none"]) == ({"x": 1, "y": None}, ["p", "q"], "true", "")


def test_a_pipe_as_the_file_says_what_it_is(tmp_path, trained_run):
    os.mkfifo(tmp_path / "rows.csv")
    result = runner.invoke(app, ["predict", "-m", str(trained_run), "-f", str(tmp_path / "rows.csv")])
    assert_one_line_error(result, f"--file {tmp_path / 'rows.csv'}: not a regular file (a pipe?); save the rows to a file first, "
                                  "or pipe texts one per line into `bertcls predict -`")
