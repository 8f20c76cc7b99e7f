"""csv and TSV files: the quoting a TSV is read (and written) with, and the shape every row must have.

Two kinds of TSV are common. GLUE-style: quote characters are part of the text (`"opens a quote`,
`it's "fine`) and a text never holds a tab or a newline. csv-quoted, as pandas `to_csv(sep="\t")`
and Python's csv module write it: a field that holds a tab, a newline or a quote is put in quotes,
with quotes inside doubled (`"a<TAB>b"`, `"say ""hi"" twice"`). A file is read as csv-quoted when some field
opens with a quote and every field that does is a well-formed quoted field (its closing quote followed
by a tab or the end of the line), and some of them hold what csv writers quote for (a tab, a line break,
a doubled quote); otherwise as GLUE-style, the way it was always read (so `"1"` keeps its quotes). A line
break alone is no sign when every line holds as many tabs as the header: then the "field" spans whole rows.

A csv or TSV file is also checked whole before it is read (`check_fields`): a column named twice, or a
row with more or fewer fields than the header, is an error naming the line, never values shifted into
other columns. Stdlib only: both training (bertcls.data) and streaming prediction (bertcls.predict_file)
ask here.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from bertcls.errors import BertclsWarning, DataError, not_utf8

# A quote that opens a field: at the start of a line or right after the delimiter (a TSV's tab, a csv's comma).
_OPENING_QUOTE = {delimiter: re.compile(f'(?:^|(?<={delimiter}))"') for delimiter in ("\t", ",")}
# Inside a quoted field: anything but a lone quote (a doubled quote is a quote in the text).
_QUOTED_TEXT = re.compile(r'(?:[^"]|"")*')


def quoting(path: str | Path) -> int:
    """csv.QUOTE_MINIMAL for a csv-quoted TSV file, csv.QUOTE_NONE for a GLUE-style one. A file that reads whole
    either way (see `_quoting`) is read GLUE-style, with a warning that says so."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        read_with, either = _quoting(f)
    if either is not None:
        warnings.warn(f"{path}: lines {either[0]}-{either[1]} read as {either[1] - either[0] + 1} rows, GLUE-style (a quote is part of "
                      "the text), though they also read as one row with a quoted text holding a tab and a line break; if "
                      "the file is csv-quoted (pandas to_csv(sep=\"\\t\"), the csv module), save it as a csv file instead",
                      BertclsWarning, stacklevel=2)
    return read_with


def quoting_of(lines: Iterable[str]) -> int:
    """As `quoting`, for the lines of a file (line ends kept)."""
    return _quoting(lines)[0]


def _quoting(lines: Iterable[str]) -> tuple[int, tuple[int, int] | None]:
    """As `quoting_of`, and for a file read GLUE-style that would also read whole csv-quoted, the first and last line
    of the first quoted text that makes it so (else None). That is a quoted text over several lines in a file whose
    lines each hold the header's tabs, opened and closed after as many tabs on their lines: GLUE-style, one row whose
    text opens with a quote and a later one whose text ends with one; csv-quoted, one text holding a tab and a line
    break, as in `title<TAB>subtitle<LF>body`. Nothing else in such a file tells the two apart."""
    needed, inside = False, False  # a quoted field that needs its quotes seen; a quoted field runs on from the last line
    runs_on = False  # some quoted field holds a line break
    tabs: int | None = None  # the header's tab count, while every line read GLUE-style has that many
    opened: tuple[int, int] = (0, 0)  # the line the quoted field running on opened on, and the tabs before its quote
    either: tuple[int, int] | None = None
    for number, line in enumerate(lines):
        if number == 0:
            tabs = line.count("\t")
        elif tabs is not None and line.strip("\r\n") and line.count("\t") != tabs:
            tabs = None
        pos: int | None = 0
        if inside:
            pos = _after_closing_quote(line, 0)
            if pos is None:
                continue
            if either is None and pos > 0 and line.count("\t", 0, pos) == opened[1]:
                either = (opened[0] + 1, number + 1)
            inside = False
        elif '"' not in line:
            continue
        while pos is not None and pos >= 0 and (opening := _OPENING_QUOTE["\t"].search(line, pos)) is not None:
            pos = _after_closing_quote(line, opening.end())
            # What csv writers put in quotes: a text with a line break (it runs on: see below), a tab or a (doubled) quote.
            # `"1"` alone is no sign of csv quoting: GLUE-style texts may be quoted titles.
            if pos is None:
                runs_on, opened = True, (number, line.count("\t", 0, opening.start()))
            elif pos > 0 and ("\t" in line[opening.end():pos - 1] or '""' in line[opening.end():pos - 1]):
                needed = True
        if pos is not None and pos < 0:
            return csv.QUOTE_NONE, None
        inside = pos is None
    # A text with a line break is csv quoting only where the lines do not each read as a whole GLUE-style row:
    # in a GLUE-style file, a text that opens with a quote and a later one that ends with one enclose whole rows.
    if needed and not inside:
        return csv.QUOTE_MINIMAL, None
    if runs_on and not inside:
        return (csv.QUOTE_MINIMAL, None) if tabs is None else (csv.QUOTE_NONE, either)
    return csv.QUOTE_NONE, None


def _after_closing_quote(line: str, start: int) -> int | None:
    """From inside a quoted field at `start`: the index after its closing quote; None when the field runs on past
    this line; -1 when text follows the closing quote (then the quote was text: GLUE-style)."""
    end = _QUOTED_TEXT.match(line, start).end()
    if end == len(line):
        return None
    after = end + 1
    return after if after == len(line) or line[after] in "\t\r\n" else -1


def written(field: str) -> str:
    """`field` as a TSV line holds it, to be read back intact (by `quoting` and csv, or pandas): as it is, or in
    quotes with quotes inside doubled where it holds a tab or a line break, or opens with a quote. A quote inside
    a text stays as it is, GLUE-style. (A file whose only quoted texts hold a tab and a line break, and leave each line
    the header's tabs, also reads GLUE-style: `quoting` reads it so, and warns.)"""
    if "\t" in field or "\n" in field or "\r" in field or field.startswith('"'):
        return '"' + field.replace('"', '""') + '"'
    return field


TSV_TAB_FIX = ('a text that holds a tab must be in quotes, with quotes inside doubled ("a<TAB>b"), '
               'as pandas to_csv(sep="\\t") and the csv module write it')


def check_fields(path: Path, kind: str) -> tuple[int, list[str]]:
    """Every row of a csv/tsv file has as many fields as its header: pandas would otherwise read an
    extra field as an index column and shift every value, or fill a missing one with null.

    Returns the csv quoting the file is read with (a TSV's, as `bertcls.tsv.quoting` finds it), and the header."""
    delimiter, read_with = (",", csv.QUOTE_MINIMAL) if kind == "csv" else ("\t", quoting(path))
    csv.field_size_limit(2**31 - 1)  # long texts are texts, not an error (the default limit is 128 KiB)
    with open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=read_with)
        try:
            header = next(reader, [])
            problem = duplicate_columns(header)
            if problem:
                raise DataError(f"{path}: {problem}")
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row or len(row) == len(header):
                    continue
                if len(row) < len(header) and read_with != csv.QUOTE_NONE and (end > start or _never_closed(path, start, delimiter)):
                    runs = f"runs to line {end}" if end > start else "is never closed"
                    raise DataError(f"{path}: the quoted text opened on line {start} {runs}; close its quote, "
                                    'or write a quote inside a text as ""')
                fix = ("quote texts that hold commas (\"like, this\")" if kind == "csv" else TSV_TAB_FIX) \
                    if len(row) > len(header) else "fill in the missing field(s)"
                raise DataError(f"{path}: line {start} has {len(row)} field(s) but the header has {len(header)}; {fix}")
        except UnicodeDecodeError as exc:
            raise DataError(not_utf8(str(path), path, exc, raw)) from None
    return read_with, header


def _never_closed(path: Path, number: int, delimiter: str) -> bool:
    """Whether line `number` of `path` (the file's last row) opens a quoted field it does not close: a csv reader
    takes such a field to the end of the file."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        line = next(itertools.islice(f, number - 1, None), "")
    pos = 0
    while (opening := _OPENING_QUOTE[delimiter].search(line, pos)) is not None:
        after = _QUOTED_TEXT.match(line, opening.end()).end() + 1
        if after > len(line):
            return True
        pos = after
    return False


def duplicate_columns(header: Sequence[str]) -> str | None:
    """What is wrong with a header that names a column twice, or None: pandas would read the first and rename
    the second (`text.1`), so the file's other column would be silently ignored. Unnamed columns (empty
    names, which pandas calls `Unnamed: N`) are not compared."""
    where: dict[str, list[int]] = {}
    for number, name in enumerate(header, start=1):
        if name:
            where.setdefault(name, []).append(number)
    name, numbers = next(((name, numbers) for name, numbers in where.items() if len(numbers) > 1), (None, []))
    if name is None:
        return None
    if len(numbers) == 2:
        return f"column {name!r} appears twice (columns {numbers[0]} and {numbers[1]}); rename one"
    return f"column {name!r} appears {len(numbers)} times (columns {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}); rename all but one"
