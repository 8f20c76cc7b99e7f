"""Check: a Config in, a report on the data it would train on out -- without training.

The splits are read as `train` reads them, except that what training refuses in the data is kept to
be counted (empty texts, validation/test labels that train lacks), and tokenised with the configured
tokenizer (never the model's weights). What `train` refuses in the config before it starts (class
weights for a label train lacks, a max_length above the model's) is refused by its own checks.
`check()` returns a `Report`: a JSON-able summary -- rows and labels per split, token lengths
against data.max_length, near-empty texts, duplicates and label conflicts in train,
validation/test texts that train also holds (leakage), a TF-IDF + logistic-regression baseline and
the rows cleanlab finds most likely mislabelled -- and the full lists behind it, one table per CSV
file. `warnings()` is the cheap part that `bertcls train` prints before it trains.

Texts are compared exactly and normalised (case folded, punctuation and runs of whitespace made one
space; a text of only punctuation or emoji, which that would empty, keeps them); a row with a second text
(text_pair_column) is compared as the pair; blank texts are not compared. Rows are numbered 1, 2, ...
within their split as bertcls reads it (a validation set held out of train: within it).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import warnings as pywarnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from bertcls import atomic, runs
from bertcls.config import Config, DataConfig
from bertcls.data import LabelMap, Split, load_splits
from bertcls.errors import ConfigError, RunError, shown
from bertcls.longtext import READS
from bertcls.loss import check_class_weights
from bertcls.model import pieces

NEAR_EMPTY_CHARS = 3  # a text (or pair text) shorter than this after stripping is near-empty
PERCENTILES = (50, 90, 95, 99)
KEEP_WHOLE = (95, 99)  # report the max_length that keeps this share (%) of train texts whole
HEAVY_TRUNCATION = 0.10  # train warns when more than this share of train texts is cut
EXAMPLES = 3  # examples per finding in the summary; --output has them all
MAX_FOLDS = 5  # out-of-fold probabilities for cleanlab
MIN_DF_ROWS = 1000  # from this many train rows on, a word must occur twice to become a TF-IDF feature
MIN_MAX_LENGTH = 8  # the smallest data.max_length the config takes
# Texts, and characters, per tokenizer call when counting tokens: bounds the memory their encodings take (about
# 135 bytes a token: 10,000 texts of 50,000 characters at once would have taken 11 GB). A longer text is counted
# in pieces (`model.pieces`).
LENGTH_CHUNK = 10_000
LENGTH_CHUNK_CHARS = 4_000_000
NO_CLEANLAB = 'cleanlab is not installed: pip install cleanlab (or pip install -e ".[check]" in the bertcls repository)'
PUNCTUATION = re.compile(r"[^\w\s]|_")
# The baseline's words: what sklearn's default token_pattern finds (2+ word characters), except that each Han, kana or
# Hangul character is a word of its own: Chinese and Japanese have no spaces, so a whole sentence would be one word.
CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff"
WORDS = rf"(?=\w)[{CJK}]|(?<![^\W{CJK}])[^\W{CJK}]{{2,}}(?![^\W{CJK}])"

# The --output files, one per table, and their columns.
TABLES = {
    "lengths": ("split", "row", "tokens", "over_max_length"),
    "near_empty": ("split", "row", "label", "text"),
    "duplicates": ("group", "row", "exact", "label", "text"),
    "conflicts": ("group", "row", "label", "text"),
    "leakage": ("split", "row", "exact", "label", "train_rows", "train_labels", "text"),
    "label_issues": ("rank", "row", "given", "suggested", "given_probability", "text"),
}
SUMMARY_FILE = "summary.json"
SUMMARY_KEYS = ("task", "labels", "splits")  # a summary.json with these keys is one that check wrote


@dataclass
class Report:
    """`summary`: what --json prints and the terminal report shows; `tables`: every row behind it, by TABLES name;
    `inputs`: the local data files it read, by config key (`data.train`), which write_tables never writes over;
    `run_dir`: the config's output_dir, which write_tables leaves to train (`prepare_output`)."""

    summary: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    inputs: dict[str, Path] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def problems(self) -> list[str]:
        """What --strict fails on: leakage into validation/test and conflicting labels in train."""
        leaked = sum(s["normalised"] for s in self.summary["leakage"].values())
        conflicts = self.summary["conflicts"]["texts"]
        return ([f"{leaked} validation/test row(s) also in train"] if leaked else []) + \
               ([f"{conflicts} train text(s) with conflicting labels"] if conflicts else [])


def check(config: Config, label_issues: int = 10) -> Report:
    """Read, tokenise and inspect the data `config` trains on; `label_issues` rows of likely label errors (0: skip).
    What `train` refuses before it starts (class weights for labels train lacks, a max_length the model cannot take)
    is refused here too, with train's own checks and messages."""
    from bertcls.model import check_model_source, load_tokenizer

    seconds: dict[str, float] = {}
    with _timed(seconds, "load"):
        train, validation, test, labels = load_splits(config.data, config.seed, lenient=True)
    check_class_weights(config.training.class_weights, labels.names)
    check_model_source(config.model, config.data.max_length)
    splits = {s.name: s for s in (train, validation, test) if s is not None}
    given = {name: _label_texts(split, config.data.label_separator) for name, split in splits.items()}  # labels as text
    summary: dict[str, Any] = {"task": config.data.task, "labels": list(labels.names), "max_length": config.data.max_length,
                               "long_text": config.data.long_text, "tokenizer": config.model.name, "splits": _sizes(splits, given, labels)}
    summary["imbalance_ratio"] = _imbalance(summary["splits"]["train"]["labels"])
    summary["unseen_labels"] = {name: s["unseen_labels"] for name, s in summary["splits"].items() if s["unseen_labels"]}
    report = Report(summary, inputs=input_files(config.data), run_dir=Path(config.output_dir))

    with _timed(seconds, "tokenizer"):
        tokenizer = load_tokenizer(config.model, config.data.max_length, train.texts + (train.pairs or []))
    with _timed(seconds, "lengths"):
        lengths = {name: token_lengths(split, tokenizer) for name, split in splits.items()}
    summary["lengths"], report.tables["lengths"] = _length_report(lengths, splits, config.data.max_length)
    summary["max_length_to_keep_whole"] = {f"{q}%": max(MIN_MAX_LENGTH, _nearest_rank(np.sort(lengths["train"]), q)) for q in KEEP_WHOLE}

    with _timed(seconds, "texts"):
        keys = {name: (row_keys(split, str), row_keys(split, normalise)) for name, split in splits.items()}
        summary["near_empty"], report.tables["near_empty"] = _near_empty(splits, given)
        summary["duplicates"], report.tables["duplicates"] = _duplicates(train, *keys["train"], given["train"])
        summary["conflicts"], report.tables["conflicts"] = _conflicts(train, keys["train"][1], given["train"])
        summary["leakage"], report.tables["leakage"] = _leakage(splits, keys, given)

    with _timed(seconds, "baseline"):
        features = _features(splits)
        summary["baseline"] = _baseline(features, splits, labels, given, config.seed) if features else {"skipped": "no words to learn from"}
    with _timed(seconds, "label_issues"):
        summary["label_issues"], report.tables["label_issues"] = _label_issues(features, train, labels, given["train"], label_issues,
                                                                                   config.seed, config.data.label_separator)
    summary["seconds"] = seconds
    return report


@contextmanager
def _timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    seconds[part] = round(time.perf_counter() - began, 3)


# ---------------------------------------------------------------------------- what train prints

def warnings(splits: Sequence[Split | None], over: Sequence[bool], max_length: int) -> list[str]:
    """One line each for leakage, conflicting labels and heavy truncation: the cheap checks `bertcls train` runs.

    `splits`: train first, then validation and test (None is skipped). `over`: per train text, whether training
    cuts it (it is longer than max_length: the header's and metrics.json's count); empty when none is cut.
    """
    train, *others = [s for s in splits if s is not None]
    train_keys = row_keys(train, normalise)
    lines = []
    known = set(train_keys) - {""}
    leaked = {s.name: sum(k in known for k in row_keys(s, normalise)) for s in others}
    if any(leaked.values()):
        where = ", ".join(f"{n:,} {name}" for name, n in leaked.items() if n)
        lines.append(f"warning: leakage: {where} row(s) also appear in train (after normalising case, punctuation and "
                     "whitespace); their scores overstate the model. `bertcls check CONFIG --output DIR` lists them")
    conflicts = _conflict_groups(train_keys, [str(v) for v in train.labels])
    if conflicts:
        lines.append(f"warning: conflicts: {len(conflicts):,} train text(s) appear with different labels "
                     f"({sum(map(len, conflicts.values())):,} rows). `bertcls check CONFIG --output DIR` lists them")
    cut = sum(over)
    if over and cut / len(over) > HEAVY_TRUNCATION:
        lines.append(f"warning: truncation: {cut / len(over):.0%} of train texts ({cut:,}) are longer than data.max_length={max_length} "
                     "tokens and are cut; `bertcls check CONFIG` says which max_length keeps 95% whole")
    return lines


# ---------------------------------------------------------------------------- sizes and labels

def _label_texts(split: Split, separator: str) -> list[str]:
    """Each row's label(s) as one string: `pos`, or `sport;politics` for multi-label."""
    return [separator.join(v) if isinstance(v, list) else str(v) for v in split.labels]


def _sizes(splits: dict[str, Split], given: dict[str, list[str]], labels: LabelMap) -> dict[str, Any]:
    sizes = {}
    for name, split in splits.items():
        each = [str(v) for row in split.labels for v in row] if labels.multi_label else given[name]
        counts = Counter(each)
        unseen = {label: n for label, n in sorted(counts.items()) if label not in labels.label2id}
        sizes[name] = {"rows": len(split), "labels": {label: counts.get(label, 0) for label in labels.names}, "unseen_labels": unseen}
    return sizes


def _imbalance(counts: dict[str, int]) -> float | None:
    """Largest over smallest class in train; None if a class has no train row (data.split_off keeps one of each)."""
    return round(max(counts.values()) / min(counts.values()), 2) if min(counts.values()) else None


# ---------------------------------------------------------------------------- token lengths

def token_lengths(split: Split, tokenizer) -> np.ndarray:
    """Tokens per row as the model would see them, uncut (special tokens included), counted a chunk at a time."""
    count = _token_counter(tokenizer)
    lengths: list[int] = []
    for start, end in _chunks(split):
        texts, pairs = split.texts[start:end], split.pairs[start:end] if split.pairs is not None else None
        if end - start == 1 and len(texts[0]) + (len(pairs[0]) if pairs else 0) > LENGTH_CHUNK_CHARS:
            lengths.append(_pieced_length(count, texts[0], pairs[0] if pairs else None))
        else:
            lengths += count(texts, pairs)
    return np.asarray(lengths, dtype=np.int64)


def _pieced_length(count, text: str, pair: str | None) -> int:
    """Tokens of one row longer than LENGTH_CHUNK_CHARS, counted a piece at a time (`model.pieces`: they end at
    spaces, so the words are the whole text's): the row's special tokens plus each piece's own."""
    alone = count([""], None)[0]  # the special tokens around a single text
    total = count([""], [""])[0] if pair is not None else alone
    for part in (text,) if pair is None else (text, pair):
        total += sum(count([piece], None)[0] - alone for piece in pieces(part))
    return total


def _chunks(split: Split) -> Iterator[tuple[int, int]]:
    """(start, end) rows of each tokenizer call: at most LENGTH_CHUNK texts and, past the first text, LENGTH_CHUNK_CHARS characters."""
    start, chars = 0, 0
    for i, text in enumerate(split.texts):
        size = len(text) + (len(split.pairs[i]) if split.pairs is not None else 0)
        if i > start and (i - start >= LENGTH_CHUNK or chars + size > LENGTH_CHUNK_CHARS):
            yield start, i
            start, chars = i, 0
        chars += size
    if start < len(split.texts):
        yield start, len(split.texts)


def _token_counter(tokenizer):
    """(texts, pairs) -> token counts. A fast tokenizer's Rust backend is asked directly, on a copy without the
    truncation and padding a tokenizer.json may carry: 40% faster than calling the tokenizer, with no id lists built."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python-only tokenizer
        return lambda texts, pairs: [len(ids) for ids in tokenizer(texts, pairs, return_attention_mask=False, return_token_type_ids=False)["input_ids"]]
    from tokenizers import Tokenizer

    uncut = Tokenizer.from_str(backend.to_str())
    uncut.no_truncation()
    uncut.no_padding()
    return lambda texts, pairs: [len(e) for e in uncut.encode_batch_fast(texts if pairs is None else list(zip(texts, pairs, strict=True)))]


def _nearest_rank(sorted_lengths: np.ndarray, q: float) -> int:
    """The smallest length that q% of the rows do not exceed."""
    return int(sorted_lengths[max(0, math.ceil(q / 100 * len(sorted_lengths)) - 1)])


def _length_report(lengths: dict[str, np.ndarray], splits: dict[str, Split], max_length: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary, rows = {}, []
    for name, counts in lengths.items():
        ordered = np.sort(counts)
        over = int((counts > max_length).sum())
        summary[name] = {**{f"p{q}": _nearest_rank(ordered, q) for q in PERCENTILES}, "max": int(ordered[-1]),
                         "over_max_length": over, "over_max_length_share": round(over / len(counts), 4)}
        rows += [{"split": name, "row": splits[name].row(i), "tokens": int(n), "over_max_length": bool(n > max_length)}
                 for i, n in enumerate(counts)]
    return summary, rows


# ---------------------------------------------------------------------------- texts: near-empty, duplicates, conflicts, leakage

def normalise(text: str) -> str:
    """Case folded, punctuation and runs of whitespace made one space: `Great movie!!` is `great movie`. A text of
    only punctuation or emoji (`🙂🙂🙂`) keeps them, so that it still equals itself."""
    folded = text.casefold()
    return " ".join(PUNCTUATION.sub(" ", folded).split()) or " ".join(folded.split())


def row_keys(split: Split, fold) -> list[str]:
    """Each row's text (and pair text) passed through `fold`, as one string to compare; "" for a row whose texts
    are blank (near-empty, reported there), so that exact keys and normalised keys leave out the same rows."""
    if split.pairs is None:
        return [fold(t) if t.strip() else "" for t in split.texts]
    return [f"{fold(t)}\x1f{fold(p)}" if t.strip() or p.strip() else "" for t, p in zip(split.texts, split.pairs, strict=True)]


def _groups(keys: Sequence[str]) -> dict[str, list[int]]:
    """Rows (0-based) of each non-empty key that occurs more than once, in first-seen order."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if key:  # blank texts are near-empty, reported there
            rows[key].append(i)
    return {key: found for key, found in rows.items() if len(found) > 1}


def _conflict_groups(keys: Sequence[str], labels: Sequence[str]) -> dict[str, list[int]]:
    return {key: rows for key, rows in _groups(keys).items() if len({labels[i] for i in rows}) > 1}


def _example(split: Split, i: int, label: str) -> dict[str, Any]:
    return {"split": split.name, "row": split.row(i), "label": label, "text": _shown_text(split, i)}


def _shown_text(split: Split, i: int) -> str:
    return split.texts[i] if split.pairs is None else f"{split.texts[i]} || {split.pairs[i]}"


def _near_empty(splits: dict[str, Split], given: dict[str, list[str]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary, rows = {}, []
    for name, split in splits.items():
        segments = zip(split.texts, split.pairs or [None] * len(split), strict=True)
        found = [i for i, (t, p) in enumerate(segments) if len(t.strip()) < NEAR_EMPTY_CHARS or (p is not None and len(p.strip()) < NEAR_EMPTY_CHARS)]
        empty = sum(not split.texts[i].strip() or (split.pairs is not None and not split.pairs[i].strip()) for i in found)
        listed = [_example(split, i, given[name][i]) for i in found]
        summary[name] = {"rows": len(found), "empty": empty, "examples": listed[:EXAMPLES]}
        rows += listed
    return summary, rows


def _duplicates(train: Split, exact: list[str], normal: list[str], labels: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train rows that repeat an earlier row: exactly, and after normalising (which includes the exact ones)."""
    exact_groups, groups = _groups(exact), _groups(normal)
    rows, examples = [], []
    for group, found in enumerate(groups.values(), start=1):
        seen: set[str] = set()
        for i in found:
            rows.append({"group": group, "row": train.row(i), "exact": exact[i] in seen, "label": labels[i], "text": _shown_text(train, i)})
            seen.add(exact[i])
        examples.append({"rows": [train.row(i) for i in found], "labels": [labels[i] for i in found], "text": _shown_text(train, found[0])})
    summary = {"exact": sum(len(r) - 1 for r in exact_groups.values()), "normalised": sum(len(r) - 1 for r in groups.values()),
               "texts": len(groups), "examples": examples[:EXAMPLES]}
    return summary, rows


def _conflicts(train: Split, normal: list[str], labels: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train texts (normalised) that carry more than one label."""
    rows, examples = [], []
    groups = _conflict_groups(normal, labels)
    for group, found in enumerate(groups.values(), start=1):
        rows += [{"group": group, "row": train.row(i), "label": labels[i], "text": _shown_text(train, i)} for i in found]
        by_label: dict[str, list[int]] = defaultdict(list)
        for i in found:
            by_label[labels[i]].append(train.row(i))
        examples.append({"text": _shown_text(train, found[0]), "labels": dict(by_label)})
    summary = {"texts": len(groups), "rows": sum(map(len, groups.values())), "examples": examples[:EXAMPLES]}
    return summary, rows


def _leakage(splits: dict[str, Split], keys: dict[str, tuple[list[str], list[str]]],
             given: dict[str, list[str]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validation/test rows whose text train also holds: exactly, and after normalising (which includes the exact ones)."""
    exact_train = set(keys["train"][0])
    in_train: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys["train"][1]):
        if key:
            in_train[key].append(i)
    summary, rows = {}, []
    for name, split in splits.items():
        if name == "train":
            continue
        exact, normal = keys[name]
        found = [i for i, key in enumerate(normal) if key in in_train]
        listed, differs = [], 0
        for i in found:
            train_rows = in_train[normal[i]]
            train_labels = sorted({given["train"][j] for j in train_rows})
            differs += given[name][i] not in train_labels
            listed.append({"split": name, "row": split.row(i), "exact": exact[i] in exact_train, "label": given[name][i],
                           "train_rows": " ".join(str(splits["train"].row(j)) for j in train_rows), "train_labels": " | ".join(train_labels),
                           "text": _shown_text(split, i)})
        summary[name] = {"exact": sum(r["exact"] for r in listed), "normalised": len(listed), "label_differs": differs,
                         "examples": listed[:EXAMPLES]}
        rows += listed
    return summary, rows


# ---------------------------------------------------------------------------- baseline and likely label errors

@contextmanager
def _quiet_sklearn() -> Iterator[None]:
    # Convergence notes, "label not present in every fold", unknown validation labels: none change what we report.
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        yield


def _features(splits: dict[str, Split]) -> dict[str, Any] | None:
    """TF-IDF of words, fitted on train; None when no train text has a word."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = {name: s.texts if s.pairs is None else [f"{t} {p}" for t, p in zip(s.texts, s.pairs, strict=True)] for name, s in splits.items()}
    # Words only, for speed: word pairs took 2x the CPU time on SST-2 (2.3x on 100k longer texts) for a mixed
    # return there (+2 points on its 6.7k dev rows, -1.3 on its 872 test rows; 1,131 label issues instead of 1,927).
    vectorizer = TfidfVectorizer(token_pattern=WORDS, sublinear_tf=True, min_df=2 if len(docs["train"]) >= MIN_DF_ROWS else 1, dtype=np.float32)
    try:
        train = vectorizer.fit_transform(docs["train"])
    except ValueError:  # sklearn's "empty vocabulary"
        return None
    return {name: train if name == "train" else vectorizer.transform(d) for name, d in docs.items()}


def _classifier(multi_label: bool, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    # saga at tol 1e-3: on SST-2's 60k rows over 5x faster than the default lbfgs at 1e-4, test accuracy within
    # 0.1 point (lbfgs stopped at 1e-3 lost 2 points); TF-IDF rows have unit length, which saga needs to converge fast.
    model = LogisticRegression(solver="saga", tol=1e-3, max_iter=1000, random_state=seed)
    return OneVsRestClassifier(model) if multi_label else model


def _targets(split: Split, labels: LabelMap) -> np.ndarray:
    """Label ids (single-label) or a 0/1 matrix (multi-label) for a split whose labels train knows."""
    return np.asarray(labels.encode(split.labels, split.name), dtype=np.int64)


def _baseline(features: dict[str, Any], splits: dict[str, Split], labels: LabelMap, given: dict[str, list[str]], seed: int) -> dict[str, Any]:
    """Fit on train, score validation and test: the number a fine-tuned model has to beat."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    with _quiet_sklearn():
        model = _classifier(labels.multi_label, seed).fit(features["train"], _targets(splits["train"], labels))
        scores: dict[str, Any] = {"model": "TF-IDF + logistic regression" + (", one-vs-rest" if labels.multi_label else "")}
        for name, split in splits.items():
            if name == "train":
                continue
            if labels.multi_label:  # labels train lacks are dropped from the gold sets
                gold = MultiLabelBinarizer(classes=list(labels.names)).fit_transform(split.labels)
                # Not model.predict: when the first label is on every train row, it cuts the others' logits at 0.5, not 0.
                predicted = (model.predict_proba(features[name]) > 0.5).astype(np.int64)
                scores[name] = {"accuracy": accuracy_score(gold, predicted), "f1_micro": f1_score(gold, predicted, average="micro", zero_division=0),
                                "f1_macro": f1_score(gold, predicted, average="macro", zero_division=0)}
            else:  # a label train lacks is never predicted: those rows count as errors
                names = [labels.names[i] for i in model.predict(features[name])]
                scores[name] = {"accuracy": accuracy_score(given[name], names), "f1_macro": f1_score(given[name], names, average="macro", zero_division=0)}
            scores[name] = {k: round(float(v), 4) for k, v in scores[name].items()}
    return scores


def _label_issues(features: dict[str, Any] | None, train: Split, labels: LabelMap, given: list[str], shown: int,
                  seed: int, separator: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train rows whose label the baseline's out-of-fold probabilities doubt most (cleanlab), most suspicious first."""
    if shown == 0:
        return {"skipped": "--label-issues 0"}, []
    if features is None:
        return {"skipped": "no words to learn from"}, []
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return {"skipped": NO_CLEANLAB}, []
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    y = _targets(train, labels)
    # Multi-label: cleanlab doubts a label by the rows with and without it (and fails without either), so a label on
    # every train row, or on none, is left out of its search: the rows it ranks are train's rows all the same.
    varies = y.min(axis=0) < y.max(axis=0) if labels.multi_label else None
    if varies is not None and not varies.any():
        return {"skipped": "every train row has the same labels: none to doubt"}, []
    smallest = int(y[:, varies].sum(axis=0).min()) if labels.multi_label else min(Counter(y.tolist()).values())
    folds = min(MAX_FOLDS, smallest)
    if folds < 2:
        return {"skipped": "a label has fewer than 2 train rows: too few for out-of-fold probabilities"}, []
    cv = (KFold if labels.multi_label else StratifiedKFold)(folds, shuffle=True, random_state=seed)
    with _quiet_sklearn():
        probs = cross_val_predict(_classifier(labels.multi_label, seed), features["train"], y, cv=cv, method="predict_proba")
        if varies is not None:  # cross_val_predict takes a label on every row for one on none: each keeps its 1 (or 0)
            probs[:, ~varies] = y[0, ~varies]
        gold, doubted, multi_label = _for_cleanlab(y, probs, varies)
        ranked = find_label_issues(gold, doubted, multi_label=multi_label, return_indices_ranked_by="self_confidence")
        quality = _label_quality(gold, doubted, multi_label)
    rows = [{"rank": rank, "row": train.row(int(i)), "given": given[i], "suggested": _suggested(probs[i], labels, separator),
             "given_probability": round(float(quality[i]), 4), "text": _shown_text(train, i)} for rank, i in enumerate(ranked, start=1)]
    return {"found": len(rows), "folds": folds, "rows": rows[:shown]}, rows


def _for_cleanlab(y: np.ndarray, probs: np.ndarray, varies: np.ndarray | None) -> tuple[Any, np.ndarray, bool]:
    """The given labels and the probabilities as cleanlab takes them, and whether as multi-label: single-label as they
    are; multi-label only the labels where `varies`, and a single one of them as the yes/no question it is."""
    if varies is None:
        return y, probs, False
    if varies.sum() == 1:
        yes = probs[:, varies].ravel()
        return y[:, varies].ravel(), np.stack([1 - yes, yes], axis=1), False
    return [np.flatnonzero(row).tolist() for row in y[:, varies]], probs[:, varies], True


def _label_quality(gold, probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """cleanlab's self-confidence, which ranks the issues: the out-of-fold probability of the given label
    (multi-label: cleanlab's score over the labels, each the probability of the given yes or no)."""
    if multi_label:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        return get_label_quality_scores(gold, probs)
    return probs[np.arange(len(gold)), gold]


def _suggested(probs: np.ndarray, labels: LabelMap, separator: str) -> str:
    if labels.multi_label:
        return separator.join(name for name, p in zip(labels.names, probs, strict=True) if p >= 0.5)
    return labels.names[int(np.argmax(probs))]


# ---------------------------------------------------------------------------- output

def input_files(data: DataConfig) -> dict[str, Path]:
    """The local files data.train, data.validation and data.test name (hub datasets are not files), by key."""
    sources = {f"data.{key}": getattr(data, key) for key in ("train", "validation", "test")}
    return {key: Path(source) for key, source in sources.items() if source and Path(source).exists()}


def output_files(folder: Path) -> dict[str, Path]:
    """The files --output writes, by table name (`summary` for summary.json)."""
    return {**{name: folder / f"{name}.csv" for name in TABLES}, "summary": folder / SUMMARY_FILE}


def prepare_output(folder: Path, inputs: dict[str, Path] | None = None, run_dir: Path | None = None) -> None:
    """Check the --output folder before the work, so that a bad one fails at once (write_tables creates it). Refuse
    a file; `run_dir` (the config's output_dir) or a folder in it, and a folder in a bertcls run; a folder where a
    table would replace one of the run's `inputs` (see `input_files`); and a file of a table's name that check
    did not write (a user's file, a link, a folder): only check's own tables from an earlier check are replaced."""
    if folder.is_symlink() and not folder.exists():  # a link to nothing, or a loop
        atomic.check_folder_path(folder, "--output")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder}: a file, not a folder; give a folder (it is created if missing)")
    _refuse_run_folders(folder, run_dir)
    for path in output_files(folder).values():
        for key, source in (inputs or {}).items():
            if _same_file(path, source):
                raise ConfigError(f"--output {folder}: {path} is {key} of this run, and check would replace it with its own "
                                  f"{path.name}; choose another folder")
    for name, path in output_files(folder).items():
        problem = _not_written_by_check(path, name)
        if problem:
            raise ConfigError(f"--output {folder}: {path} {problem}, and check replaces only the tables it wrote; "
                              "move it, or choose another folder")
    above = next(path for path in (folder, *folder.parents) if path.exists())  # what mkdir would create the folder in
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        why = "is a file" if not above.is_dir() else "is not writable"
        raise ConfigError(f"--output {folder}: cannot write there ({above} {why}); choose another folder")


def _refuse_run_folders(folder: Path, run_dir: Path | None) -> None:
    """Tables in the config's output_dir would make train refuse it (not empty, not a run); tables in a run folder
    would mix with what training wrote (its model/ is what `bertcls push` uploads)."""
    real = Path(os.path.realpath(folder))
    if run_dir is not None:
        run = Path(os.path.realpath(run_dir))
        if real == run or run in real.parents:
            where = "the config's output_dir" if real == run else f"inside the config's output_dir {run_dir}"
            raise ConfigError(f"--output {folder} is {where}, where train writes its run (and refuses a folder with other "
                              f"files); choose a folder outside it, e.g. {run_dir}-check")
    if found := runs.run_above(folder):
        run, place = found
        named = runs.as_given(folder, run, place)
        where = "a bertcls run folder" if place == "." else f"inside the bertcls run folder {named}"
        raise RunError(f"--output {folder} is {where}, which holds what training wrote; choose a folder outside the run, "
                       f"e.g. {named}-check")


def _same_file(path: Path, other: Path) -> bool:
    """One file by its resolved path (through links), or by device and inode (a hard link)."""
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # either is missing: a file that does not exist yet is not an input
        return False


def _not_written_by_check(path: Path, name: str) -> str | None:
    """Why the file at `path` (if any) is not check's own `name` table: what it is instead; None if it is, or is absent."""
    if path.is_symlink():
        return f"is a link (to {os.readlink(path)})"
    if not path.exists():
        return None
    if not path.is_file():
        return "is a folder" if path.is_dir() else "is not a regular file"
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            if name != "summary":
                first = f.readline(4096).rstrip("\r\n")
                return None if first == ",".join(TABLES[name]) else f"was not written by check (its first line is {shown(first, 60)})"
            summary = json.load(f)
    except json.JSONDecodeError:
        return "was not written by check (it is not JSON)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if isinstance(summary, dict) and all(key in summary for key in SUMMARY_KEYS) else "was not written by check (not its summary)"


def write_tables(report: Report, folder: Path) -> list[Path]:
    """Every table as NAME.csv plus summary.json in `folder`, each file written whole or not at all; none over the
    report's input files, or over a file check did not write (`prepare_output`)."""
    prepare_output(folder, report.inputs, report.run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {folder}: cannot create it ({exc.strerror})") from None
    written = []
    for name, columns in TABLES.items():
        path = folder / f"{name}.csv"
        with atomic.atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(report.tables.get(name, []))
        written.append(path)
    atomic.write_json(folder / SUMMARY_FILE, report.summary)
    return [*written, folder / SUMMARY_FILE]


# ---------------------------------------------------------------------------- the terminal report

def print_report(report: Report, file: IO[str] | None = None) -> None:
    """The summary as a few tables and lines; the examples are the first EXAMPLES of each finding."""
    from rich.console import Console

    s = report.summary
    console = Console(file=file, highlight=False, soft_wrap=True, markup=False)
    sizes = " | ".join(f"{name} {split['rows']:,}" for name, split in s["splits"].items())
    console.print(f"data: {sizes} rows | {len(s['labels'])} labels ({s['task']}) | tokenizer {s['tokenizer']} | max_length {s['max_length']}")
    console.print(_label_table(s["splits"]))
    ratio = s["imbalance_ratio"]
    console.print(f"imbalance (largest / smallest class in train): {'none: a class has no train row' if ratio is None else f'{ratio:g}'}")
    for name, unseen in s["unseen_labels"].items():
        console.print(f"labels train lacks, in {name}: " + ", ".join(f"{label} ({n} rows)" for label, n in unseen.items())
                      + "; training refuses them")
    console.print(_length_table(s["lengths"], s["max_length"]))
    console.print(f"texts over max_length {s['max_length']} {READS[s['long_text']]} (data.long_text: {s['long_text']})")
    keep = s["max_length_to_keep_whole"]
    console.print(f"max_length that keeps train texts whole: {keep['95%']} for 95%, {keep['99%']} for 99%")
    for line in _finding_lines(s):
        console.print(line)
    console.print(_baseline_line(s["baseline"]))
    issues = s["label_issues"]
    if "skipped" in issues:
        console.print(f"likely label errors: skipped ({issues['skipped']})")
    else:
        console.print(f"likely label errors (cleanlab on {issues['folds']}-fold out-of-fold baseline probabilities): {issues['found']:,} found"
                      + (f"; the {len(issues['rows'])} most suspicious:" if issues["rows"] else ""))
        if issues["rows"]:
            console.print(_issue_table(issues["rows"], console.width))
    console.print(f"took {sum(s['seconds'].values()):.1f} s: " + ", ".join(f"{part} {t:.1f}" for part, t in s["seconds"].items()))


def _label_table(splits: dict[str, Any]):
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("label")
    for name in splits:
        table.add_column(name, justify="right")
    for label in next(iter(splits.values()))["labels"]:
        table.add_row(label, *(_count_share(split["labels"][label], split["rows"]) for split in splits.values()))
    return table


def _count_share(count: int, rows: int) -> str:
    return f"{count:,} ({count / rows:.1%})"


def _length_table(lengths: dict[str, Any], max_length: int):
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("tokens")
    for column in (*(f"p{q}" for q in PERCENTILES), "max", f"> {max_length}"):
        table.add_column(column, justify="right")
    for name, s in lengths.items():
        table.add_row(name, *(str(s[f"p{q}"]) for q in PERCENTILES), str(s["max"]),
                      f"{s['over_max_length']:,} ({s['over_max_length_share']:.1%})")
    return table


def _finding_lines(s: dict[str, Any]) -> list[str]:
    near, dup, conf, leak = s["near_empty"], s["duplicates"], s["conflicts"], s["leakage"]
    lines = [f"near-empty texts (< {NEAR_EMPTY_CHARS} characters): "
             + ", ".join(f"{name} {n['rows']:,}" + (f" ({n['empty']:,} empty: training refuses them)" if n["empty"] else "") for name, n in near.items())]
    lines += [f"  {e['split']} row {e['row']} [{e['label']}]: {_short(e['text'])}" for n in near.values() for e in n["examples"]]
    lines.append(f"duplicates in train: {dup['exact']:,} exact, {dup['normalised']:,} after normalising ({dup['texts']:,} texts repeated)")
    lines += [f"  rows {_rows(e['rows'])} [{', '.join(sorted(set(e['labels'])))}]: {_short(e['text'])}" for e in dup["examples"]]
    lines.append(f"conflicts in train: {conf['texts']:,} texts with different labels ({conf['rows']:,} rows)")
    lines += [f"  {_short(e['text'])}: " + "; ".join(f"{label} rows {_rows(rows)}" for label, rows in e["labels"].items()) for e in conf["examples"]]
    lines.append("leakage (rows also in train): " + ", ".join(
        f"{name} {n['normalised']:,} ({n['exact']:,} exact, {n['label_differs']:,} with another label)" for name, n in leak.items()))
    lines += [f"  {e['split']} row {e['row']} [{e['label']}] = train row(s) {e['train_rows']} [{e['train_labels']}]: {_short(e['text'])}"
              for n in leak.values() for e in n["examples"]]
    return lines


def _baseline_line(baseline: dict[str, Any]) -> str:
    if "skipped" in baseline:
        return f"baseline: skipped ({baseline['skipped']})"
    scores = " | ".join(f"{name} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for name, m in baseline.items() if name != "model")
    return f"baseline ({baseline['model']}): {scores}"


def _issue_table(rows: list[dict[str, Any]], width: int):
    """One line per row: the text is cut to what the other columns leave of the terminal's `width`."""
    from rich.table import Table
    from rich.text import Text

    columns = (("row", "right"), ("given", "left"), ("suggested", "left"), ("p(given)", "right"))
    cells = [(str(r["row"]), r["given"], r["suggested"], f"{r['given_probability']:.3f}") for r in rows]
    widths = [max(len(column), *(len(c[j]) for c in cells)) for j, (column, _) in enumerate(columns)]
    text_width = max(20, width - sum(widths) - 2 * len(widths) - 1)
    table = Table(box=None, pad_edge=False)
    for (column, justify), column_width in zip(columns, widths, strict=True):
        table.add_column(column, justify=justify, no_wrap=True, min_width=column_width)
    table.add_column("text", no_wrap=True, overflow="ellipsis", max_width=text_width)
    for c, r in zip(cells, rows, strict=True):
        table.add_row(*map(Text, c), Text(_short(r["text"], text_width)))
    return table


def _rows(rows: list[int], shown: int = 5) -> str:
    return ", ".join(map(str, rows[:shown])) + (f", ... ({len(rows)} rows)" if len(rows) > shown else "")


def _short(text: str, width: int = 60) -> str:
    """The text quoted, at most `width` characters (a cut one ends in `...`, without its closing quote)."""
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 3] + "..."
