"""Errors a user can cause, each with a message ready to print.

    BertclsError          base: the CLI prints "Error: <message>" and exits 2
    ├── ConfigError       the YAML file or a --set override is wrong
    ├── DataError         a data file, column, label or text is wrong
    ├── ModelError        a model name or folder cannot be used
    ├── RunError          a run folder is missing, unfinished or already taken
    │   └── WriteError    the file system refused a write: disk full, read-only, a file where a folder goes
    └── TrainingError     training cannot go on (the loss became NaN, the GPU ran out of memory)

    BertclsWarning        not an error: a likely mistake the run goes on with (the CLI prints "warning: <message>")

    Interrupted           not an error: SIGINT/SIGTERM stopped training after writing a
                          resumable checkpoint; the CLI says how to resume and exits 130/143

Anything else that escapes is a bug and keeps its traceback (exit 1).
"""

import errno
import pickle


class BertclsError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(BertclsError):
    pass


class DataError(BertclsError):
    pass


class ModelError(BertclsError):
    pass


class RunError(BertclsError):
    pass


class WriteError(RunError):
    """Raised by `bertcls.runs.writing`; the message names the path, the cause and the fix. `code`: the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TrainingError(BertclsError):
    pass


class BertclsWarning(UserWarning):
    """Something that works but is probably not what the user meant; the message says how to fix it."""


class Interrupted(Exception):
    """Training stopped on a signal, cleanly: `checkpoint` holds everything needed to resume."""

    def __init__(self, signal_name: str, step: int, checkpoint, exit_code: int) -> None:
        saved = f"resumable checkpoint: {checkpoint}" if checkpoint else "no resumable checkpoint (training.fsdp)"
        super().__init__(f"stopped by {signal_name} after step {step}; {saved}")
        self.checkpoint = checkpoint
        self.exit_code = exit_code


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
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return "it holds pickled objects other than tensors, perhaps code, which bertcls never loads"
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and exc.errno == errno.EINVAL and exc.filename is None):
        return "the file is empty, cut short or damaged"  # torch's words: "EOFError()", "[Errno 22] Invalid argument"
    return text
