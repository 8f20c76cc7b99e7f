"""`bertcls check`: planted problems are found and counted exactly, clean data reports none; the CLI's outputs and exit codes."""

import csv
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcls import check as check_mod
from bertcls.cli import app
from bertcls.config import load_config
from bertcls.data import Split
from bertcls.errors import ConfigError
from conftest import BAD, FILLER, GOOD, assert_one_line_error, make_config, write_csv

runner = CliRunner()

CLEAN_TRAIN, CLEAN_HELD = 400, 60
FLIPPED = range(10, 90, 10)  # clean train rows (0-based) given a second cue word and the wrong label: 8 clear label errors
DUPLICATED, VARIED, CONFLICTING = (1, 2, 3), (4, 5), (6, 7)  # clean train rows copied exactly, as variants, with the other label
LEAKED_EXACT, LEAKED_VARIANT, LEAKED_RELABELLED = (100, 101), 102, 103  # train rows copied into validation / test
LONG_TEXTS, LONG_WORDS = 4, 40  # 40 known words: 42 tokens with [CLS] and [SEP], over max_length 32
NEAR_EMPTY = [("ok", "positive"), ("!", "negative"), ("", "positive")]


def unique_rows(n: int, rng: random.Random, taken: set[str]) -> list[tuple[str, str]]:
    """Cue-word sentiment rows (conftest's toy task) that are distinct after normalising, from each other and from `taken`."""
    rows: list[tuple[str, str]] = []
    while len(rows) < n:
        label = "positive" if len(rows) % 2 == 0 else "negative"
        words = rng.sample(FILLER, rng.randint(3, 8)) + [rng.choice(GOOD if label == "positive" else BAD)]
        rng.shuffle(words)
        text = " ".join(words)
        if check_mod.normalise(text) not in taken:
            taken.add(check_mod.normalise(text))
            rows.append((text, label))
    return rows


def other(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def variant(text: str) -> str:
    """The same text after normalising: other case, punctuation and spacing."""
    return "  " + text.upper().replace(" ", " ,  ") + "!!"


def clean_data() -> tuple[list, list, list]:
    rng, taken = random.Random(0), set()
    return unique_rows(CLEAN_TRAIN, rng, taken), unique_rows(CLEAN_HELD, rng, taken), unique_rows(CLEAN_HELD, rng, taken)


def planted_data() -> tuple[list, list, list]:
    train, validation, test = clean_data()
    for i in FLIPPED:
        text, label = train[i]
        cue = next(w for w in (GOOD if label == "positive" else BAD) if w not in text.split())
        train[i] = (f"{text} {cue}", other(label))
    rng = random.Random(1)
    long = [(" ".join(rng.sample(FILLER * 3, 36) + [cue] * 4), label) for cue, label in (("superb", "positive"), ("dull", "negative"),
                                                                                       ("charming", "positive"), ("awful", "negative"))]
    train += [train[i] for i in DUPLICATED] + [(variant(train[i][0]), train[i][1]) for i in VARIED] \
        + [(train[i][0], other(train[i][1])) for i in CONFLICTING] + long + NEAR_EMPTY
    validation += [train[i] for i in LEAKED_EXACT] + [(variant(train[LEAKED_VARIANT][0]), train[LEAKED_VARIANT][1]), ("a fresh remark", "neutral")]
    test += [(variant(train[LEAKED_RELABELLED][0]), other(train[LEAKED_RELABELLED][1]))]
    return train, validation, test


def config_for(folder: Path, splits, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {name: write_csv(folder / f"{name}.csv", rows) for name, rows in zip(("train", "validation", "test"), splits, strict=True)}
    return make_config(folder, data, **sections)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    config = config_for(tmp_path_factory.mktemp("planted"), planted_data())
    return config, check_mod.check(load_config(config), label_issues=10)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    config = config_for(tmp_path_factory.mktemp("clean"), clean_data())
    return config, check_mod.check(load_config(config), label_issues=10)


def test_planted_problems_are_counted_exactly(planted):
    s = planted[1].summary
    train, validation, test = planted_data()
    assert {name: split["rows"] for name, split in s["splits"].items()} == {"train": len(train), "validation": len(validation), "test": len(test)}
    assert s["splits"]["train"]["labels"] == dict(sorted(Counter(label for _, label in train).items()))
    assert s["imbalance_ratio"] == round(max(s["splits"]["train"]["labels"].values()) / min(s["splits"]["train"]["labels"].values()), 2)
    assert s["unseen_labels"] == {"validation": {"neutral": 1}}
    assert {k: s["duplicates"][k] for k in ("exact", "normalised", "texts")} == {"exact": 5, "normalised": 7, "texts": 7}
    assert {k: s["conflicts"][k] for k in ("texts", "rows")} == {"texts": 2, "rows": 4}
    assert s["conflicts"]["examples"][0]["labels"] == {train[6][1]: [7], other(train[6][1]): [CLEAN_TRAIN + 6]}
    assert {name: (n["normalised"], n["exact"], n["label_differs"]) for name, n in s["leakage"].items()} == {"validation": (3, 2, 0), "test": (1, 0, 1)}
    assert {name: (n["rows"], n["empty"]) for name, n in s["near_empty"].items()} == {"train": (3, 1), "validation": (0, 0), "test": (0, 0)}
    assert {name: n["over_max_length"] for name, n in s["lengths"].items()} == {"train": LONG_TEXTS, "validation": 0, "test": 0}
    assert s["lengths"]["train"]["max"] == LONG_WORDS + 2
    assert s["max_length_to_keep_whole"]["99%"] < s["max_length"]
    assert planted[1].problems == ["4 validation/test row(s) also in train", "2 train text(s) with conflicting labels"]


def test_flipped_labels_are_found_with_the_right_suggestion(planted):
    issues = {row["row"] - 1: row for row in planted[1].tables["label_issues"]}
    true_labels = [label for _, label in clean_data()[0]]
    found = [i for i in FLIPPED if i in issues]
    assert len(found) >= 6, f"cleanlab found {found} of the flipped rows {list(FLIPPED)}"
    assert all(issues[i]["suggested"] == true_labels[i] and issues[i]["given"] == other(true_labels[i]) for i in found)
    assert all(issues[i]["given_probability"] < 0.5 for i in found)
    assert len(planted[1].summary["label_issues"]["rows"]) == min(10, len(issues))


def test_clean_data_reports_none(clean):
    s = clean[1].summary
    assert (s["duplicates"]["normalised"], s["conflicts"]["texts"], s["unseen_labels"]) == (0, 0, {})
    assert all(n["normalised"] == 0 for n in s["leakage"].values())
    assert all(n["rows"] == 0 for n in s["near_empty"].values())
    assert all(n["over_max_length"] == 0 for n in s["lengths"].values())
    assert s["label_issues"]["found"] == 0 and clean[1].problems == []
    assert s["baseline"]["validation"]["accuracy"] >= 0.9  # the cue-word task is easy for TF-IDF


def test_terminal_report_shows_the_findings(planted, capsys):
    check_mod.print_report(planted[1])
    out = capsys.readouterr().out
    for line in ("duplicates in train: 5 exact, 7 after normalising (7 texts repeated)", "conflicts in train: 2 texts with different labels (4 rows)",
                 "labels train lacks, in validation: neutral (1 rows); training refuses them",
                 "leakage (rows also in train): validation 3 (2 exact, 0 with another label), test 1 (0 exact, 1 with another label)",
                 "near-empty texts (< 3 characters): train 3 (1 empty: training refuses them), validation 0, test 0"):
        assert line in out, out
    assert "most suspicious:\nrow  given     suggested  p(given)  text" in out
    assert "baseline (TF-IDF + logistic regression): validation accuracy 0.98" in out


@pytest.mark.parametrize("mode, read", [("truncate", "are cut to max_length tokens, their ends left out"),
                                        ("head_tail", "are read by head and tail: a quarter of max_length from the start, the rest from the end"),
                                        ("sliding_window", "are read whole, in windows of max_length tokens (at most 64 a text)")])
def test_report_says_how_long_texts_are_read(clean, mode, read):
    result = runner.invoke(app, ["check", str(clean[0]), "--set", f"data.long_text={mode}", "--label-issues", "0"])
    assert result.exit_code == 0, result.output
    assert f"texts over max_length 32 {read}" in result.stdout and f"(data.long_text: {mode})" in result.stdout, result.stdout


def test_json_strict_and_output_files(planted, tmp_path):
    config, report = planted
    out = tmp_path / "findings"
    result = runner.invoke(app, ["check", str(config), "--json", "--strict", "--output", str(out), "--label-issues", "3"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["duplicates"] == report.summary["duplicates"] and summary["leakage"] == report.summary["leakage"]
    assert len(summary["label_issues"]["rows"]) == 3
    assert "--strict: 4 validation/test row(s) also in train; 2 train text(s) with conflicting labels" in result.stderr
    assert json.loads((out / "summary.json").read_text()) == summary
    tables = {p.stem: list(csv.DictReader(p.read_text(encoding="utf-8").splitlines())) for p in out.glob("*.csv")}
    assert sorted(tables) == sorted(check_mod.TABLES) and sorted(p.name for p in out.iterdir()) == sorted([*(f"{t}.csv" for t in tables), "summary.json"])
    assert (len(tables["duplicates"]), sum(r["exact"] == "True" for r in tables["duplicates"])) == (14, 5)
    assert (len(tables["conflicts"]), len(tables["leakage"]), len(tables["near_empty"])) == (4, 4, 3)
    assert (len(tables["lengths"]), sum(r["over_max_length"] == "True" for r in tables["lengths"])) == (sum(len(s) for s in planted_data()), LONG_TEXTS)
    assert len(tables["label_issues"]) == report.summary["label_issues"]["found"]
    assert runner.invoke(app, ["check", str(config), "--label-issues", "0"]).exit_code == 0  # without --strict, findings are no failure


def test_strict_passes_on_clean_data(clean):
    result = runner.invoke(app, ["check", str(clean[0]), "--strict", "--label-issues", "0"])
    assert result.exit_code == 0, result.output
    assert "likely label errors: skipped (--label-issues 0)" in result.stdout


@pytest.mark.parametrize("make_bad, message", [
    (lambda d: ["--output", str(d / "train.csv")], "--output {d}/train.csv: a file, not a folder; give a folder (it is created if missing)"),
    (lambda d: ["--output", str(d / "train.csv" / "sub")], "--output {d}/train.csv/sub: cannot write there ({d}/train.csv is a file); choose another folder"),
    (lambda d: ["--set", "data.text_column=body"], "no column 'body' (columns: text, label); set data.text_column"),
])
def test_bad_input_is_one_line_error(clean, make_bad, message):
    folder = clean[0].parent
    before = (folder / "train.csv").read_bytes()
    result = runner.invoke(app, ["check", str(clean[0]), *make_bad(folder)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1 and message.format(d=folder) in result.stderr
    assert (folder / "train.csv").read_bytes() == before


def test_a_failed_check_leaves_no_output_folder(clean, tmp_path):
    result = runner.invoke(app, ["check", str(clean[0]), "--set", "data.text_column=body", "--output", str(tmp_path / "findings" / "check")])
    assert_one_line_error(result, "no column 'body'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("place, message", [
    ("run", "--output {d}/run is the config's output_dir, where train writes its run (and refuses a folder with other files); "
            "choose a folder outside it, e.g. {d}/run-check"),
    ("run/check", "--output {d}/run/check is inside the config's output_dir {d}/run"),
    ("old/model/check", "--output {d}/old/model/check is inside the bertcls run folder {d}/old, which holds what training wrote; "
                        "choose a folder outside the run, e.g. {d}/old-check"),
])
def test_output_is_never_a_run_folder(tmp_path, place, message):
    """Tables in output_dir would make train refuse it; tables in a run would mix with what training wrote."""
    old = tmp_path / "old"  # a run folder as bertcls leaves it
    (old / "model").mkdir(parents=True)
    (old / "config.yaml").write_text("seed: 1\n")
    (old / "log.jsonl").write_text("")
    rng, taken = random.Random(4), set()
    config = config_for(tmp_path, [unique_rows(20, rng, taken), unique_rows(10, rng, taken), unique_rows(10, rng, taken)])
    result = runner.invoke(app, ["check", str(config), "--label-issues", "0", "--output", str(tmp_path / place)])
    assert_one_line_error(result, message.format(d=tmp_path))
    assert not (tmp_path / "run").exists() and sorted(p.name for p in old.iterdir()) == ["config.yaml", "log.jsonl", "model"]


def test_without_cleanlab_label_issues_are_skipped_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab now raises ImportError
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    rng, taken = random.Random(3), set()
    report = check_mod.check(load_config(config_for(tmp_path, [unique_rows(40, rng, taken), unique_rows(10, rng, taken), unique_rows(10, rng, taken)])))
    assert report.summary["label_issues"] == {"skipped": check_mod.NO_CLEANLAB}
    check_mod.print_report(report)
    assert 'likely label errors: skipped (cleanlab is not installed: pip install cleanlab (or pip install -e ".[check]" in the bertcls repository))' in capsys.readouterr().out


def test_sentence_pairs_compare_both_texts(tmp_path):
    rows = [("is it good", "yes it is great", "yes"), ("is it good", "no it is awful", "no"), ("Is it good?", "Yes, it is great.", "yes"),
            ("is it bad", "no it is fine", "no"), ("is it bad", "yes it is awful", "yes"), ("is it new", "yes brand new", "yes")]
    data = {"train": write_csv(tmp_path / "train.csv", rows, header=("q", "a", "label")),
            "validation": write_csv(tmp_path / "validation.csv", [("is it good", "no it is awful", "no"), ("is it new", "no", "no")], header=("q", "a", "label"))}
    config = load_config(make_config(tmp_path, data), ["data.text_column=q", "data.text_pair_column=a", "data.test=null"])
    s = check_mod.check(config, label_issues=0).summary
    assert (s["duplicates"]["exact"], s["duplicates"]["normalised"], s["conflicts"]["texts"]) == (0, 1, 0)
    assert s["leakage"] == {"validation": {"exact": 1, "normalised": 1, "label_differs": 0, "examples": [
        {"split": "validation", "row": 1, "exact": True, "label": "no", "train_rows": "2", "train_labels": "no", "text": "is it good || no it is awful"}]}}
    assert s["near_empty"]["validation"]["rows"] == 1  # the pair text "no"


def test_texts_of_only_emoji_or_punctuation_are_compared(tmp_path):
    rng, taken = random.Random(6), set()
    train = unique_rows(20, rng, taken) + [("🙂🙂🙂", "positive"), ("🙂🙂🙂", "positive"), ("?!", "positive"), ("?!", "negative"), ("😡😡😡", "negative")]
    validation = unique_rows(10, rng, taken) + [("😡😡😡 ", "negative")]
    config = config_for(tmp_path, [train, validation, unique_rows(10, rng, taken)])
    s = check_mod.check(load_config(config), label_issues=0).summary
    assert {k: s["duplicates"][k] for k in ("exact", "normalised", "texts")} == {"exact": 2, "normalised": 2, "texts": 2}
    assert (s["conflicts"]["texts"], s["conflicts"]["rows"], s["conflicts"]["examples"][0]["text"]) == (1, 2, "?!")
    assert {k: s["leakage"]["validation"][k] for k in ("normalised", "exact")} == {"normalised": 1, "exact": 0}


def test_baseline_reads_chinese_by_character(tmp_path):
    """Chinese has no spaces: taken as words of letters, each sentence would be one word, and no validation sentence known."""
    def rows(n: int, seed: int) -> list[tuple[str, str]]:
        rng = random.Random(seed)
        made = [(rng.sample("这部电影的故事情节演员表演真是非常", rng.randint(4, 8)) + [rng.choice("好棒赞妙" if i % 2 else "差烂糟坏")], i % 2) for i in range(n)]
        return [("".join(rng.sample(chars, len(chars))), "positive" if label else "negative") for chars, label in made]

    config = config_for(tmp_path, [rows(200, 0), rows(40, 1), rows(40, 2)])
    s = check_mod.check(load_config(config), label_issues=0).summary
    assert s["baseline"]["validation"]["accuracy"] >= 0.9 and s["baseline"]["test"]["accuracy"] >= 0.9, s["baseline"]


def test_multi_label_counts_label_sets_and_scores_one_vs_rest(tmp_path):
    rng, taken = random.Random(5), set()
    sets = ["sport", "politics", "sport;politics", "music", ""]
    rows = [(text, sets[i % len(sets)]) for i, (text, _) in enumerate(unique_rows(100, rng, taken))]
    rows += [(rows[0][0], "music")]  # the first text again with another label set: one conflict
    data = {"train": write_csv(tmp_path / "train.csv", rows), "validation": write_csv(tmp_path / "validation.csv", rows[1:11])}
    s = check_mod.check(load_config(make_config(tmp_path, data), ["data.task=multi_label", "data.test=null"]), label_issues=3).summary
    assert s["splits"]["train"]["labels"] == {"music": 21, "politics": 40, "sport": 40}
    assert (s["conflicts"]["texts"], s["leakage"]["validation"]["normalised"], s["leakage"]["validation"]["exact"]) == (1, 10, 10)
    assert set(s["baseline"]["validation"]) == {"accuracy", "f1_micro", "f1_macro"} and s["label_issues"]["folds"] == 5


def test_multi_label_with_a_label_on_every_train_row(tmp_path):
    """cleanlab cannot doubt a label no train row lacks: it is left out of the search, and the baseline still predicts the others."""
    rows = [(text, "always;" + label) for text, label in clean_data()[0][:40]]
    data = {"train": write_csv(tmp_path / "train.csv", rows), "validation": write_csv(tmp_path / "validation.csv", rows[:10])}
    result = runner.invoke(app, ["check", str(make_config(tmp_path, data)), "--set", "data.task=multi_label", "--set", "data.test=null",
                                 "--label-issues", "3", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["label_issues"]["folds"] == 5 and all(row["given"].startswith("always;") for row in s["label_issues"]["rows"])
    assert s["baseline"]["validation"]["accuracy"] == 1.0  # train rows again: every label set right


@pytest.mark.parametrize("cut, warned", [(10, False), (11, True)])
def test_train_warnings_name_each_problem(cut, warned):
    train = Split("train", ["good film", "Good film!", "bad film", "a plot"], None, ["pos", "neg", "neg", "pos"])
    validation = Split("validation", ["A plot", "new text"], None, ["pos", "pos"])
    over = [True] * cut + [False] * (100 - cut)  # per train text: longer than max_length, so cut
    lines = check_mod.warnings((train, validation, None), over, 32)
    assert lines[:2] == [
        "warning: leakage: 1 validation row(s) also appear in train (after normalising case, punctuation and whitespace); "
        "their scores overstate the model. `bertcls check CONFIG --output DIR` lists them",
        "warning: conflicts: 1 train text(s) appear with different labels (2 rows). `bertcls check CONFIG --output DIR` lists them"]
    assert lines[2:] == ([f"warning: truncation: {cut}% of train texts ({cut}) are longer than data.max_length=32 tokens and are cut; "
                          "`bertcls check CONFIG` says which max_length keeps 95% whole"] if warned else [])
    assert check_mod.warnings((Split("train", ["a b", "c d"], None, [0, 1]), Split("validation", ["e f"], None, [0]), None), [False, False], 32) == []


def test_train_prints_the_warnings(tmp_path):
    rng, taken = random.Random(7), set()
    train = unique_rows(40, rng, taken)
    train += [(train[0][0], other(train[0][1]))]
    config = config_for(tmp_path, [train, unique_rows(10, rng, taken) + train[1:3], unique_rows(10, rng, taken)],
                        training={"epochs": 1, "save_torchscript": False, "loss_curve": False})
    result = runner.invoke(app, ["train", str(config), "--quiet", "--set", "data.max_length=8"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert [line.split(":")[1].strip() for line in warnings] == ["leakage", "conflicts", "truncation"], result.stderr
    assert "2 validation row(s) also appear in train" in warnings[0] and "1 train text(s) appear with different labels (2 rows)" in warnings[1]
    over = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["over_max_length"]["train"]
    assert f"of train texts ({over}) are longer than data.max_length=8 tokens" in warnings[2]  # the count the log header gives


def test_train_warns_only_of_texts_longer_than_max_length():
    """6 words and [CLS], [SEP] fill max_length 8 exactly: nothing is cut, so no truncation warning; 7 words are cut."""
    from bertcls.data import encode
    from bertcls.model import build_tiny_tokenizer

    for words, warned in ((6, False), (7, True)):
        texts = [" ".join("abcdefghij"[i:i + words]) for i in range(4)]
        train = Split("train", texts, None, ["x", "y", "x", "y"])
        over = encode(train, build_tiny_tokenizer(texts), max_length=8).reading.over  # what train passes
        assert check_mod.warnings((train, None, None), over, 8) == ([
            "warning: truncation: 100% of train texts (4) are longer than data.max_length=8 tokens and are cut; "
            "`bertcls check CONFIG` says which max_length keeps 95% whole"] if warned else [])


def test_token_lengths_are_what_training_encodes(tmp_path):
    from bertcls.data import encode
    from bertcls.model import build_tiny_tokenizer

    texts = ["a short one", "Ünïcödé, emoji 🙂 and CJK 漢字", "x " * 300, ""]
    split = Split("train", texts, ["pair", "second text here", "y", "z"], ["a", "b", "a", "b"])
    tokenizer = build_tiny_tokenizer(texts + split.pairs)
    tokenizer.backend_tokenizer.enable_truncation(16)  # as a saved tokenizer.json may carry them: not for counting
    tokenizer.backend_tokenizer.enable_padding(length=64)
    assert check_mod.token_lengths(split, tokenizer).tolist() == encode(split, tokenizer, max_length=1000).lengths


def test_long_texts_are_counted_a_few_characters_at_a_time(monkeypatch):
    # many long texts would otherwise be encoded in one call: gigabytes for a file of long documents
    texts = ["a b c d e", "x " * 40, "f g", "y " * 40, "h"]
    split = Split("train", texts, ["p", "q", "r", "s", "t"], ["a"] * 5)
    monkeypatch.setattr(check_mod, "LENGTH_CHUNK_CHARS", 50)  # each text with its pair: 10, 81, 4, 81 and 2 characters
    assert list(check_mod._chunks(split)) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # one over the budget goes alone, never dropped
    monkeypatch.setattr(check_mod, "LENGTH_CHUNK_CHARS", 100)
    calls = []
    monkeypatch.setattr(check_mod, "_token_counter", lambda tokenizer: lambda t, p: calls.append(len(t)) or [len(x.split()) for x in t])
    assert check_mod.token_lengths(split, None).tolist() == [5, 40, 2, 40, 1] and calls == [3, 2]


def test_a_text_longer_than_a_chunk_is_counted_in_pieces(monkeypatch):
    # one huge text would otherwise be encoded whole: a 100 MB text, about 3 GB of encodings
    from bertcls import model as model_mod
    from bertcls.model import build_tiny_tokenizer

    words = "the quick brown fox jumps over a lazy dog and then some more words ".split()
    text, pair = " ".join(words[i % len(words)] for i in range(400)), " ".join(words[i % 7] for i in range(300))
    tokenizer = build_tiny_tokenizer([text, pair])
    split = Split("train", [text, "short", text], [pair, "p", "q"], ["a"] * 3)
    whole = check_mod.token_lengths(split, tokenizer).tolist()
    monkeypatch.setattr(check_mod, "LENGTH_CHUNK_CHARS", 200)
    monkeypatch.setattr(model_mod, "PIECE_CHARS", 50)
    counter, sizes = check_mod._token_counter, []

    def watched(tok):
        count = counter(tok)
        return lambda texts, pairs: sizes.append(sum(map(len, texts)) + sum(map(len, pairs or ()))) or count(texts, pairs)

    monkeypatch.setattr(check_mod, "_token_counter", watched)
    assert check_mod.token_lengths(split, tokenizer).tolist() == whole and whole[0] > 700
    assert max(sizes) <= 50  # characters per tokenizer call


def folder_state(folder: Path) -> dict[str, bytes | None]:
    """Every entry's bytes (None for a folder), to compare before and after."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("place", ["same path", "symlink", "hard link"])
def test_output_never_replaces_an_input_file(clean, tmp_path, monkeypatch, place):
    """The user's validation data in the --output folder under a table's name: refused before any work, kept byte for byte."""
    config, out = clean[0], tmp_path / "findings"
    out.mkdir()
    validation = config.parent / "validation.csv"
    data = out / "leakage.csv"
    if place == "same path":
        data.write_bytes(validation.read_bytes())
    elif place == "symlink":
        data.symlink_to(validation)
    else:
        data.hardlink_to(validation)
    overrides = ["--set", f"data.validation={data}"] if place == "same path" else []
    before, kept = folder_state(out), validation.read_bytes()
    monkeypatch.setattr(check_mod, "check", lambda *a, **k: pytest.fail("check ran before --output was refused"))
    result = runner.invoke(app, ["check", str(config), *overrides, "--label-issues", "0", "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: --output {out}: {data} ") and result.stderr.rstrip().endswith("choose another folder"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and folder_state(out) == before and validation.read_bytes() == kept
    inputs = check_mod.input_files(load_config(config, overrides[1:]).data)
    with pytest.raises(ConfigError) as err:  # told the run's inputs, it names which one
        check_mod.prepare_output(out, inputs)
    assert str(err.value) == f"--output {out}: {data} is data.validation of this run, and check would replace it with its own leakage.csv; choose another folder"


def test_output_never_replaces_an_input_that_an_earlier_check_wrote(planted, tmp_path):
    """A table of an earlier check, read back as validation data: refused when the tables are written, none written."""
    config, out = planted[0], tmp_path / "findings"
    assert runner.invoke(app, ["check", str(config), "--label-issues", "0", "--output", str(out)]).exit_code == 0
    before = folder_state(out)
    result = runner.invoke(app, ["check", str(config), "--set", f"data.validation={out / 'leakage.csv'}", "--label-issues", "0", "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: --output {out}: {out / 'leakage.csv'} is data.validation of this run, and check would replace it "
                             "with its own leakage.csv; choose another folder\n")
    assert folder_state(out) == before


@pytest.mark.parametrize("name, make, what", [
    ("summary.json", lambda p: p.write_text('{"notes": "mine"}'), "was not written by check (not its summary)"),
    ("lengths.csv", lambda p: p.write_text("id,value\n1,2\n"), "was not written by check (its first line is 'id,value')"),
    ("conflicts.csv", lambda p: p.mkdir(), "is a folder"),
])
def test_output_replaces_only_its_own_tables(clean, tmp_path, name, make, what):
    config, out = clean[0], tmp_path / "findings"
    args = ["check", str(config), "--label-issues", "0", "--output", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    again = runner.invoke(app, args)  # an earlier check's tables are replaced; another file is left alone
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == len(check_mod.TABLES) + 2
    (out / name).unlink()
    make(out / name)
    before = folder_state(out)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: --output {out}: {out / name} {what}, and check replaces only the tables it wrote; "
                             "move it, or choose another folder\n")
    assert folder_state(out) == before


RARE = [(f"good text number {i}", "pos") for i in range(20)] + [(f"bad text number {i}", "neg") for i in range(20)] + [("a rare one", "rare")]


def test_a_class_held_out_whole_keeps_a_train_row(tmp_path):
    """Seed 4 held out the only `rare` row: check crashed dividing by its 0 train rows, and train trained a class without examples."""
    config = make_config(tmp_path, {"train": write_csv(tmp_path / "rare.csv", RARE), "validation": tmp_path / "rare.csv"})
    result = runner.invoke(app, ["check", str(config), "--set", "data.validation=null", "--set", "data.test=null", "--set", "seed=4",
                                 "--label-issues", "0", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["splits"]["train"]["labels"]["rare"] == 1 and s["splits"]["validation"]["labels"]["rare"] == 0
    assert s["splits"]["validation"]["rows"] == 5  # the held-out share stays 10%: 5 of 41
    assert s["imbalance_ratio"] == max(s["splits"]["train"]["labels"].values())  # over the 1 train row of `rare`
    assert check_mod._imbalance({"a": 3, "b": 0}) is None


def test_a_split_that_must_empty_a_class_is_one_line_error(tmp_path):
    rows = [("the first text", "a"), ("the second text", "b"), ("the third text", "c"), ("the fourth text", "d")]
    config = make_config(tmp_path, {"train": write_csv(tmp_path / "four.csv", rows), "validation": tmp_path / "four.csv"})
    result = runner.invoke(app, ["check", str(config), "--set", "data.validation=null", "--set", "data.test=null"])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("Error: train: 4 rows are too few to hold out data.validation_split=0.1 and keep a train row of every class; "
                             "add rows or give data.validation\n")


@pytest.mark.parametrize("overrides, message", [
    (["training.class_weights={nope: 3}"], "training.class_weights: no label 'nope' in train (labels: negative, positive)"),
    (["data.max_length=513", "model.name=MODEL"], "data.max_length=513 is above what MODEL supports (512 tokens); set data.max_length <= 512"),
])
def test_check_refuses_what_train_refuses_with_the_same_message(clean, tmp_path, overrides, message):
    model = tmp_path / "model"  # a local model folder: only its config.json is read before the refusal
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}), encoding="utf-8")
    sets = [arg for override in [*overrides, f"output_dir={tmp_path / 'run'}"] for arg in ("--set", override.replace("MODEL", str(model)))]
    for command in ("check", "train"):
        result = runner.invoke(app, [command, str(clean[0]), *sets, "--label-issues", "0"] if command == "check" else [command, str(clean[0]), *sets])
        assert result.exit_code == 2, result.output
        assert result.stderr == f"Error: {message.replace('MODEL', str(model))}\n"
    assert not (tmp_path / "run").exists()


def test_class_weights_name_integer_labels_as_the_data_reads_them(tmp_path):
    from bertcls.loss import class_weights

    rng, taken = random.Random(9), set()
    rows = [(text, int(label == "positive")) for text, label in unique_rows(40, rng, taken)]  # labels 0 and 1
    config = make_config(tmp_path, {"train": write_csv(tmp_path / "train.csv", rows), "validation": write_csv(tmp_path / "v.csv", rows[:10])})
    ok = runner.invoke(app, ["check", str(config), "--set", "training.class_weights={1.0: 2}", "--label-issues", "0", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["labels"] == ["0", "1"]
    assert class_weights({"1.0": 2.0}, ["0", "1"], [0, 1]) == [1.0, 2.0]  # the weight train puts on label 1
    twice = runner.invoke(app, ["check", str(config), "--set", "training.class_weights={1: 2, '1.0': 3}", "--label-issues", "0"])
    assert twice.exit_code == 2, twice.output
    assert twice.stderr == "Error: training.class_weights: '1' and '1.0' name the same label '1'; keep one\n"


def test_with_validation_split_every_row_number_is_the_train_files(tmp_path):
    # validation held out of train: both keep their rows' numbers in the train file, where the user looks them up
    config = config_for(tmp_path, planted_data())
    report = check_mod.check(load_config(config, ["data.validation=null", "data.validation_split=0.3"]), label_issues=10)
    with open(tmp_path / "train.csv", encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    looked_up = 0
    for table in ("near_empty", "duplicates", "conflicts", "leakage", "label_issues"):
        for row in report.tables[table]:
            assert texts[row["row"] - 1] == row["text"], (table, row)
            for number in str(row.get("train_rows", "")).split():
                assert check_mod.normalise(texts[int(number) - 1]) == check_mod.normalise(row["text"]), (table, row)
            looked_up += 1
    assert looked_up > 20 and {row["split"] for row in report.tables["leakage"]} == {"validation"}
