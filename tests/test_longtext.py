"""data.long_text: truncate, head_tail and sliding_window read a long text as promised, alike in training and in every
engine; windows' logits are pooled back so metrics count texts; the run's setting travels with its model."""

import math
import random
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bertcls import longtext
from bertcls.config import DataConfig, validate_config
from bertcls.data import LabelMap, Split, encode, loader, sorted_batches
from bertcls.errors import ConfigError, ModelError
from bertcls.inference import loss_of, predict_logits
from bertcls.longtext import MAX_WINDOWS, LongText, Reading, head_tail, window_starts
from bertcls.model import build_tiny_tokenizer

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
def test_cutting_huge_texts_first_never_changes_what_is_read(tokenizer, monkeypatch, setting):
    # Words the vocabulary lacks are many tokens each, so a cut lands inside one; mixed with whole-token words.
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS + ["unbelievable", "xylophones", "qu", "z"]) for _ in range(n)) for n in (3, 40, 400, 3000)]
    monkeypatch.setattr(longtext, "MAX_WINDOWS", 4)
    monkeypatch.setattr(longtext, "CHARS_PER_TOKEN", 10**9)  # never cut: every text tokenised whole
    whole = longtext.read(tokenizer.backend_tokenizer, texts, 32, setting)
    monkeypatch.setattr(longtext, "CHARS_PER_TOKEN", 4)  # cut at 128 characters (x 2 for head_tail, x 4 windows)
    tokenised_whole = []
    monkeypatch.setattr(longtext, "_ids", lambda tok, some: tokenised_whole.extend(some) or [e.ids for e in tok.encode_batch(some, add_special_tokens=False)])
    cut = longtext.read(tokenizer.backend_tokenizer, texts, 32, setting)
    assert tokenised_whole == texts[:2]  # the two long ones were read from their cuts
    assert cut.input_ids == whole.input_ids and cut.type_ids == whole.type_ids
    assert cut.reading.over == whole.reading.over == [False, True, True, True]
    assert cut.reading.beyond == whole.reading.beyond


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
