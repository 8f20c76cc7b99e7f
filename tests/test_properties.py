"""Property: whatever config and data file a user writes, `bertcls train` either finishes a run or
exits 2 with one `Error:` line and no traceback, and a failed run never looks finished."""

import csv
import io
import json
import os
import tempfile
import traceback
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bertcls.cli import app

runner = CliRunner()

WORDS = st.sampled_from(["good", "bad", "film", "plot", "", " ", "a,b", 'say "hi"', "line\nbreak", "tab\there",
                         "\x00\x07", "😀", "映画", "فيلم", "NA", "null", "1", "\ufeff"])
PHRASES = st.lists(WORDS, min_size=1, max_size=4).map(" ".join)
TEXTS = st.one_of(PHRASES, st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20))
NAMES = st.sampled_from(["pos", "neg", "neu"])
LABELS = st.one_of(NAMES, NAMES, st.integers(0, 2), st.sampled_from(["1", "2", "", None, 1.0, 1.5, True]))
ROWS = st.one_of(  # mostly well-formed rows of two classes, else anything
    st.lists(PHRASES, min_size=4, max_size=14).map(lambda texts: [(t, ("pos", "neg")[i % 2]) for i, t in enumerate(texts)]),
    st.lists(st.tuples(TEXTS, LABELS), max_size=14))


def usually(valid, invalid):
    """Mostly a valid value, sometimes an invalid one, so that a good share of the runs get to train."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: valid if ok else invalid)


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """A small labelled file, well formed or broken in the ways real files are."""
    rows = draw(ROWS)
    ext = draw(st.sampled_from(["csv", "tsv", "jsonl", "json", "csv"]))
    if ext == "jsonl":
        body = "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)
    elif ext == "json":
        body = json.dumps([{"text": t, "label": label} for t, label in rows])
    elif ext == "csv" and draw(st.booleans()):  # quoted by a csv writer
        out = io.StringIO()
        csv.writer(out).writerows([("text", "label"), *[(t, "" if label is None else label) for t, label in rows]])
        body = out.getvalue()
    else:  # joined by hand, as people do: commas, tabs and newlines in texts break rows
        sep = "," if ext == "csv" else "\t"
        body = f"text{sep}label\n" + "".join(f"{t}{sep}{'' if label is None else label}\n" for t, label in rows)
    data = body.encode("utf-8")
    damage = draw(st.sampled_from(["none"] * 8 + ["cut", "bytes", "bom", "crlf", "ragged"]))
    if damage == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "bytes":
        data += b"\xff\xfe\x80 broken,pos\n"
    elif damage == "bom":
        data = "\ufeff".encode() + data
    elif damage == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif damage == "ragged":
        data += b"one,too,many,fields\n"
    return ext, data


CONFIGS = st.fixed_dictionaries({}, optional={  # an absent key keeps a working value
    "seed": usually(st.integers(0, 3), st.sampled_from([-1, "x", 2**40])),
    "epochs": usually(st.just(1), st.sampled_from([0, -1, "one", 1.5])),
    "batch_size": usually(st.integers(1, 8), st.sampled_from([0, -3, "big"])),
    "learning_rate": usually(st.sampled_from([1e-3, 5e-3, "5e-3"]), st.sampled_from([0, 2.0, "fast", None])),
    "max_length": usually(st.sampled_from([8, 16, 64]), st.sampled_from([0, 4, 10**6])),
    "validation_split": usually(st.just(0.25), st.sampled_from([0.0, 1.0, 3])),
    "text_column": usually(st.just("text"), st.sampled_from(["label", "body"])),
    "gradient_accumulation_steps": usually(st.sampled_from([1, 2]), st.just(0)),
    "save_every_steps": usually(st.sampled_from([1, 3, None]), st.just(0)),
    "unknown": usually(st.none(), st.sampled_from(["lr", "epoch", "trainig"])),
})


def build_config(folder: Path, ext: str, keys: dict) -> Path:
    raw = {"seed": keys.get("seed", 0), "output_dir": str(folder / "run"),
           "data": {"train": f"train.{ext}", "max_length": keys.get("max_length", 16), "text_column": keys.get("text_column", "text"),
                    "validation_split": keys.get("validation_split", 0.25)},
           "model": {"name": "tiny"},
           "training": {"epochs": keys.get("epochs", 1), "batch_size": keys.get("batch_size", 4), "precision": "fp32",
                        "learning_rate": keys.get("learning_rate", 1e-3), "eval_batch_size": 8,
                        "gradient_accumulation_steps": keys.get("gradient_accumulation_steps", 1),
                        "save_every_steps": keys.get("save_every_steps"),
                        "save_torchscript": False, "loss_curve": False}}  # neither is what this test is about
    if keys.get("unknown"):
        raw["training"][keys["unknown"]] = 1
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


# 12 examples keep the default suite fast; CI searches with 100, and BERTCLS_PROPERTY_EXAMPLES=500 harder still.
@settings(max_examples=int(os.environ.get("BERTCLS_PROPERTY_EXAMPLES", 12)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(file=data_files(), keys=CONFIGS)
def test_a_run_finishes_or_fails_with_one_line(file, keys):
    ext, content = file
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / f"train.{ext}").write_bytes(content)
        result = runner.invoke(app, ["train", str(build_config(folder, ext, keys)), "-q"])
        run = folder / "run"
        event("finished" if result.exit_code == 0 else f"exit {result.exit_code}: {result.output.replace(tmp, '')[:60]}")
        if result.exit_code == 0:
            assert (run / "metrics.json").is_file() and (run / "model" / "model.safetensors").is_file()
            return
        crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and result.exit_code != 2 else ""
        assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}\n{crash}"
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
        assert not (run / "metrics.json").exists(), "a failed run looks finished"
