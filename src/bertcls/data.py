"""Data: files (or hub datasets) in, checked splits, a sorted label map and padded batches out.

Local files are read through `datasets` into memory, by each process, via a temporary cache of
its own that is removed at once: nothing lands in the shared Hugging Face cache, and launched
processes never race. Hub datasets use datasets' normal download cache (file-locked). Texts are
tokenised in memory, in batch, by each process; a text longer than max_length is truncated, or read
by head and tail or in windows (one example each), as data.long_text says (`bertcls.longtext`).
Batches are grouped by length so each one is padded only to its own longest sequence.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bertcls import atomic, longtext
from bertcls.errors import DataError, ModelError, WriteError, causes, clipped, first_line, listing, not_utf8, shown
from bertcls.longtext import LongText, Reading
from bertcls.model import download_failure, not_downloaded, pad_batch, quiet_hub_retries, truncate_long_texts
from bertcls.tsv import check_fields, duplicate_columns

if TYPE_CHECKING:  # config (pydantic) is imported where files are read, not on the predict path
    from bertcls.config import DataConfig

# How many batches are sorted together: big enough to keep padding small, small enough that
# the order is still well shuffled (the Hugging Face Trainer uses the same factor).
MEGABATCH_FACTOR = 50


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    quiet_hub_retries()
    return datasets


# ---------------------------------------------------------------------------- reading files

def read_table(source: str, split: str = "train"):
    """A local csv/tsv/json/jsonl/parquet file, or a hub dataset `name[:split]`, as a `datasets.Dataset`."""
    datasets = _quiet_datasets()
    path = Path(source)
    if not _is_local(source):
        name, _, hub_split = source.partition(":")
        if name and Path(name).exists():  # the hub's loader would read this local folder (or file) instead, and call it a hub dataset
            raise DataError(f"{source}: {name} is a local folder or file, not a hub dataset; give its csv, tsv, json, jsonl or "
                            f"parquet file itself (e.g. {name}/train.csv)")
        try:
            return datasets.load_dataset(name, split=hub_split or split)
        except Exception as exc:  # the hub raises many kinds; all mean "cannot get it"
            if not_downloaded(exc):
                raise DataError(f"{source}: not a local file, and a hub dataset {download_failure('a local file')}") from None
            raise DataError(f"{source}: not a local file, and not a hub dataset that could be loaded ({first_line(exc)})") from None
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a data file; give the csv, tsv, json, jsonl or parquet file itself "
                        "(for a dataset saved as a folder of files, name its train and validation files)")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    from bertcls.config import DATA_EXTENSIONS

    kind = DATA_EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported extension '{path.suffix}'; use one of {', '.join(DATA_EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None
    quoting, header = check_fields(path, kind) if kind in ("csv", "tsv") else (None, [])
    if kind == "parquet":
        columns, rows = _parquet_footer(path)
        problem = duplicate_columns(columns)
        if problem:
            raise DataError(f"{path}: {problem}")
        if rows == 0:  # datasets would say "BatchSize must be greater than 0"
            raise DataError(f"{path}: no rows")
    as_written = {column: str for column in range(len(header))}
    builder, options = {
        # keep_default_na=False: the text "NA" or "null" is a text, not a missing value. Every column read as text,
        # as written: "007" stays 007, not 7, and alike in every chunk (pandas guesses types per 10,000 rows).
        "csv": ("csv", {"keep_default_na": False, "converters": as_written, "encoding": "utf-8-sig"}),
        # TSV: GLUE-style (quote characters are text) or csv-quoted, as bertcls.tsv finds this file written.
        "tsv": ("csv", {"sep": "\t", "quoting": quoting, "keep_default_na": False, "converters": as_written, "encoding": "utf-8-sig"}),
        "json": ("json", {}),
        "jsonl": ("json", {}),
        "parquet": ("parquet", {}),
    }[kind]
    # The user's files stay out of shared caches: datasets writes its Arrow copy into a folder of this
    # process's own (no races between launched processes), the table is read into memory, the folder removed.
    with tempfile.TemporaryDirectory(prefix="bertcls-data-") as cache:
        load = partial(datasets.load_dataset, builder, split=split, cache_dir=cache, keep_in_memory=True, **options)
        try:
            return load(data_files={split: str(path)})
        except Exception as exc:
            failure = exc
        if (code := atomic.refused_write(failure, Path(cache))) is not None:  # the copy was refused, not the file read
            refused = atomic.write_error(Path(cache).parent, code, elsewhere="set TMPDIR to a folder with room")
            raise WriteError(f"{path}: its temporary copy for reading: {refused}", code) from None
        lines = None
        # datasets reads a column of mixed types (1 and "x") through Python's json, line by line, which fails on a
        # blank line: the same lines without them read.
        if kind == "jsonl" and _mixed_types(failure):
            with suppress(OSError):  # no room for the copy: the file's own error is said
                lines = _without_blank_lines(path, Path(cache) / "lines.jsonl")
        if lines is None:
            raise DataError(_read_error(path, failure)) from None
        try:
            return load(data_files={split: str(lines)})
        except Exception as exc:
            raise DataError(_read_error(path, exc)) from None


def _mixed_types(exc: BaseException | None) -> bool:
    """Whether Arrow's JSON reader refused a column holding values of two types, in `exc` or what it wraps."""
    return any(") changed from " in str(cause) for cause in causes(exc))


def _without_blank_lines(path: Path, copy: Path) -> Path | None:
    """`copy`, holding the lines of `path` that are not blank; None (and no copy) when none is."""
    with path.open("rb") as f:
        if all(line.strip() for line in f):
            return None
        f.seek(0)
        with copy.open("wb") as out:
            out.writelines(line for line in f if line.strip())
    return copy


def _parquet_footer(path: Path) -> tuple[list[str], int | None]:
    """A parquet file's column names and row count, from its footer only; ([], None) when it cannot be read, which
    loading then reports."""
    import pyarrow.parquet as pq

    try:
        footer = pq.read_metadata(path)
        return footer.schema.to_arrow_schema().names, footer.num_rows
    except Exception:  # pyarrow raises several kinds for a damaged file; read_table's loader words the error
        return [], None


def _is_local(source: str) -> bool:
    from bertcls.config import DATA_EXTENSIONS

    path = Path(source)
    return path.is_absolute() or path.exists() or path.suffix.lower() in DATA_EXTENSIONS


def _read_error(path: Path, exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, UnicodeDecodeError):
            break
        cause = cause.__cause__ or cause.__context__
    if "corresponds to no data" in str(exc):  # datasets' words for a header-only file
        return f"{path}: no rows"
    if isinstance(cause, UnicodeDecodeError):
        return not_utf8(str(path), path, cause)
    problem = _json_problem(path) if path.suffix.lower() in (".json", ".jsonl") else None
    return f"{path}: {problem}" if problem else f"{path}: cannot be parsed as {path.suffix.lstrip('.')} ({first_line(cause)})"


def _json_problem(path: Path) -> str | None:
    """What Python's json finds wrong in a json/jsonl file that the Arrow reader refused (its words, like "Trailing
    data", name no line): the first line that is no JSON, or that holds a lone surrogate (an escape like \\ud800,
    which is no character); None when it finds nothing."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    lines = enumerate(text.splitlines(), start=1) if path.suffix.lower() == ".jsonl" else [(1, text)]
    for number, line in lines:
        if not line.strip():
            continue
        where = f"line {number}" if path.suffix.lower() == ".jsonl" else "the file"
        try:
            json.dumps(json.loads(line), ensure_ascii=False).encode("utf-8")
        except json.JSONDecodeError as exc:
            return f"{where} is not valid JSON ({exc.msg})"
        except UnicodeEncodeError:
            return f"{where} holds an escape like \\ud800 that is no Unicode character (a lone surrogate); fix that text"
    return None


# ---------------------------------------------------------------------------- labels

@dataclass(frozen=True)
class LabelMap:
    """Label names in a fixed, sorted order; a label's id is its position.

    Single-label: one value per row, encoded as its id. Multi-label: a list of values per row,
    encoded as a 0/1 vector over the names.
    """

    names: tuple[str, ...]
    multi_label: bool = False

    @classmethod
    def from_values(cls, values: Sequence[Any], where: str = "train", multi_label: bool = False) -> LabelMap:
        distinct = {_as_integer(v) for row in values for v in row} if multi_label else {_as_integer(v) for v in values}
        names = sorted_names(distinct)
        if not names:  # only multi-label rows can all be empty
            raise DataError(f"{where}: no row has a label (every row's list of labels is empty); "
                            "label the rows, with at least two different labels in all")
        if len(names) < 2:
            raise DataError(f"{where}: only one class ({names[0]!r}); a classifier needs at least two labels")
        return cls(names, multi_label)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def encode(self, values: Sequence[Any], where: str) -> list[int] | list[list[float]]:
        ids = self.label2id
        seen = {str(v) for row in values for v in row} if self.multi_label else {str(v) for v in values}
        unknown = sorted(seen - ids.keys())
        if unknown:
            raise DataError(f"{where}: labels not seen in train: {listing(unknown, 5, shown)}; "
                            f"the model can only predict {listing(self.names, 20)}: remove those rows, or train with examples of them")
        if self.multi_label:
            hot = [{ids[str(v)] for v in row} for row in values]
            return [[1.0 if i in row else 0.0 for i in range(len(self.names))] for row in hot]
        return [ids[str(v)] for v in values]


def sorted_names(values: set[Any]) -> tuple[str, ...]:
    """Label names in their fixed order: integers in numeric order (2 before 10), otherwise as text."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tuple(str(v) for v in sorted(values))
    return tuple(sorted({str(v) for v in values}))  # labels compare as text: 1 and "1" are one label


# A number written in decimal (csv/tsv labels are read as text): 0.5, -2, 1.0, .5, 3e-2.
DECIMAL_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# An integer as str(int) writes it: "007", "+7" and "-0" stay names.
INTEGER_TEXT = re.compile(r"0|-?[1-9][0-9]*")


def _as_integer(label: Any) -> Any:
    """A label written as text ("10" in json, or a multi-label row, which holds text) as the integer it writes, so that
    it sorts as one: "2" before "10", as 2 before 10."""
    return int(label) if isinstance(label, str) and INTEGER_TEXT.fullmatch(label) else label


# ---------------------------------------------------------------------------- splits

@dataclass
class Split:
    """One checked split: texts, optional pair texts, and label values as read; for rows taken out of another split
    (`split_off`), `numbers` are their data rows in the file they were read from."""

    name: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None
    numbers: list[int] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def row(self, i: int) -> int:
        """Row i's number in the file it was read from (data rows from 1, the header not counted)."""
        return self.numbers[i] if self.numbers is not None else i + 1


# How a wrong column is fixed, by DataConfig field: in the config (training) unless the caller says otherwise.
CONFIG_COLUMN_FIXES = {"text_column": "set data.text_column", "text_pair_column": "set data.text_pair_column", "label_column": "set data.label_column"}


def read_split(source: str, cfg: DataConfig, name: str, *, labelled: bool = True, max_rows: int | None = None,
               column_fixes: dict[str, str] = CONFIG_COLUMN_FIXES, keep_empty: bool = False) -> Split:
    """Read one file (its first `max_rows` rows, if given) and check its columns, texts and labels.

    `keep_empty` (for `bertcls check`, which counts them): empty or missing texts become "" instead of an error.
    """
    table = read_table(source, split=name)
    if max_rows is not None and max_rows < len(table):
        table = table.select(range(max_rows))
    where = f"{name} ({source})"
    columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    columns += [cfg.label_column] if labelled else []
    fix = {getattr(cfg, field): how for field, how in column_fixes.items()}
    for column in columns:
        if column not in table.column_names:
            raise DataError(f"{where}: no column {column!r} (columns: {', '.join(table.column_names)}); {fix[column]}")
    if len(table) == 0:
        raise DataError(f"{where}: no rows")
    rows = table.select_columns(columns).to_dict()
    texts = _checked_texts(rows[cfg.text_column], where, cfg.text_column, keep_empty)
    pairs = _checked_texts(rows[cfg.text_pair_column], where, cfg.text_pair_column, keep_empty) if cfg.text_pair_column else None
    labels = None
    if labelled and cfg.task == "multi_label":
        labels = _checked_label_lists(rows[cfg.label_column], where, cfg.label_column, cfg.label_separator)
    elif labelled:
        labels = _checked_labels(rows[cfg.label_column], where, cfg.label_column)
    return Split(name, texts, pairs, labels)


def _decoded(values: list[Any], where: str, column: str) -> list[Any]:
    """`values` with bytes (a parquet string column written without its UTF-8 annotation, as Spark may) as their text."""
    if not any(isinstance(v, bytes) for v in values):
        return values
    decoded, bad = [], []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
        decoded.append(v)
    if bad:
        raise DataError(f"{where}: column {column!r} holds bytes that are not UTF-8 text (data rows {_rows(bad)}); write it as text")
    return decoded


def _checked_texts(values: list[Any], where: str, column: str, keep_empty: bool = False) -> list[str]:
    values = _decoded(values, where, column)
    nested = [i for i, v in enumerate(values) if isinstance(v, (list, dict))]
    if nested:  # a JSON list or object: its Python repr is no text of the user's
        raise DataError(f"{where}: column {column!r} holds lists or objects, not texts (data rows {_rows(nested)}); give each row one text")
    # NaN is a missing value (a float column of json or parquet), not the text "nan"
    values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    bad = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if bad and keep_empty:
        return ["" if v is None else v if isinstance(v, str) else str(v) for v in values]
    if bad:
        raise DataError(f"{where}: {len(bad)} empty or missing text(s) in column {column!r} (data rows {_rows(bad)}); fill them in or remove those rows")
    return [v if isinstance(v, str) else str(v) for v in values]


def _checked_labels(values: list[Any], where: str, column: str) -> list[Any]:
    values = _decoded(values, where, column)
    bad = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))]
    if bad:
        raise DataError(f"{where}: {len(bad)} missing label(s) in column {column!r} (data rows {_rows(bad)}); label them or remove those rows")
    if any(isinstance(v, (list, dict)) for v in values):
        raise DataError(f"{where}: column {column!r} holds lists or objects; single-label classification needs one label per row; for several labels per row set data.task: multi_label")
    # fractions: numbers (json, parquet), or a csv/tsv column (read as text) of numbers only, some not whole
    numbers = [float(v) if isinstance(v, str) and DECIMAL_TEXT.fullmatch(v.strip()) else v for v in values]
    if any(isinstance(v, float) and not v.is_integer() for v in values) or (
            all(isinstance(v, float) for v in numbers) and any(not v.is_integer() for v in numbers)):
        raise DataError(f"{where}: column {column!r} holds fractional numbers; labels must be names or integers")
    flags = [i for i, v in enumerate(values) if isinstance(v, bool)]
    if flags and len(flags) < len(values):
        # true == 1 in Python and "true" != "1" as text: a mix cannot be read one way that is right for both.
        others = [i for i, v in enumerate(values) if not isinstance(v, bool)]
        raise DataError(f"{where}: column {column!r} mixes true/false (data rows {_rows(flags)}) with other labels "
                        f"(data rows {_rows(others)}); write every label the same way, e.g. all 0/1 or all true/false")
    if flags:  # JSON's true is the label "true", as a csv writes it (str() would make it "True")
        return ["true" if v else "false" for v in values]
    values = [int(v) if isinstance(v, float) else v for v in values]  # 1.0 is the label 1
    return [label_text(v) if isinstance(v, str) else v for v in values]


def _rows(indices: list[int]) -> str:
    """Data row numbers (1-based), the first ten."""
    return ", ".join(str(i + 1) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")


# A number with an all-zero fraction ("1.0", "-2.00"): the label is the integer, as for the number 1.0.
INTEGRAL_DECIMAL = re.compile(r"([+-]?\d+)\.0+")


def label_text(value: str) -> str:
    """A label read as text, stripped, with "1.0" read as "1": a column that also holds words is read as text,
    and its numbers must still match the same labels in a column read as numbers."""
    value = value.strip()
    integral = INTEGRAL_DECIMAL.fullmatch(value) if "." in value else None  # the test first: labels are many
    return str(int(integral[1])) if integral else value


def _checked_label_lists(values: list[Any], where: str, column: str, separator: str) -> list[list[str]]:
    """Multi-label: a list per row (json/jsonl/parquet), or one string split on `separator` (csv/tsv); an empty list
    (or csv cell) is allowed, a null or missing value is not. Each label becomes text as a single label does (2.0 is
    "2"); an item that is no string or integer is refused."""
    missing = [i for i, value in enumerate(values) if value is None]  # JSON null or no such key: [] says "no labels"
    if missing:
        raise DataError(f"{where}: {len(missing)} row(s) without a value in column {column!r} (data rows {_rows(missing)}); "
                        "give each row its list of labels ([] for none), or remove those rows")
    rows = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            value = value.split(separator)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise DataError(f"{where}: data row {i + 1} of column {column!r} is a {type(value).__name__}; give a list of labels "
                            f"or a string of labels separated by data.label_separator ({separator!r})")
        for item in value:
            fix = _label_item_fix(item)
            if fix:
                raise DataError(f"{where}: data row {i + 1} of column {column!r} has {_as_written(item)} among its labels; "
                                f"a label is a string or an integer: {fix}")
        labels = sorted({label_text(str(int(v) if isinstance(v, float) else v)) for v in value} - {""})
        for label in labels:
            if separator in label:
                raise DataError(f"{where}: data row {i + 1} of column {column!r} has the label {label!r}, which holds "
                                f"data.label_separator ({separator!r}), what predictions.csv and predict's csv/tsv output join "
                                "a row's labels with, so it would read back as other labels; rename the label, or choose "
                                "another data.label_separator")
        rows.append(labels)
    return rows


def _label_item_fix(item: Any) -> str | None:
    """How to fix an item of a multi-label list that is no label; None for a string, an integer, or 2.0 (the label 2)."""
    if isinstance(item, bool):  # a list's true reads as a flag per label (a 0/1 row), not as a label named "True"
        return "list the names of the labels the row has, not true/false per label"
    if isinstance(item, (str, int)) or (isinstance(item, float) and item.is_integer()):
        return None
    if item is None:
        return "remove the null"
    if isinstance(item, float):
        return "write the label's name or a whole number"
    return "give each row one flat list of labels"


def _as_written(item: Any) -> str:
    """A value as JSON writes it (null, true, ["a"]), as the user wrote it in a json file; repr for what JSON cannot write."""
    try:
        return clipped(json.dumps(item, ensure_ascii=False))
    except (TypeError, ValueError):
        return shown(item)


def load_splits(cfg: DataConfig, seed: int, *, lenient: bool = False) -> tuple[Split, Split, Split | None, LabelMap]:
    """train, validation (a file or a stratified share of train), optional test, and the label map.

    `lenient` (for `bertcls check`, which reports what training would refuse): keep empty texts, and
    validation/test labels that train lacks.
    """
    check_paths(cfg)
    train = read_split(cfg.train, cfg, "train", max_rows=cfg.max_train_samples, keep_empty=lenient)
    labels = LabelMap.from_values(train.labels, f"train ({cfg.train})", multi_label=cfg.task == "multi_label")
    if cfg.validation:
        validation = read_split(cfg.validation, cfg, "validation", max_rows=cfg.max_validation_samples, keep_empty=lenient)
    else:
        train, validation = split_off(train, cfg.validation_split, seed, labels.multi_label)
    test = read_split(cfg.test, cfg, "test", keep_empty=lenient) if cfg.test else None
    if not lenient:
        labels.encode(validation.labels, f"validation ({cfg.validation or 'split from train'})")
        if test is not None:
            labels.encode(test.labels, f"test ({cfg.test})")
    return train, validation, test, labels


def check_paths(cfg: DataConfig) -> None:
    """Every data file the config names as a local path exists; the error names the key, and how paths are read."""
    for key in ("train", "validation", "test"):
        source = getattr(cfg, key)
        if source and _is_local(source) and not Path(source).exists():
            raise DataError(f"data.{key}: {source}: no such file (paths in a config file are relative to the config's folder, "
                            "paths given with --set to the current folder)")


def split_off(split: Split, share: float, seed: int, multi_label: bool = False) -> tuple[Split, Split]:
    """Hold out `share` of the rows, stratified by label when every class has two rows or more; every class keeps
    a train row (the label map comes from all of train, and a class with none would be trained without an example)."""
    from sklearn.model_selection import train_test_split

    n_held = math.ceil(len(split) * share)
    too_few = f"train: {len(split)} rows are too few to hold out data.validation_split={share}"
    if n_held < 1:
        raise DataError(f"{too_few}; add rows or give data.validation")
    if len(split) - n_held < 2:
        raise DataError(f"train: data.validation_split={share} of {len(split)} rows would leave {len(split) - n_held} to train on; "
                        "lower data.validation_split, or give data.validation")
    stratify = split.labels if not multi_label and min(Counter(map(str, split.labels)).values()) >= 2 and n_held >= len(set(map(str, split.labels))) else None
    keep, held = train_test_split(list(range(len(split))), test_size=n_held, random_state=seed, stratify=stratify)
    keep, held = _keep_every_class(split.labels, keep, held, seed, multi_label)
    if not held:
        raise DataError(f"{too_few} and keep a train row of every class; add rows or give data.validation")
    return _subset(split, sorted(keep), "train"), _subset(split, sorted(held), "validation")


def _keep_every_class(labels: list[Any], keep: list[int], held: list[int], seed: int, multi_label: bool) -> tuple[list[int], list[int]]:
    """`keep` and `held` (row indices) unchanged when train keeps a row of every class (the ordinary case, exactly as
    sklearn split it). Otherwise a held row that took a class's last train row goes back to train, and as many train
    rows go the other way, so the held-out share stays: drawn at random (seeded) among rows whose classes all keep
    another train row, so classes give in proportion to their size, as stratification would. Fewer when too few can."""
    classes = [{str(v) for v in row} if multi_label else {str(row)} for row in labels]
    counts = Counter(c for i in keep for c in classes[i])
    returned = []
    for i in held:
        if any(not counts[c] for c in classes[i]):
            returned.append(i)
            counts.update(classes[i])
    if not returned:
        return keep, held
    order = sorted(keep)
    random.Random(seed).shuffle(order)
    swapped = []
    for j in order:
        if len(swapped) == len(returned):
            break
        if all(counts[c] >= 2 for c in classes[j]):
            swapped.append(j)
            counts.subtract(classes[j])
    back, out = set(returned), set(swapped)
    return [j for j in keep if j not in out] + returned, [i for i in held if i not in back] + swapped


def _subset(split: Split, rows: list[int], name: str) -> Split:
    pick = lambda values: [values[i] for i in rows] if values is not None else None  # noqa: E731
    return Split(name, pick(split.texts), pick(split.pairs), pick(split.labels), [split.row(i) for i in rows])


# ---------------------------------------------------------------------------- tokenising and batching

@dataclass
class Encoded:
    """Token ids per example (unpadded), in the split's order, and how its texts were read (`reading`): under
    sliding_window an example is a window, `reading.text_of` its text, and its label is its text's."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int] | list[list[float]] | None
    multi_label: bool = False  # labels are 0/1 rows over the label names
    reading: Reading | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(split: Split, tokenizer, max_length: int, labels: LabelMap | None = None, long_text: LongText | None = None) -> Encoded:
    """Tokenise every text once, in batch with the fast tokenizer, no padding here. truncate (the default): long texts
    cut first (see `model.CHARS_PER_TOKEN`), then truncated to max_length; head_tail and sliding_window: as
    `longtext.read` says."""
    long_text = long_text or LongText()
    label_ids = labels.encode(split.labels, split.name) if labels is not None and split.labels is not None else None
    multi_label = labels is not None and labels.multi_label
    if long_text.mode != "truncate":
        long_text.check_pairs(split.pairs)
        rows = longtext.read(_backend(tokenizer), split.texts, max_length, long_text)
        wants_types = "token_type_ids" in tokenizer.model_input_names
        if label_ids is not None and rows.reading.windowed:
            label_ids = [label_ids[i] for i in rows.reading.text_of]
        return Encoded(rows.input_ids, rows.type_ids if wants_types else None, label_ids, multi_label, rows.reading)
    input_ids, types, over = _truncated(split, tokenizer, max_length)
    return Encoded(input_ids, types, label_ids, multi_label, Reading(over))


def _truncated(split: Split, tokenizer, max_length: int) -> tuple[list[list[int]], list[list[int]] | None, list[bool]]:
    """Token ids and segment ids truncated to max_length, and per row whether the text was longer."""
    wants_types = "token_type_ids" in tokenizer.model_input_names
    options = {"truncation": True, "max_length": max_length, "return_attention_mask": False, "return_token_type_ids": wants_types}

    def encode(texts, pairs):
        out = tokenizer(texts, pairs, **options)
        types = out["token_type_ids"] if wants_types else [None] * len(texts)
        return list(zip(out["input_ids"], types, _overflowed(out, max_length), strict=True))

    input_ids, types, over = truncate_long_texts(encode, split.texts, split.pairs, max_length)
    return input_ids, types if wants_types else None, over


def _overflowed(out, max_length: int) -> list[bool]:
    """Per row of a tokenizer's output, whether truncation cut tokens off: a fast tokenizer keeps what it cut
    (`overflowing`); a Python one is asked only for the kept ids, so a row that fills max_length counts as cut."""
    encodings = getattr(out, "encodings", None)
    if encodings is None:
        return [len(ids) >= max_length for ids in out["input_ids"]]
    return [bool(encoding.overflowing) for encoding in encodings]


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer: what head_tail and sliding_window read with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"data.long_text: head_tail and sliding_window need a fast tokenizer (tokenizer.json), and "
                         f"{type(tokenizer).__name__} is not one; use long_text: truncate")
    return backend


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices with similar lengths, in an order that is seeded per epoch.

    Shuffle all indices, cut them into mega-batches of `MEGABATCH_FACTOR` batches, sort each by
    length and cut it into batches, then shuffle the batches. Same seed and epoch, same order.
    The one short batch (if any) always comes last: Accelerate shards batches across processes
    in groups of N and tops up only a short *last* batch; a short batch inside the epoch would
    make it drop that whole group of batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * MEGABATCH_FACTOR
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        full = len(self.lengths) // self.batch_size  # the short batch, if any, is batches[-1]
        for b in torch.randperm(full, generator=generator).tolist():
            yield batches[b]
        if len(batches) > full:
            yield batches[-1]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation and prediction: batches of similar length, longest first; callers restore order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class Collator:
    """Index batch -> tensors padded to the batch's longest sequence (never to max_length)."""

    def __init__(self, encoded: Encoded, pad_id: int) -> None:
        self.encoded = encoded
        self.pad_id = pad_id

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        types = [self.encoded.token_type_ids[i] for i in indices] if self.encoded.token_type_ids is not None else None
        padded = pad_batch([self.encoded.input_ids[i] for i in indices], types, self.pad_id)
        batch = {name: torch.from_numpy(array) for name, array in padded.items()}
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        if self.encoded.labels is not None:
            rows = [self.encoded.labels[i] for i in indices]
            # multi-label rows are 0/1 vectors: BCE wants them as floats
            batch["labels"] = torch.tensor(rows, dtype=torch.float32 if self.encoded.multi_label else torch.long)
        return batch


def loader(encoded: Encoded, pad_id: int, batches) -> torch.utils.data.DataLoader:
    """A DataLoader over `encoded` whose batches come from `batches` (a sampler or a list of index lists).

    It has its own generator: iterating never draws from the global torch RNG, so dropout after a
    resumed checkpoint replays exactly (a DataLoader otherwise draws a seed from it per epoch).
    """
    return torch.utils.data.DataLoader(range(len(encoded)), batch_sampler=batches, collate_fn=Collator(encoded, pad_id),
                                       generator=torch.Generator())
