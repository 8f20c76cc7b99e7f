"""One run per folder: a run folder in, locked for as long as a training runs there.

The lock is an exclusive flock on RUN/bertcls-run.lock, which the holder writes its pid into. It
dies with the process, so a killed run (even with SIGKILL) never leaves its folder taken. Under
many processes only the main one holds it (`bertcls.train`).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bertcls.errors import RunError

LOCK_FILE = "bertcls-run.lock"


@contextmanager
def locked(run: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block, with our pid in its file; refuse if another process
    holds it. Creates the folder."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # a process checking the lock (`training_pid`) holds it shared for a moment: try for a second
        if not _flock(fd, fcntl.LOCK_EX, tries=20):
            raise RunError(_in_use(run, _read_pid(fd)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def training_pid(run: Path) -> int | None:
    """The pid of the process training in `run` now (0 if it cannot be read), or None if none is."""
    try:
        fd = os.open(Path(run) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _flock(fd, fcntl.LOCK_SH, tries=1):
            return None  # free; closing the file lets go of it again
        return _read_pid(fd)
    finally:
        os.close(fd)


def check_not_in_use(run: Path) -> None:
    """Refuse a run folder another bertcls train is running in, without taking its lock."""
    pid = training_pid(run)
    if pid is not None:
        raise RunError(_in_use(run, pid))


def pid_text(pid: int) -> str:
    return f"pid {pid}" if pid else "pid unknown"


def _in_use(run: Path, pid: int) -> str:
    return f"output_dir {run} is in use: another bertcls train ({pid_text(pid)}) is running there; wait for it to end, or choose another output_dir"


def _flock(fd: int, operation: int, tries: int) -> bool:
    for attempt in range(tries):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    return False


def _read_pid(fd: int) -> int:
    """The pid the holder wrote; it writes it just after taking the lock, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return 0
