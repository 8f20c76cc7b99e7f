import json
import math

import pytest
import torch

from bertcls.config import DataConfig
from bertcls.data import Collator, Encoded, LabelMap, LengthGroupedBatches, load_splits, read_split, sorted_batches
from bertcls.errors import DataError
from bertcls.tsv import duplicate_columns
from conftest import toy_rows, write_csv


def cfg(train, **kw) -> DataConfig:
    return DataConfig(train=str(train), **kw)


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_format_loads_the_same_rows(tmp_path, ext):
    rows = [("good film", "pos"), ("bad film", "neg"), ('a "quoted", text', "pos")]
    path = tmp_path / f"d.{ext}"
    if ext in ("csv", "tsv"):
        write_csv(path, rows, delimiter="," if ext == "csv" else "\t")
        if ext == "tsv":  # GLUE-style: quotes are plain characters, never field delimiters
            path.write_text("text\tlabel\ngood film\tpos\nbad film\tneg\na \"quoted\", text\tpos\n", encoding="utf-8")
    elif ext == "json":
        path.write_text(json.dumps([{"text": t, "label": label} for t, label in rows]), encoding="utf-8")
    elif ext == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="utf-8")
    else:
        import pandas as pd

        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(path)
    split = read_split(str(path), cfg(path), "train")
    assert split.texts == [t for t, _ in rows]
    assert split.labels == ["pos", "neg", "pos"]


def test_tsv_text_that_starts_with_a_quote_stays_intact(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('text\tlabel\n"opens a quote\t1\nnext row\t0\n', encoding="utf-8")
    split = read_split(str(path), cfg(path), "train")
    assert split.texts == ['"opens a quote', "next row"] and split.labels == ["1", "0"]


def test_csv_with_bom_crlf_and_embedded_newline(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufefftext,label\r\n"two\r\nlines",a\r\nplain,b\r\n'.encode("utf-8"))
    split = read_split(str(path), cfg(path), "train")
    assert split.texts == ["two\r\nlines", "plain"] and split.labels == ["a", "b"]  # the newline inside quotes kept as written


@pytest.mark.parametrize(
    "content, message",
    [
        (b"text,label\n", "no rows"),
        (b"", "the file is empty"),
        (b"text,label\n\xff\xfe bad,1\nok,0\n", "not UTF-8 text"),
        (b"sentence,label\nhi,1\n", "no column 'text' (columns: sentence, label); set data.text_column"),
        (b"text,label\nhi,1\n,0\n   ,1\n", "2 empty or missing text(s) in column 'text' (data rows 2, 3)"),
        (b"text,label\nhi,1\nho,\n", "1 missing label(s)"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_split(str(path), cfg(path), "train")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_parquet_file_without_rows_says_so(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path)
    with pytest.raises(DataError) as err:
        read_split(str(path), cfg(path), "train")
    assert str(err.value) == f"{path}: no rows"


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_split(str(tmp_path / "nope.csv"), cfg("x.csv"), "train")
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="unsupported extension '.xlsx'"):
        read_split(str(odd), cfg(odd), "train")


def test_label_map_is_sorted_numerically_for_integers():
    assert LabelMap.from_values([10, 2, 2, 1]).names == ("1", "2", "10")
    assert LabelMap.from_values(["b", "a"]).id2label == {0: "a", 1: "b"}
    labels = LabelMap.from_values(["10", "2", "2"])  # integers a json file quotes sort as integers too
    assert labels.names == ("2", "10") and labels.encode(["2", "10"], "train") == [0, 1]
    assert LabelMap.from_values(["007", "10"]).names == ("007", "10")  # "007" is a name, not 7


def test_a_single_class_is_an_error():
    with pytest.raises(DataError, match="only one class"):
        LabelMap.from_values(["a", "a"])


def test_test_label_unknown_to_train_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("x y", "a"), ("y z", "b"), ("z x", "a"), ("x z", "b")])
    test = write_csv(tmp_path / "test.csv", [("x", "a"), ("y", "c")])
    with pytest.raises(DataError, match="labels not seen in train: 'c'"):
        load_splits(cfg(train, test=str(test)), seed=0)


def test_json_true_and_false_are_the_labels_true_and_false_as_a_csv_writes_them(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in [("x y", True), ("y z", False), ("z x", True)]),
                     encoding="utf-8")
    validation = write_csv(tmp_path / "validation.csv", [("x", "true"), ("y", "false")])
    split, held, _, labels = load_splits(cfg(train, validation=str(validation)), seed=0)
    assert split.labels == ["true", "false", "true"] and labels.names == ("false", "true")
    assert labels.encode(held.labels, "validation") == [1, 0]


def test_a_jsonl_file_with_blank_lines_and_labels_of_two_json_types_reads(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "x y", "label": 1}\n\n{"text": "y z", "label": "x"}\n  \n{"text": "z x", "label": "1"}\n\n', encoding="utf-8")
    split, held, _, labels = load_splits(cfg(train, validation=str(write_csv(tmp_path / "v.csv", [("x", "1"), ("y", "x")]))), seed=0)
    assert split.texts == ["x y", "y z", "z x"] and labels.names == ("1", "x")
    assert labels.encode(split.labels, "train") == [0, 1, 0] and labels.encode(held.labels, "validation") == [0, 1]


def test_validation_split_is_stratified_and_seeded(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(100, 0))
    a = load_splits(cfg(train, validation_split=0.2), seed=3)
    b = load_splits(cfg(train, validation_split=0.2), seed=3)
    assert a[1].texts == b[1].texts and len(a[1]) == 20 and len(a[0]) == 80
    assert sorted(a[1].labels).count("positive") == 10


def test_length_grouped_batches_cover_everything_once_and_are_seeded():
    lengths = [(i * 7) % 23 + 1 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=1)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(203))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # within a batch, lengths are close: far less padding than random batches
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in first)
    assert padding < 0.2 * sum(lengths)


def test_collator_pads_to_the_longest_in_the_batch_only():
    enc = Encoded([[5, 6, 7], [5], [5, 6]], [[0, 0, 0], [0], [0, 1]], [1, 0, 1])
    batch = Collator(enc, pad_id=0)([1, 2])
    assert batch["input_ids"].tolist() == [[5, 0], [5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0], [0, 1]]
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [1, 2]
    assert batch["input_ids"].dtype == torch.long


def test_sorted_batches_longest_first():
    assert sorted_batches([1, 5, 3, 4], 2) == [[1, 3], [2, 0]]


def test_ordinary_validation_split_is_sklearns_stratified_split(tmp_path):
    """Every class keeps train rows anyway: the rows held out are exactly sklearn's, as before (results stay reproducible)."""
    from sklearn.model_selection import train_test_split

    rows = toy_rows(100, 0) + [(f"neutral remark {i}", "neutral") for i in range(7)]
    train, validation, _, _ = load_splits(cfg(write_csv(tmp_path / "train.csv", rows), validation_split=0.2), seed=5)
    keep, held = train_test_split(list(range(len(rows))), test_size=22, random_state=5, stratify=[label for _, label in rows])
    assert validation.texts == [rows[i][0] for i in sorted(held)] and train.texts == [rows[i][0] for i in sorted(keep)]


RARE = [(f"good text number {i}", "pos") for i in range(20)] + [(f"bad text number {i}", "neg") for i in range(20)] + [("a rare one", "rare")]


@pytest.mark.parametrize("rows, share, task", [
    (RARE, 0.1, "single_label"),  # a class of one row: no stratification, and a random split may hold that row out
    ([(f"text {i}", "a") for i in range(2)] + [(f"text {i}", "b") for i in range(2, 8)], 0.7, "single_label"),  # stratified can empty a class
    ([(f"text {i}", "x;y") for i in range(20)] + [(f"text {i}", "x") for i in range(20, 40)] + [("only z", "z")], 0.1, "multi_label"),
], ids=["singleton-class", "stratified-large-share", "multi-label"])
def test_validation_split_keeps_a_train_row_of_every_class(tmp_path, rows, share, task):
    path = write_csv(tmp_path / "train.csv", rows)
    for seed in range(30):
        train, validation, _, labels = load_splits(cfg(path, validation_split=share, task=task), seed=seed)
        in_train = {str(v) for row in train.labels for v in (row if task == "multi_label" else [row])}
        assert in_train == set(labels.names), f"seed {seed}: no train row of {set(labels.names) - in_train}"
        assert len(validation) == math.ceil(len(rows) * share) and len(train) + len(validation) == len(rows)  # the share is kept
        assert load_splits(cfg(path, validation_split=share, task=task), seed=seed)[1].texts == validation.texts  # seeded


def test_validation_split_that_must_empty_a_class_is_refused(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("the first text", "a"), ("the second text", "b"), ("the third text", "c"), ("the fourth text", "d")])
    with pytest.raises(DataError) as err:
        load_splits(cfg(path), seed=0)
    assert str(err.value) == ("train: 4 rows are too few to hold out data.validation_split=0.1 and keep a train row of every class; "
                              "add rows or give data.validation")


@pytest.mark.parametrize("header, problem", [
    (["text", "label", "text"], "column 'text' appears twice (columns 1 and 3); rename one"),
    (["a", "label", "a", "b", "a"], "column 'a' appears 3 times (columns 1, 3 and 5); rename all but one"),
    (["text", "label", "", ""], None),  # unnamed columns: pandas names each `Unnamed: N`
    (["text", "Text", "label"], None),
])
def test_duplicate_columns(header, problem):
    assert duplicate_columns(header) == problem


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet"])
def test_a_column_named_twice_is_refused(tmp_path, ext):
    path = tmp_path / f"d.{ext}"
    rows = [("great", "positive", "awful"), ("awful", "negative", "great")]
    if ext == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table([pa.array(column) for column in zip(*rows, strict=True)], names=["text", "label", "text"]), path)
    else:
        write_csv(path, rows, header=("text", "label", "text"), delimiter="," if ext == "csv" else "\t")
    with pytest.raises(DataError) as err:
        read_split(str(path), cfg(path), "train")
    assert str(err.value) == f"{path}: column 'text' appears twice (columns 1 and 3); rename one"


def test_parquet_text_stored_as_bytes_is_read_as_its_text(tmp_path):
    # Spark and some Arrow writers store strings as binary, without the UTF-8 annotation
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bin.parquet"
    texts, labels = ["a wonderful film", "naïve, dull 🙁"], ["pos", "neg"]
    pq.write_table(pa.table({"text": pa.array([t.encode() for t in texts], pa.binary()),
                             "label": pa.array([label.encode() for label in labels], pa.binary())}), path)
    split = read_split(str(path), cfg(path), "train")
    assert (split.texts, split.labels) == (texts, labels)
    pq.write_table(pa.table({"text": pa.array([b"fine", b"\xff\xfe broken"], pa.binary()), "label": ["pos", "neg"]}), path)
    with pytest.raises(DataError) as err:
        read_split(str(path), cfg(path), "train")
    assert str(err.value) == f"train ({path}): column 'text' holds bytes that are not UTF-8 text (data rows 2); write it as text"


def test_a_validation_split_that_leaves_too_few_train_rows_says_to_lower_it(tmp_path):
    path = write_csv(tmp_path / "train.csv", toy_rows(100, 0))
    with pytest.raises(DataError) as err:
        load_splits(cfg(path, validation_split=0.99), seed=0)
    assert str(err.value) == ("train: data.validation_split=0.99 of 100 rows would leave 1 to train on; lower data.validation_split, "
                              "or give data.validation")
