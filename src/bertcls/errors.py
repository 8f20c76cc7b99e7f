"""Errors a user can cause, each with a message ready to print.

    BertclsError          base: the CLI prints "Error: <message>" and exits 2
    ├── UsageError        command-line options that do not go together, or are missing
    ├── ConfigError       the YAML file or a --set override is wrong
    ├── DataError         a data file, column, label or text is wrong
    ├── ModelError        a model name or folder cannot be used
    ├── RunError          a run folder is missing, unfinished or already taken
    │   ├── StoppedWithAnother  another process of a launch failed, and says why
    │   └── WriteError    the file system refused a write: disk full, a file over a size limit, read-only,
    │                     a file where a folder goes
    ├── TrainingError     training cannot go on (the loss became NaN, the GPU ran out of memory)
    └── HubError          the Hugging Face Hub cannot be reached (offline) or refused (not logged in)

    BertclsWarning        not an error: a likely mistake the run goes on with (the CLI prints "warning: <message>")

    Terminated            not an error: a KeyboardInterrupt raised by SIGTERM (the CLI exits 143)
    Interrupted           not an error: SIGINT/SIGTERM stopped training after writing a
                          resumable checkpoint; the CLI says how to resume and exits 130/143

Anything else that escapes is a bug and keeps its traceback (exit 1).
"""

import errno
import pickle
import reprlib
from collections.abc import Iterator
from contextlib import contextmanager


class BertclsError(Exception):
    """Base class: the message says what is wrong and how to fix it."""

    every_process = False  # met alike by every process of a launch (`checked_by_every_process`)


class UsageError(BertclsError):
    pass


class ConfigError(BertclsError):
    pass


class DataError(BertclsError):
    pass


class ModelError(BertclsError):
    pass


class RunError(BertclsError):
    pass


class StoppedWithAnother(RunError):
    """On a process of a launch: another process failed (the main one while it claimed or wrote the run folder, or
    the one that could not load its part of a checkpoint) and says why; this one stops with it, and the CLI says
    nothing more for it."""


class WriteError(RunError):
    """Raised by `bertcls.atomic.writing`; the message names the path, the cause and the fix. `code`: the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TrainingError(BertclsError):
    pass


class HubError(BertclsError):
    pass


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or during, and so on down the chain."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


class BertclsWarning(UserWarning):
    """Something that works but is probably not what the user meant; the message says how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's stop), raised where the process is, as Ctrl-C raises KeyboardInterrupt, so that
    what it was writing is taken back; the CLI exits 143."""


class Interrupted(Exception):
    """Training stopped on a signal, cleanly: `checkpoint` holds everything needed to resume. `message` replaces the
    default one where the stop came before training began."""

    def __init__(self, signal_name: str, step: int, checkpoint, exit_code: int, message: str | None = None) -> None:
        saved = f"resumable checkpoint: {checkpoint}" if checkpoint else "no resumable checkpoint (training.fsdp)"
        super().__init__(message or f"stopped by {signal_name} after step {step}; {saved}")
        self.stopped = message or f"stopped by {signal_name} after step {step}"  # what happened, without how to resume
        self.checkpoint = checkpoint
        self.exit_code = exit_code
        self.hint = ""  # how to go on, added by the command that knows (the resume command line)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, to quote inside one of ours."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def load_reason(exc: BaseException) -> str:
    """Why a weights or checkpoint file could not be loaded, to quote inside one of ours.

    torch refuses a pickled object that is not a tensor and advises loading the file with
    weights_only=False, which would run whatever code it holds: that advice is never passed on.
    """
    text = first_line(exc)
    if "Unsupported operand" in str(exc):  # bytes no pickle of tensors holds: not what torch.save wrote
        return "it is not a file torch saved: damaged, or another kind of file"
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return "it holds pickled objects other than tensors, perhaps code, which bertcls never loads"
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and exc.errno == errno.EINVAL and exc.filename is None):
        return "the file is empty, cut short or damaged"  # torch's words: "EOFError()", "[Errno 22] Invalid argument"
    return text

def not_utf8(where: str, path, exc: UnicodeDecodeError, raw=None) -> str:
    """Why a data file cannot be read as text: UTF-16 (what Excel's "Unicode Text" writes), or the byte `exc` found is
    not UTF-8. `where` names the file as the message should; `raw`: the binary file that a text wrapper was decoding,
    whose position tells where in the file the block `exc` decoded ends."""
    offset = exc.start + (raw.tell() - len(exc.object) if raw is not None else 0)
    try:
        with open(path, "rb") as f:
            utf16 = f.read(2) in (b"\xff\xfe", b"\xfe\xff")
    except OSError:
        utf16 = False
    if utf16:
        return f"{where}: UTF-16 text, not UTF-8; re-save the file as UTF-8"
    return f"{where}: not UTF-8 text (undecodable byte near offset {offset}); re-save the file as UTF-8"


# Echoed values are capped: a message quoting a huge value (a YAML alias bomb, a 10,000-label list) stays one short line.
SHOWN_CHARS = 80
SHOWN_ITEMS = 10
# reprlib formats at most a few items per level and a few levels, so a deep or shared structure is never expanded whole.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, SHOWN_CHARS, SHOWN_CHARS


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value) in at most `limit` characters, cut with "..."."""
    return clipped(_REPR.repr(value), limit)


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` in at most `limit` characters, cut with "..."."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing(items, limit: int = SHOWN_ITEMS, show=str) -> str:
    """The first `limit` items joined with ", ", then how many more there are."""
    items = list(items)
    head = ", ".join(show(item) for item in items[:limit])
    return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@contextmanager
def checked_by_every_process() -> Iterator[None]:
    """Mark a BertclsError raised in the block as one every process of a launch meets alike: each reads the same
    config and checks the same data, model source and run folder there, so one process a machine says it."""
    try:
        yield
    except BertclsError as exc:
        exc.every_process = True
        raise
