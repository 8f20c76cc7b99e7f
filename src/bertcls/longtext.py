"""Long texts: texts and the run's `data.long_text` in, the rows of token ids a model reads of them out; and the
logits of a text's windows back into one row per text.

    truncate        the first max_length tokens: the tokenizer's own truncation (`data.encode`, the predictors)
    head_tail       the first HEAD_SHARE of the tokens that fit (special tokens aside) and the rest from the text's
                    end: the opening and the conclusion (Sun et al. 2019, "How to Fine-Tune BERT for Text
                    Classification", found 128 + 382 of 512 tokens best on long reviews)
    sliding_window  windows of max_length tokens (special tokens included), each sharing `stride` tokens with the
                    one before, at most MAX_WINDOWS per text; training takes each window as an example with its
                    text's label, evaluation and prediction pool a text's window logits (mean or max) into one row

Both long modes run on a `tokenizers.Tokenizer` (a transformers fast tokenizer's backend, or tokenizer.json read
alone), so training, the transformers predictor, the traced graph and ONNX read a text alike. Texts are tokenised
without special tokens and untruncated, then cut into rows and wrapped in the special tokens. As for truncate
(`model.CHARS_PER_TOKEN`), a huge text is first cut to the characters that can hold what is read (the cut word's
tokens dropped); a cut that leaves too few tokens is tokenised again whole. What is read never depends on the cut.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bertcls.errors import DataError, ModelError
from bertcls.model import CHARS_PER_TOKEN

if TYPE_CHECKING:  # pydantic stays off the predict path
    from bertcls.config import DataConfig

MODES = ("truncate", "head_tail", "sliding_window")
HEAD_SHARE = 0.25  # head_tail: a quarter of the tokens that fit from the start, three quarters from the end
# sliding_window reads at most this many windows of a text (64 x 512 tokens: a book chapter); a text that needs
# more is read as far as they reach, and counted (`Reading.beyond`).
MAX_WINDOWS = 64
# How each mode reads a text longer than max_length, for reports (`bertcls check`).
READS = {"truncate": "are cut to max_length tokens, their ends left out",
         "head_tail": "are read by head and tail: a quarter of max_length from the start, the rest from the end, the middle left out",
         "sliding_window": f"are read whole, in windows of max_length tokens (at most {MAX_WINDOWS} a text)"}
# Where a saved model keeps how it reads long texts (in config.json, beside id2label), so that its folder alone
# (traced, exported, copied) reads them as the run did: {long_text, max_length, stride, window_pooling}.
LONG_TEXT_KEY = "bertcls_long_text"


@dataclass(frozen=True)
class LongText:
    """How a text longer than max_length is read: `mode` (one of MODES), the windows' overlap in tokens, and how
    window logits are pooled."""

    mode: str = "truncate"
    stride: int = 0
    pooling: str = "mean"

    @classmethod
    def of(cls, data: DataConfig) -> LongText:
        """The setting of a run's data config (a stride left null is a quarter of max_length)."""
        stride = data.stride if data.stride is not None else data.max_length // 4
        return cls(data.long_text, stride if data.long_text == "sliding_window" else 0, data.window_pooling)

    @classmethod
    def saved(cls, values: Mapping[str, Any] | None, where: str) -> LongText:
        """The setting a model's config.json holds under LONG_TEXT_KEY; truncate for a model saved without one."""
        if not values:
            return cls()
        try:
            setting = cls(str(values["long_text"]), int(values.get("stride", 0)), str(values.get("window_pooling", "mean")))
        except (KeyError, TypeError, ValueError):
            setting = cls("?")
        if setting.mode not in MODES or setting.pooling not in ("mean", "max") or setting.stride < 0:
            raise ModelError(f"{where}: its {LONG_TEXT_KEY} ({values!r}) is not one this bertcls reads; train it again")
        return setting

    def to_saved(self, max_length: int) -> dict[str, Any]:
        """What LONG_TEXT_KEY holds for this setting (a model saved without one truncates)."""
        return {"long_text": self.mode, "max_length": max_length, "stride": self.stride, "window_pooling": self.pooling}

    def check_pairs(self, pairs: Sequence[str] | None) -> None:
        if pairs is not None and self.pairs_problem():
            raise DataError(f"{self.pairs_problem()}; give it texts without pairs")

    def pairs_problem(self) -> str | None:
        """Why a model reading long texts so takes no pairs (head_tail and sliding_window read single texts), or None."""
        if self.mode == "truncate":
            return None
        return f"this model reads long texts with {self.mode} (its data.long_text), which takes single texts"

    def describe(self) -> str:
        """The setting in a few words, for log and --verbose lines."""
        if self.mode == "sliding_window":
            return f"sliding_window: overlap {self.stride} tokens, {self.pooling} of window logits"
        return self.mode


# ---------------------------------------------------------------------------- reading texts

@dataclass
class Reading:
    """How each text was read: whether it is longer than max_length; and for sliding_window the text each row
    (window) comes from, in text order, and whether it needed more than MAX_WINDOWS windows."""

    over: list[bool]
    text_of: np.ndarray | None = None
    beyond: list[bool] | None = None
    pooling: str = "mean"

    @property
    def windowed(self) -> bool:
        return self.text_of is not None and len(self.text_of) > 0  # no texts: nothing to pool

    def windows(self) -> np.ndarray:
        """Rows read per text (1 unless windowed)."""
        if self.text_of is None:
            return np.ones(len(self.over), dtype=np.int64)
        return np.bincount(self.text_of, minlength=len(self.over))

    def _starts(self) -> np.ndarray:
        text_of = self.text_of
        return np.flatnonzero(np.r_[True, text_of[1:] != text_of[:-1]])

    def pool(self, logits: np.ndarray) -> np.ndarray:
        """One row per text: the mean (or max) of its windows' rows. Rows not windowed come back as they are."""
        if not self.windowed:
            return logits
        starts = self._starts()
        if self.pooling == "max":
            return np.maximum.reduceat(logits, starts, axis=0)
        sums = np.add.reduceat(logits, starts, axis=0)
        return (sums / self.windows()[:, None]).astype(logits.dtype, copy=False)

    def per_text(self, rows: np.ndarray) -> np.ndarray:
        """Each text's first row: the label of a text whose windows all carry it."""
        return rows[self._starts()] if self.windowed else rows

    def counts(self) -> dict[str, int]:
        """Texts over max_length, and for sliding_window the windows read and the texts read only in part."""
        counted = {"texts": len(self.over), "over_max_length": int(sum(self.over))}
        if self.text_of is not None:
            counted.update({"windows": len(self.text_of), "beyond_max_windows": int(sum(self.beyond or ()))})
        return counted


@dataclass
class Rows:
    """What a model reads of some texts: rows of token ids and segment ids (special tokens included), and how."""

    input_ids: list[list[int]]
    type_ids: list[list[int]]
    reading: Reading


@dataclass(frozen=True)
class Template:
    """The special tokens a tokenizer puts around one text, and their segment ids."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    type_id: int

    @classmethod
    def of(cls, tokenizer) -> Template:
        """Read from the tokenizer's own post-processing of a probe text: the special tokens before and after it."""
        probe = tokenizer.encode("a", add_special_tokens=True)
        mask = probe.special_tokens_mask
        content = [i for i, special in enumerate(mask) if not special]
        if not content or content != list(range(content[0], content[-1] + 1)):
            raise ModelError("the tokenizer puts special tokens inside a text, so its long texts cannot be cut; use data.long_text: truncate")
        first, last = content[0], content[-1] + 1
        ids, types = probe.ids, probe.type_ids
        return cls(tuple(ids[:first]), tuple(ids[last:]), tuple(types[:first]), tuple(types[last:]), types[first])

    def room(self, max_length: int) -> int:
        """Tokens of text that fit in max_length beside the special tokens."""
        room = max_length - len(self.prefix) - len(self.suffix)
        if room < 1:
            raise ModelError(f"data.max_length={max_length} leaves no room for text beside the tokenizer's "
                             f"{len(self.prefix) + len(self.suffix)} special tokens")
        return room

    def wrap(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        return [*self.prefix, *ids, *self.suffix], [*self.prefix_types, *[self.type_id] * len(ids), *self.suffix_types]


def read(tokenizer, texts: Sequence[str], max_length: int, setting: LongText) -> Rows:
    """The rows a model reads of `texts` under `setting` (head_tail or sliding_window), from a `tokenizers.Tokenizer`."""
    with _uncut(tokenizer):
        template = Template.of(tokenizer)
        room = template.room(max_length)
        if setting.mode == "head_tail":
            contents, over = _head_tail(tokenizer, texts, room, max_length)
            reading = Reading(over)
        elif setting.mode == "sliding_window":
            step = room - setting.stride
            if step < 1:
                raise DataError(f"data.stride={setting.stride} leaves windows no room to move: a window holds {room} tokens "
                                f"besides the special tokens; set data.stride below {room}")
            contents, text_of, over, beyond = _windows(tokenizer, texts, room, step, max_length)
            reading = Reading(over, np.asarray(text_of, dtype=np.int64), beyond, setting.pooling)
        else:
            raise ValueError(f"read() is for head_tail and sliding_window, not {setting.mode}")
    wrapped = [template.wrap(ids) for ids in contents]
    return Rows([ids for ids, _ in wrapped], [types for _, types in wrapped], reading)


@contextmanager
def _uncut(tokenizer) -> Iterator[None]:
    """The tokenizer without truncation or padding for a while (a transformers call, or tokenizer.json, may have set them)."""
    truncation, padding = tokenizer.truncation, tokenizer.padding
    tokenizer.no_truncation()
    tokenizer.no_padding()
    try:
        yield
    finally:
        if truncation:
            tokenizer.enable_truncation(**truncation)
        if padding:
            tokenizer.enable_padding(**padding)


def head_tail(ids: Sequence[int], room: int) -> list[int]:
    """The first HEAD_SHARE of `room` tokens and the rest from the end; all of `ids` when they fit."""
    if len(ids) <= room:
        return list(ids)
    head = int(room * HEAD_SHARE)
    return [*ids[:head], *ids[len(ids) - (room - head):]]


def window_starts(n: int, room: int, step: int) -> list[int]:
    """Where the windows of a text of `n` tokens start: every `step` tokens until one reaches the end (one window for
    a text that fits, an empty one included). Each window holds `room` tokens; the last may hold fewer, but always
    more than the overlap (room - step), so it reads at least one token the one before did not."""
    return list(range(0, max(n - room + step, 1), step))


def _head_tail(tokenizer, texts: Sequence[str], room: int, max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Each text's head_tail tokens, and whether it is longer than `room`. A text over twice the cut's characters
    is tokenised as its first and its last cut (the cut words' tokens dropped), when each holds enough tokens."""
    bound = max_length * CHARS_PER_TOKEN
    head = int(room * HEAD_SHARE)
    tail = room - head
    cut = [i for i, text in enumerate(texts) if len(text) > 2 * bound]
    firsts = _cut_ids(tokenizer, [texts[i][:bound] for i in cut], cut_at_end=True)
    lasts = _cut_ids(tokenizer, [texts[i][-bound:] for i in cut], cut_at_end=False)
    kept = {i: first[:head] + last[len(last) - tail:] for i, first, last in zip(cut, firsts, lasts, strict=True)
            if len(first) >= head and len(last) >= tail}
    contents: list[list[int]] = [kept.get(i, []) for i in range(len(texts))]
    over = [True] * len(texts)  # a text read from its cuts has more tokens than room: the middle between them
    whole = [i for i in range(len(texts)) if i not in kept]
    for i, ids in zip(whole, _ids(tokenizer, [texts[i] for i in whole]), strict=True):
        contents[i], over[i] = head_tail(ids, room), len(ids) > room
    return contents, over


def _windows(tokenizer, texts: Sequence[str], room: int, step: int, max_length: int):
    """(window token ids, the text of each, per text: over `room` tokens, needed more than MAX_WINDOWS windows).
    A text over the characters MAX_WINDOWS windows can hold is tokenised as its first that many characters
    (the cut word's tokens dropped), when they hold more tokens than the windows read."""
    needed = room + (MAX_WINDOWS - 1) * step  # the tokens MAX_WINDOWS windows hold
    bound = MAX_WINDOWS * max_length * CHARS_PER_TOKEN
    cut = [i for i, text in enumerate(texts) if len(text) > bound]
    # one token past the windows is kept: enough to know the text is read only in part
    kept = {i: first[:needed + 1] for i, first in zip(cut, _cut_ids(tokenizer, [texts[i][:bound] for i in cut], cut_at_end=True),
                                                        strict=True) if len(first) > needed}
    ids: list[list[int]] = [kept.get(i, []) for i in range(len(texts))]
    whole = [i for i in range(len(texts)) if i not in kept]
    for i, found in zip(whole, _ids(tokenizer, [texts[i] for i in whole]), strict=True):
        ids[i] = found
    windows, text_of, over, beyond = [], [], [], []
    for i, found in enumerate(ids):
        starts = window_starts(len(found), room, step)
        over.append(len(found) > room)
        beyond.append(len(starts) > MAX_WINDOWS)
        for start in starts[:MAX_WINDOWS]:
            windows.append(found[start:start + room])
            text_of.append(i)
    return windows, text_of, over, beyond


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of whole texts, without special tokens."""
    return [encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False)] if texts else []


def _cut_ids(tokenizer, pieces: list[str], cut_at_end: bool) -> list[list[int]]:
    """Token ids of pieces cut from texts, without the tokens of the word at the cut (it may be split there, and
    tokenise otherwise than whole); [] for a piece whose words the tokenizer does not tell."""
    out = []
    for encoding in tokenizer.encode_batch(pieces, add_special_tokens=False) if pieces else []:
        words = encoding.word_ids
        cut_word = (words[-1] if cut_at_end else words[0]) if words else None
        out.append([] if cut_word is None else [token for token, word in zip(encoding.ids, words, strict=True) if word != cut_word])
    return out


# ---------------------------------------------------------------------------- what was read, in words

def summary(setting: LongText, max_length: int, readings: Mapping[str, Reading]) -> dict[str, Any]:
    """What metrics.json keeps under "data": the setting, and per split the texts over max_length (and windows read)."""
    out: dict[str, Any] = {"long_text": setting.mode, "max_length": max_length}
    if setting.mode == "sliding_window":
        out.update({"stride": setting.stride, "window_pooling": setting.pooling})
    counts = {name: reading.counts() for name, reading in readings.items()}
    for key in ("texts", "over_max_length", "windows", "beyond_max_windows"):
        if all(key in c for c in counts.values()):
            out[key] = {name: c[key] for name, c in counts.items()}
    return out


def header_line(summary: Mapping[str, Any]) -> str:
    """The training log's line on long texts: per split, how many are over max_length, and how they are read."""
    over = ", ".join(f"{name} {n:,}/{summary['texts'][name]:,}" for name, n in summary["over_max_length"].items())
    setting = LongText(summary["long_text"], summary.get("stride", 0), summary.get("window_pooling", "mean"))
    line = f"texts over max_length {summary['max_length']}: {over} | long_text {setting.describe()}"
    if "windows" in summary:
        line += " | windows: " + ", ".join(f"{name} {n:,}" for name, n in summary["windows"].items())
        beyond = sum(summary["beyond_max_windows"].values())
        line += f" | {beyond:,} text(s) over {MAX_WINDOWS} windows, read only that far" if beyond else ""
    return line


def verbose_note(setting: LongText, max_length: int, over: Sequence[bool], windows: Sequence[int], beyond: Sequence[bool]) -> str | None:
    """`predict --verbose`'s line on long texts under head_tail or sliding_window; None under truncate (which notes each)."""
    if setting.mode == "truncate":
        return None
    n_over = sum(over)
    line = f"note: {n_over} of {len(over)} text(s) over max_length {max_length} tokens"
    if setting.mode == "head_tail":
        return f"{line}, each read as its first quarter and last three quarters of the tokens that fit (long_text: head_tail)"
    line += f", read in {sum(windows)} window(s) for {len(over)} text(s) ({setting.describe()})"
    n_beyond = sum(beyond)
    return line + (f"; {n_beyond} needed more than {MAX_WINDOWS} windows and were read only that far" if n_beyond else "")
