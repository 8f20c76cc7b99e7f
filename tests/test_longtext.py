"""data.long_text: truncate, head_tail and sliding_window read a long text as promised, alike in training and in every
engine; windows' logits are pooled back so metrics count texts; the run's setting travels with its model."""

import json
import math
import os
import random
import subprocess
import sys
import time
from functools import cache
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bertcls import longtext, runs
from bertcls.cli import app
from bertcls.config import DataConfig, validate_config
from bertcls.data import LabelMap, Split, encode, loader, sorted_batches
from bertcls.errors import ConfigError, DataError, ModelError
from bertcls.inference import loss_of, predict_logits
from bertcls.longtext import MAX_WINDOWS, LongText, Reading, head_tail, window_starts
from bertcls.model import build_tiny_tokenizer
from conftest import FILLER, assert_one_line_error, make_config, write_csv
from tiny_models import ARCHITECTURES, TOKENIZERS

runner = CliRunner()


# ---------------------------------------------------------------------------- the arithmetic

@pytest.mark.parametrize("n,room,step", [(0, 30, 22), (1, 30, 22), (30, 30, 22), (31, 30, 22), (52, 30, 22), (53, 30, 22),
                                         (200, 30, 22), (7, 6, 1), (100, 14, 10)])
def test_windows_cover_every_token_and_overlap_by_the_stride(n, room, step):
    starts = window_starts(n, room, step)
    assert starts[0] == 0 and len(starts) == (1 if n <= room else 1 + math.ceil((n - room) / step))
    windows = [range(s, min(s + room, n)) for s in starts]
    assert sorted(set().union(*windows)) == list(range(n))  # every token is read
    for before, after in pairwise(windows):
        assert len(set(before) & set(after)) == room - step  # consecutive windows share exactly the stride
    assert len(windows[-1]) > room - step or len(starts) == 1  # the last one reads a token the one before did not


@pytest.mark.parametrize("n,room,kept", [(10, 30, list(range(10))), (30, 30, list(range(30))),
                                         (100, 30, [*range(7), *range(77, 100)]), (40, 8, [*range(2), *range(34, 40)])])
def test_head_tail_keeps_a_quarter_from_the_start_and_the_rest_from_the_end(n, room, kept):
    assert head_tail(list(range(n)), room) == kept


@pytest.mark.parametrize("pooling,expected", [("mean", [[2.0, 0.0], [5.0, -5.0], [0.0, 1.0]]), ("max", [[3.0, 1.0], [5.0, -5.0], [0.0, 1.0]])])
def test_windows_pool_into_one_row_per_text(pooling, expected):
    reading = Reading([True, False, False], np.array([0, 0, 1, 2]), [False] * 3, pooling)
    logits = np.array([[1.0, 1.0], [3.0, -1.0], [5.0, -5.0], [0.0, 1.0]], dtype=np.float32)
    pooled = reading.pool(logits)
    assert pooled.dtype == np.float32 and pooled.tolist() == expected
    assert reading.per_text(np.array([1, 1, 0, 1])).tolist() == [1, 0, 1]
    assert reading.windows().tolist() == [2, 1, 1]


# ---------------------------------------------------------------------------- reading texts

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "zeta"]


@pytest.fixture(scope="module")
def tokenizer():
    # Its vocabulary knows WORDS, so each is one token; any other word is split into its letters (u ##n ##b ...).
    return build_tiny_tokenizer([" ".join(WORDS), "abcdefghijklmnopqrstuvwxyz"], model_max_length=512)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_head_tail_reads_the_first_and_last_tokens_between_the_special_tokens(tokenizer):
    long = " ".join(WORDS[i % 6] for i in range(100))
    rows = longtext.read(tokenizer.backend_tokenizer, [long, "alpha beta", ""], 32, LongText("head_tail"))
    whole = _ids(tokenizer, long)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert rows.input_ids == [[cls, *whole[:7], *whole[-23:], sep], tokenizer("alpha beta")["input_ids"], [cls, sep]]
    assert rows.type_ids == [[0] * 32, [0] * 4, [0, 0]]
    assert rows.reading.over == [True, False, False] and not rows.reading.windowed


def test_sliding_window_reads_the_whole_text_in_overlapping_windows(tokenizer):
    long = " ".join(WORDS[i % 6] for i in range(75))  # 75 tokens: windows of 30 at 0, 22, 44 and 66
    rows = longtext.read(tokenizer.backend_tokenizer, ["beta", long], 32, LongText("sliding_window", stride=8))
    whole = _ids(tokenizer, long)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert rows.input_ids == [[cls, _ids(tokenizer, "beta")[0], sep], *([cls, *whole[s:s + 30], sep] for s in (0, 22, 44, 66))]
    assert rows.reading.text_of.tolist() == [0, 1, 1, 1, 1]
    assert rows.reading.over == [False, True] and rows.reading.beyond == [False, False]


def test_a_text_past_max_windows_is_read_that_far_and_counted(tokenizer, monkeypatch):
    monkeypatch.setattr(longtext, "MAX_WINDOWS", 3)
    texts = [" ".join(["alpha"] * 74), " ".join(["alpha"] * 75)]  # 3 windows of 30 tokens, step 22, hold 74 tokens
    reading = longtext.read(tokenizer.backend_tokenizer, texts, 32, LongText("sliding_window", stride=8)).reading
    assert reading.windows().tolist() == [3, 3] and reading.beyond == [False, True]


@pytest.mark.parametrize("setting", [LongText("head_tail"), LongText("sliding_window", stride=8)])
@pytest.mark.parametrize("architecture", ["tiny", *ARCHITECTURES])
def test_cutting_huge_texts_first_never_changes_what_is_read(tokenizer, monkeypatch, setting, architecture):
    # Words the vocabulary lacks are many tokens each, so a cut lands inside one; mixed with whole-token words.
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS + ["unbelievable", "xylophones", "qu", "z"]) for _ in range(n)) for n in (3, 40, 400, 3000)]
    tokenizer = tokenizer if architecture == "tiny" else _family(architecture)
    monkeypatch.setattr(longtext, "MAX_WINDOWS", 4)
    monkeypatch.setattr(longtext, "CHARS_PER_TOKEN", 10**9)  # never cut: every text tokenised whole
    whole = longtext.read(tokenizer.backend_tokenizer, texts, 32, setting)
    monkeypatch.setattr(longtext, "CHARS_PER_TOKEN", 4)  # cut at 128 characters (x 2 for head_tail, x 4 windows)
    tokenised_whole = []
    monkeypatch.setattr(longtext, "_ids", lambda tok, some: tokenised_whole.extend(some) or [e.ids for e in tok.encode_batch(some, add_special_tokens=False)])
    cut = longtext.read(tokenizer.backend_tokenizer, texts, 32, setting)
    assert tokenised_whole == texts[:2]  # the two long ones were read from their cuts
    assert cut.input_ids == whole.input_ids and cut.type_ids == whole.type_ids
    assert cut.reading.over == whole.reading.over and whole.reading.over[2:] == [True, True]
    assert cut.reading.beyond == whole.reading.beyond


@cache
def _family(architecture: str):
    """The kind of tokenizer `architecture`'s checkpoints ship (tests/tiny_models.py), trained on a few texts."""
    texts = ["the film was great and the cast superb", "dreadful acting, boring plot", " ".join(WORDS), "the quick brown fox jumps over the lazy dog"]
    return TOKENIZERS[architecture](texts * 20)  # the pangram: every letter known, so no word is one unknown token


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_tokenizer_family_reads_a_fitting_text_as_it_tokenises_it_and_a_long_one_by_its_ends(architecture):
    tokenizer = _family(architecture)
    fits, long = "the cast was great", " ".join(f"film {i} was great" for i in range(60))
    read = longtext.read(tokenizer.backend_tokenizer, [fits, long], 32, LongText("head_tail"))
    own = tokenizer([fits, long], truncation=True, max_length=32)  # the special tokens (and segment ids) it adds
    assert read.input_ids[0] == own["input_ids"][0] and read.reading.over == [False, True]
    whole, cut = _ids(tokenizer, long), own["input_ids"][1]
    room = len(cut) - (len(own["input_ids"][0]) - len(_ids(tokenizer, fits)))
    head = room // 4
    specials_before = cut.index(whole[0])
    assert read.input_ids[1] == [*cut[:specials_before], *whole[:head], *whole[len(whole) - (room - head):], *cut[specials_before + room:]]
    if "token_type_ids" in own:
        assert read.type_ids[0] == own["token_type_ids"][0] and read.type_ids[1] == own["token_type_ids"][1]


def test_truncate_counts_exactly_the_texts_longer_than_max_length(tokenizer):
    texts = [" ".join(["alpha"] * n) for n in (29, 30, 31, 5000)]  # 30 tokens + [CLS] [SEP] fill max_length 32 exactly
    encoded = encode(Split("train", texts, None, ["a", "b", "a", "b"]), tokenizer, 32, LabelMap(("a", "b")))
    assert encoded.reading.over == [False, False, True, True] and encoded.lengths == [31, 32, 32, 32]
    pair_texts = [" ".join(["alpha"] * 28)] * 2  # with "beta": 28 + 1 + [CLS] [SEP] [SEP] fill max_length exactly
    pairs = encode(Split("train", pair_texts, ["beta", "beta beta"], None), tokenizer, 32)
    assert pairs.reading.over == [False, True]


@pytest.mark.parametrize("labels,given,gold", [
    (LabelMap(("a", "b")), ["b", "a", "b"], [1, 0, 1]),
    (LabelMap(("a", "b"), multi_label=True), [["b"], ["a"], ["a", "b"]], [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
])
def test_windows_carry_their_texts_labels_and_evaluation_pools_them_per_text(tokenizer, labels, given, gold):
    class TokenSums(torch.nn.Module):  # logits: (sum of the window's token ids, minus it)
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            total = (input_ids * attention_mask).sum(1, keepdim=True).float()
            return SimpleNamespace(logits=torch.cat([total, -total], 1))

    texts = [" ".join(["beta"] * 75), "alpha", " ".join(["gamma"] * 40)]
    encoded = encode(Split("validation", texts, None, given), tokenizer, 32, labels, LongText("sliding_window", stride=8, pooling="mean"))
    assert encoded.reading.text_of.tolist() == [0, 0, 0, 0, 1, 2, 2] and encoded.labels == [gold[i] for i in (0, 0, 0, 0, 1, 2, 2)]
    batches = loader(encoded, 0, sorted_batches(encoded.lengths, 2))  # batches out of order: rows come back by index
    logits, per_text, loss = predict_logits(TokenSums(), batches, reading=encoded.reading)
    sums = [float(sum(ids)) for ids in encoded.input_ids]
    expected = [np.mean(sums[:4]), sums[4], np.mean(sums[5:])]
    assert logits[:, 0].tolist() == pytest.approx(expected) and per_text.tolist() == gold
    assert loss == pytest.approx(loss_of(logits, per_text))  # the loss of the texts' pooled logits, not of the windows


# ---------------------------------------------------------------------------- the config

@pytest.mark.parametrize("data,message", [
    ({"long_text": "sliding_window", "max_length": 32, "stride": 17},
     "data.stride=17 must be at most half of data.max_length=32 (16): it is the overlap of consecutive windows, in tokens"),
    ({"long_text": "head_tail", "text_pair_column": "b"},
     "data.long_text: head_tail reads single texts; with data.text_pair_column set, use long_text: truncate"),
    ({"long_text": "sliding_window", "text_pair_column": "b"},
     "data.long_text: sliding_window reads single texts; with data.text_pair_column set, use long_text: truncate"),
    ({"stride": 8}, "data.stride only applies with data.long_text: sliding_window (it is truncate)"),
    ({"long_text": "head_tail", "window_pooling": "max"}, "data.window_pooling only applies with data.long_text: sliding_window (it is head_tail)"),
    ({"long_text": "windows"}, "data.long_text: input should be 'truncate', 'head_tail' or 'sliding_window'"),
])
def test_config_refuses_long_text_settings_that_cannot_work(data, message):
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": {"train": "t.csv", **data}})
    assert message in str(caught.value)


def test_stride_defaults_to_a_quarter_of_max_length_and_is_documented():
    assert LongText.of(DataConfig(train="t.csv", long_text="sliding_window", max_length=128)) == LongText("sliding_window", 32, "mean")
    assert LongText.of(DataConfig(train="t.csv", max_length=128)) == LongText()
    assert f"at most {MAX_WINDOWS} per text" in DataConfig.model_fields["long_text"].description


@pytest.mark.parametrize("saved", [{"long_text": "middle"}, {"long_text": "sliding_window", "stride": "x"}, {"stride": 8}])
def test_a_model_with_a_long_text_setting_it_cannot_read_is_refused(saved):
    with pytest.raises(ModelError, match="bertcls_long_text"):
        LongText.saved(saved, "config.json")


# ---------------------------------------------------------------------------- trained end to end

CUES = {"positive": "great", "negative": "awful"}


def cue_at_the_end(n: int, seed: int) -> list[tuple[str, str]]:
    """40-50 filler words, then the label's cue word twelve times: truncation at 32 tokens never sees it. (With fewer
    cues the tiny model, trained from scratch, sometimes stays at a constant answer for the 30 steps it gets.)"""
    rng = random.Random(seed)
    labels = ["positive", "negative"] * (n // 2)
    return [(" ".join([rng.choice(FILLER) for _ in range(rng.randint(40, 50))] + [CUES[label]] * 12), label) for label in labels]


# Unseen texts like the training ones: a positive one of 59 words and a negative one of 56, 3 windows each
PROBES = cue_at_the_end(2, 9)


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory):
    """The same long texts trained three ways (tiny model, 3 epochs of 80 texts): the run folder and what train printed."""
    folder = tmp_path_factory.mktemp("long")
    data = {"train": write_csv(folder / "train.csv", cue_at_the_end(80, 0)),
            "validation": write_csv(folder / "validation.csv", cue_at_the_end(40, 1))}
    trained = {}
    for mode in ("truncate", "head_tail", "sliding_window"):
        (folder / mode).mkdir()
        config = make_config(folder / mode, data, training={"batch_size": 8, "learning_rate": 5e-3, "loss_curve": False,
                                                            "save_torchscript": mode == "sliding_window", "keep_checkpoints_at_end": False})
        result = runner.invoke(app, ["train", str(config), "--set", f"data.long_text={mode}", "--set", "data.test=null"])
        assert result.exit_code == 0, result.output
        trained[mode] = (folder / mode / "run", result.output)
    return trained


def test_only_the_modes_that_read_the_end_learn_a_label_written_at_the_end(long_runs):
    accuracy = {mode: json.loads((run / runs.METRICS_FILE).read_text())["validation"]["accuracy"] for mode, (run, _) in long_runs.items()}
    assert accuracy["truncate"] <= 0.7 and accuracy["head_tail"] >= 0.95 and accuracy["sliding_window"] >= 0.95, accuracy


def test_the_log_and_metrics_count_texts_over_max_length_and_windows(long_runs):
    words = {name: [len(text.split()) for text, _ in cue_at_the_end(n, seed)] for name, n, seed in (("train", 80, 0), ("validation", 40, 1))}
    windows = {name: sum(1 + math.ceil(max(0, n - 30) / 22) for n in lengths) for name, lengths in words.items()}  # a word is a token
    for mode, (run, output) in long_runs.items():
        data = json.loads((run / runs.METRICS_FILE).read_text())["data"]
        expected = {"long_text": mode, "max_length": 32, "texts": {"train": 80, "validation": 40}, "over_max_length": {"train": 80, "validation": 40}}
        if mode == "sliding_window":
            expected.update({"stride": 8, "window_pooling": "mean", "windows": windows, "beyond_max_windows": {"train": 0, "validation": 0}})
        assert data == expected
        assert json.loads((run / "model" / "config.json").read_text()).get("bertcls_long_text") == (
            None if mode == "truncate" else {"long_text": mode, "max_length": 32, "stride": 8 if mode == "sliding_window" else 0, "window_pooling": "mean"})
        assert "texts over max_length 32: train 80/80, validation 40/40 | long_text " + mode in output
    assert (f"long_text sliding_window: overlap 8 tokens, mean of window logits | windows: train {windows['train']}, "
            f"validation {windows['validation']}") in long_runs["sliding_window"][1]
    assert "warning: truncation: 100% of train texts (80)" in long_runs["truncate"][1]
    assert "warning: truncation" not in long_runs["head_tail"][1] + long_runs["sliding_window"][1]  # they read the end


def test_a_model_fine_tuned_again_to_truncate_reads_long_texts_so(long_runs, tmp_path):
    # from a head_tail run's model/: its setting came along in config.json, and the new model would have read texts by it
    data = {"train": write_csv(tmp_path / "train.csv", cue_at_the_end(16, 4)), "validation": write_csv(tmp_path / "v.csv", cue_at_the_end(8, 5))}
    config = make_config(tmp_path, data, model={"name": str(long_runs["head_tail"][0] / "model")}, training={"max_steps": 1})
    result = runner.invoke(app, ["train", str(config), "--set", "data.test=null", "-q"])
    assert result.exit_code == 0, result.output
    assert "bertcls_long_text" not in json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    probe = PROBES[0][0]
    verbose = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "-v", probe])
    assert "text truncated to 32 tokens" in verbose.output and "first quarter" not in verbose.output


def test_the_traced_graph_reads_windows_as_transformers_does(long_runs):
    from bertcls.predict import Predictor, load_predictor

    run = long_runs["sliding_window"][0]
    traced, eager = load_predictor(run, device="cpu"), Predictor.load(run, device="cpu", precision="fp32", batch_size=5)
    assert traced.engine == "torchscript" and traced.long_text == eager.long_text == LongText("sliding_window", 8, "mean")
    texts = [text for text, _ in cue_at_the_end(12, 2)] + ["great " * 12, "", "the " * (30 + 22 * MAX_WINDOWS) + "great"]
    assert abs(traced.logits(texts) - eager.logits(texts)).max() < 1e-4
    ours, theirs = traced.predict(texts), eager.predict(texts)
    assert [(p.label, p.truncated, p.windows, p.beyond_windows) for p in ours] == [(p.label, p.truncated, p.windows, p.beyond_windows) for p in theirs]
    assert [p.label for p in ours[:13]] == [label for _, label in cue_at_the_end(12, 2)] + ["positive"]
    assert (ours[-1].windows, ours[-1].beyond_windows, ours[-2].windows) == (MAX_WINDOWS, True, 1)


def test_predict_and_evaluate_use_the_runs_setting(long_runs, tmp_path):
    from bertcls.evaluate import evaluate_file

    run = long_runs["sliding_window"][0]
    (long, _), (other, _) = PROBES
    result = runner.invoke(app, ["predict", "--model", str(run), "-v", long, other, "awful " * 12])
    assert result.exit_code == 0, result.output
    assert ("note: 2 of 3 text(s) over max_length 32 tokens, read in 7 window(s) for 3 text(s) "
            "(sliding_window: overlap 8 tokens, mean of window logits)") in result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["positive", "negative", "negative"]
    head_tail = long_runs["head_tail"][0]
    result = runner.invoke(app, ["predict", "--model", str(head_tail), "-v", long])
    assert "note: 1 of 1 text(s) over max_length 32 tokens, each read as its first quarter and last three quarters" in result.output
    assert result.stdout.startswith("positive\t")
    validation = write_csv(tmp_path / "v.csv", cue_at_the_end(20, 3))
    assert evaluate_file(run, str(validation), device="cpu").metrics["accuracy"] >= 0.95
    assert evaluate_file(head_tail, str(validation), device="cpu").metrics["num_examples"] == 20


def test_pairs_are_refused_by_a_model_that_reads_single_texts(long_runs):
    from bertcls.predict import Predictor

    run = long_runs["head_tail"][0]
    with pytest.raises(DataError, match="reads long texts with head_tail"):
        Predictor.load(run, device="cpu").predict(["a text"], ["a pair"])
    result = runner.invoke(app, ["predict", "--model", str(run), "--pair", "a pair", "a text"])
    assert_one_line_error(result, "this model reads long texts with head_tail (its data.long_text), which takes single texts")


def test_serve_answers_per_text_and_refuses_pairs_for_a_windowed_model(long_runs):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bertcls.predict import load_predictor
    from bertcls.serve import ServeOptions, create_app

    run = long_runs["sliding_window"][0]
    predictor = load_predictor(run, device="cpu")
    with TestClient(create_app(ServeOptions(str(run)), load=lambda: predictor)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answer = client.post("/predict", json={"texts": [text for text, _ in PROBES]})
        assert answer.status_code == 200 and [p["label"] for p in answer.json()["predictions"]] == ["positive", "negative"]
        refused = client.post("/predict", json={"texts": ["a"], "pairs": ["b"]})
        assert refused.status_code == 422
        assert refused.json() == {"detail": "pairs: this model reads long texts with sliding_window (its data.long_text), which takes single texts; drop \"pairs\""}


@pytest.mark.slow  # an ONNX export takes about 10 s of CPU
def test_an_onnx_export_reads_windows_as_the_run_does(long_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from bertcls.export import export_onnx
    from bertcls.predict import OnnxPredictor, Predictor

    run = long_runs["sliding_window"][0]
    checked = export_onnx(run, tmp_path / "onnx")
    assert checked["max_abs_logit_diff"] < 1e-4  # its check texts include one read in windows
    onnx = OnnxPredictor.load(tmp_path / "onnx")
    assert onnx.long_text == LongText("sliding_window", 8, "mean")
    texts = [text for text, _ in cue_at_the_end(12, 2)] + ["the " * 200 + "great " * 12]
    assert abs(onnx.logits(texts) - Predictor.load(run, device="cpu", precision="fp32").logits(texts)).max() < 1e-4


@pytest.mark.slow  # two processes under torchrun: about a minute on two cores
def test_two_processes_pool_windows_as_one_process_does(tmp_path):
    # 22 validation texts are 66 windows, 9 batches of 8 (the last short): one process gets a batch more, Accelerate
    # tops the other up with repeated windows, and each window must count once before its text's are pooled.
    data = {"train": write_csv(tmp_path / "train.csv", cue_at_the_end(40, 0)), "validation": write_csv(tmp_path / "validation.csv", cue_at_the_end(22, 1))}
    config = make_config(tmp_path, data, training={"epochs": 2, "batch_size": 8, "eval_batch_size": 8, "num_threads": 1,
                                                   "save_torchscript": False, "loss_curve": False})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bertcls",
               "train", str(config), "--set", "data.long_text=sliding_window"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / runs.METRICS_FILE).read_text())
    assert metrics["validation"]["num_examples"] == 22 and metrics["data"]["windows"]["validation"] == 66
    result = runner.invoke(app, ["evaluate", str(data["validation"]), "--model", str(tmp_path / "run"), "--batch-size", "8",
                                 "--device", "cpu", "--output", str(tmp_path / "evaluated")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "evaluated" / runs.METRICS_FILE).read_text())
    assert evaluated.pop("scored_with")["engine"] == "pytorch" and evaluated == metrics["validation"]
