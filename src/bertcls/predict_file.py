"""Predicting over a file: a csv/tsv/jsonl file of any size in, the same rows with predictions out.

Rows are read CHUNK_ROWS at a time, so memory stays flat however large the file; within a chunk
the predictor sorts texts by length (little padding) and hands results back in input order, so
the output keeps the input's row order and every input column.

--output is written whole or not at all (a temporary file renamed into place); an existing file is replaced only
with `overwrite`, and never one of a run's files or one in the model folder predicted with (`check_output`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

from bertcls import atomic, runs, tsv
from bertcls.errors import DataError, RunError, UsageError, not_utf8

CHUNK_ROWS = 10_000
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
PREDICTED, SCORE = "predicted", "score"
# Long texts are texts, not an error: csv's default field limit is 128 KiB (tsv.check_fields lifts it too).
FIELD_SIZE_LIMIT = 2**31 - 1


def file_format(path: Path, what: str) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None and what == "--output" and str(path) in ("-", "/dev/stdout"):
        raise DataError(f"--output {path}: leave out --output to write JSON lines to stdout")
    if kind is None:
        raise DataError(f"{what} {path}: unsupported extension '{path.suffix}'; use one of {', '.join(FORMATS)} (jsonl, not json, streams)")
    return kind


def check_output(source: Path, output: Path, *, overwrite: bool = False, model: Path | None = None) -> None:
    """Refuse, before any work, an --output that is a folder, has no format we write, is the input, is a file of a
    bertcls run (`run_file`) or lies in the model folder `model`, both even with `overwrite`, or that already
    exists, unless `overwrite`."""
    if output.is_dir():
        raise DataError(f"--output {output} is a folder; give a file name")
    file_format(output, "--output")
    atomic.check_folder_path(output.parent, f"--output {output}: its folder")
    if atomic.link_loop(output):
        raise DataError(f"--output {output} is a link that leads back to itself; remove it, or choose another file")
    if output.resolve() == Path(source).resolve() or (output.exists() and os.path.samefile(output, source)):
        raise DataError(f"--output {output} is the input file; write the predictions somewhere else")
    # A link at --output itself is replaced by the new file, not written through; links above it are followed.
    target = Path(os.path.realpath(output.parent)) / output.name
    if owner := runs.run_file(target):
        folder, name = owner
        kind = "run" if runs.is_run(folder) else "search"
        raise RunError(f"--output {output} is {name} of the {kind} in {runs.as_given(output, folder, name)}, which predict never "
                       f"writes over (not even with --overwrite); choose a file outside the {kind}'s own files")
    if runs.in_model_folder(target, model):
        raise RunError(f"--output {output} is inside the model folder {model}; choose a file outside it")
    if not overwrite and (output.exists() or output.is_symlink()):
        raise UsageError(f"--output {output} already exists; pass --overwrite to replace it, or choose another file")


def read_chunks(path: Path, chunk_rows: int = CHUNK_ROWS, on_bytes=None) -> Iterator[list[dict[str, Any]]]:
    """Rows of `path` as dicts, `chunk_rows` at a time; `on_bytes(n)` is told how far into the file we are."""
    kind = file_format(path, "--file")
    if not path.is_file():
        if path.exists() and not path.is_dir():  # a pipe, a device: read twice (checked whole, then streamed)
            raise DataError(f"--file {path}: not a regular file (a pipe?); save the rows to a file first, or pipe texts "
                            "one per line into `bertcls predict -`")
        raise DataError(f"--file {path}: no such file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise DataError(f"--file {path}: cannot read it ({exc.strerror}); check its permissions") from None
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        if kind == "jsonl":
            rows = (_json_row(line, n, path) for n, line in enumerate(text, start=1) if line.strip())
        else:
            # Checked whole first, as training checks it: a ragged row or an unclosed quote would shift or merge rows.
            # A tsv as in training: GLUE-style (quote characters are text) or csv-quoted, as bertcls.tsv finds it.
            read_with, header = tsv.check_fields(path, kind)
            unnamed = [str(number) for number, name in enumerate(header, start=1) if not name]
            if len(unnamed) > 1:  # read by name, all but the last would be lost; one (a pandas index) is kept
                raise DataError(f"--file {path}: columns {', '.join(unnamed[:-1])} and {unnamed[-1]} have no name in the "
                                "header; name them (one unnamed column, such as a pandas index, is fine)")
            options = {"delimiter": "\t", "quoting": read_with} if kind == "tsv" else {}
            csv.field_size_limit(FIELD_SIZE_LIMIT)
            rows = csv.DictReader(text, **options)
        chunk: list[dict[str, Any]] = []
        try:
            for row in rows:
                chunk.append(row)
                if len(chunk) == chunk_rows:
                    yield chunk
                    chunk = []
                    if on_bytes:
                        on_bytes(raw.tell())
        except UnicodeDecodeError as exc:
            raise DataError(not_utf8(f"--file {path}", path, exc, raw)) from None
        if chunk:
            yield chunk
        if on_bytes:
            on_bytes(raw.tell())


def _json_row(line: str, number: int, path: Path) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"--file {path}: line {number} is not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"--file {path}: line {number} is not a JSON object")
    return row


def texts_of(chunk: list[dict[str, Any]], column: str, first_row: int, path: Path, option: str) -> list[str]:
    """The texts of `column`; a DataError naming the data row of one that is missing or that the model cannot read."""
    from bertcls.predict import text_problem

    if column not in chunk[0]:
        raise DataError(f"--file {path}: no column {column!r} (columns: {', '.join(map(str, chunk[0]))}); pass {option}")
    texts = []
    for i, row in enumerate(chunk):
        value = row.get(column)
        if value is None or isinstance(value, float) and math.isnan(value):  # NaN: a missing value, as pandas writes one
            raise DataError(f"--file {path}: data row {first_row + i + 1} has no {column!r}; fill it in or remove the row")
        if isinstance(value, bool) or isinstance(value, float) and math.isinf(value):
            raise DataError(f"--file {path}: data row {first_row + i + 1}: its {column!r} is {json.dumps(value)}, not text; "
                            "give text or remove the row")
        text = str(value) if isinstance(value, (int, float)) else value  # a number in a JSON line reads as its digits
        problem = text_problem(text)
        if problem:
            raise DataError(f"--file {path}: data row {first_row + i + 1}: its {column!r} {problem}")
        texts.append(text)
    return texts


def added_columns(top_k: int | None) -> list[str]:
    """The columns the output adds to each row (see `prediction_fields`)."""
    return [PREDICTED, SCORE, *(f"{kind}_{rank}" for rank in range(1, (top_k or 0) + 1) for kind in ("label", "score"))]


def prediction_fields(result, top_k: int | None) -> dict[str, Any]:
    """The columns a prediction adds to its row: its record (`Prediction.record`, what --json prints and serve
    answers) as columns: predicted (a multi-label model's list of labels, joined in csv/tsv: see `_Writer`), score,
    and with top_k the K best as label_i, score_i."""
    record = result.record("", top_k, probabilities=False)
    fields: dict[str, Any] = {PREDICTED: record.get("labels", record["label"]), SCORE: record["score"]}
    for rank, best in enumerate(record.get("top_k", []), start=1):
        fields[f"label_{rank}"], fields[f"score_{rank}"] = best["label"], best["score"]
    return fields


class _Writer:
    """Rows with their predictions as CSV/TSV or JSON lines, to an open text file; `source` names the input in errors,
    `label_separator` joins a multi-label prediction's labels in a csv/tsv (as the model's training data did)."""

    def __init__(self, file: IO[str], kind: str, source: Path, label_separator: str = runs.LABEL_JOIN) -> None:
        self.file, self.kind, self.source, self.label_separator = file, kind, source, label_separator
        self.columns: list[str] | None = None  # a CSV's or TSV's, from its first row
        self.csv: csv.DictWriter | None = None
        self.quoted: csv.DictWriter | None = None

    def write(self, rows: list[dict[str, Any]], first_row: int) -> None:
        """Write `rows`, the input's data rows from `first_row + 1` on."""
        if self.kind == "jsonl":
            self.file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            return
        if self.columns is None:
            self.columns = list(rows[0])
            if self.kind == "tsv":
                self.file.write("\t".join(map(tsv.written, self.columns)) + "\n")
            else:
                self.csv = csv.DictWriter(self.file, fieldnames=self.columns, lineterminator="\n")
                self.quoted = csv.DictWriter(self.file, fieldnames=self.columns, lineterminator="\n", quoting=csv.QUOTE_ALL)
                self._write_csv({name: name for name in self.columns})  # the header
        columns = set(self.columns)
        for i, row in enumerate(rows):  # JSON lines may differ; a row short of a column gets it empty
            if not row.keys() <= columns:
                extra = ", ".join(repr(k) for k in row if k not in columns)
                raise DataError(f"--file {self.source}: data row {first_row + i + 1} has {extra}, which the first row lacks; "
                                f"a {self.kind} --output takes its columns from the first row: give every row the same keys, "
                                "or write a .jsonl --output")
        rows = [{k: self._cell(k, v) for k, v in row.items()} for row in rows]
        if self.kind == "tsv":  # each field as the input had it: only what a TSV cannot hold bare goes in quotes
            self.file.writelines("\t".join(tsv.written("" if row.get(k) is None else str(row[k])) for k in self.columns) + "\n"
                                 for row in rows)
            return
        for row in rows:
            self._write_csv(row)

    def _cell(self, column: str, value: Any) -> Any:
        """A value as a csv/tsv field: a multi-label prediction's labels joined; a JSON line's list, object or boolean
        as JSON text, so that it reads back as it was (not as Python's repr)."""
        if column == PREDICTED and isinstance(value, list):
            return self.label_separator.join(value)
        if isinstance(value, (list, dict, bool)):
            return json.dumps(value, ensure_ascii=False)
        return value

    def _write_csv(self, row: dict[str, Any]) -> None:
        # csv quotes only the line breaks of its lineterminator: a row with a bare \r goes all in quotes
        (self.quoted if any(isinstance(v, str) and "\r" in v for v in row.values()) else self.csv).writerow(row)


def predict_file(predictor, source: Path, output: Path | None, *, text_column: str, pair_column: str | None = None,
                 top_k: int | None = None, chunk_rows: int = CHUNK_ROWS, progress: bool = True, overwrite: bool = False,
                 over: list[int] | None = None, label_separator: str = runs.LABEL_JOIN) -> int:
    """Predict every row of `source` and write rows + predictions to `output` (stdout as JSON lines if None); return the row count.
    An existing `output` is replaced only with `overwrite` (see `check_output`). `over`: given, it gets the data row number
    of every text longer than the model's max_length. `label_separator`: what joins a multi-label prediction's labels in a
    csv/tsv `output`. A failed predict leaves no folder it made for `output`."""
    from tqdm.auto import tqdm

    source = Path(source)
    if source.is_dir():
        raise DataError(f"--file {source} is a folder; give a csv, tsv or jsonl file")
    kind = "jsonl" if output is None else file_format(output, "--output")
    if output is not None:
        check_output(source, output, overwrite=overwrite)
    bar = tqdm(total=source.stat().st_size if source.is_file() else None, unit="B", unit_scale=True, desc="predict",
               disable=None if progress else True, leave=False)
    rows_done = 0
    # --output is written under a temporary name and renamed when complete (atomic.atomic_file); stdout as it goes.
    # A failed predict leaves no folder it made for `output` (atomic.making).
    try:
        with atomic.making(output.parent) if output is not None else nullcontext(), \
                atomic.atomic_file(output) if output is not None else nullcontext() as tmp, \
                open(tmp, "w", encoding="utf-8", newline="") if tmp else nullcontext(sys.stdout) as out:
            writer = _Writer(out, kind, source, label_separator)
            for chunk in read_chunks(source, chunk_rows, on_bytes=lambda pos: bar.update(pos - bar.n)):
                texts = texts_of(chunk, text_column, rows_done, source, "--text-column")
                pairs = texts_of(chunk, pair_column, rows_done, source, "--text-pair-column") if pair_column else None
                taken = [name for name in added_columns(top_k) if any(name in row for row in chunk)]
                if taken:
                    raise DataError(f"--file {source}: already has column(s) {', '.join(taken)}, which the output adds; rename them")
                results = predictor.predict(texts, pairs)
                if over is not None:
                    over.extend(rows_done + i + 1 for i, result in enumerate(results) if result.truncated)
                writer.write([{**row, **prediction_fields(result, top_k)} for row, result in zip(chunk, results, strict=True)],
                             rows_done)
                rows_done += len(chunk)
            if rows_done == 0:
                raise DataError(f"--file {source}: no rows")
            out.flush()
            if output is not None and not overwrite and (output.exists() or output.is_symlink()):  # made while we predicted
                raise UsageError(f"--output {output} appeared while predicting; pass --overwrite to replace it, or choose another file")
    finally:
        bar.close()
    return rows_done
