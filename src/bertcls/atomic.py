"""Writing files whole: a file or folder in place complete or not at all, with the permissions open()
and mkdir() give; and a write the file system refuses (disk full, a file over a size limit, read-only,
a file where a folder goes) turned into a one-line `WriteError` naming the path.

Files are written under a temporary name in the same folder (`.NAME.*`), fsynced and renamed into place; what a
killed command left under such a name goes with the next write of the same file (or folder).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bertcls.errors import BertclsError, RunError, WriteError, causes


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` to write; if the block succeeds it is fsynced and renamed onto `path`. The new
    file has the permissions of the file it replaces (a private one stays private), else those open() gives.

    The temporary file is locked (flock, which dies with the process) while it is written: one a killed command left
    (`kill -9`, the kernel out of memory) is unlocked, and the next write of `path` removes it."""
    path = Path(path)
    with writing(path):
        prefix = f".{_short(path.name, 22)}.{TEMP_MARK}"
        _clear_killed_temporaries(path.parent, prefix)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        try:
            with suppress(OSError):  # a file system without locks: the temporary is still removed on any error
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            replaced = path.is_file() and not path.is_symlink()  # a link is replaced by the file, not written through
            os.chmod(tmp, path.stat().st_mode & 0o7777 if replaced else 0o666 & ~current_umask())  # mkstemp makes 0600
            yield Path(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)


TEMP_MARK = "bertcls-"  # in `atomic_file`'s temporary names, `.NAME.bertcls-XXXXXXXX.tmp`: a user's files are not named so
TEMP_NAME = re.compile(r"[a-z0-9_]{8}\.tmp")  # what that name has after its prefix, as mkstemp makes it


def _clear_killed_temporaries(folder: Path, prefix: str) -> None:
    """Remove the temporary files `atomic_file` left in `folder` for one target (named `prefix` + TEMP_NAME) when its
    command was killed: plain files, unlocked, untouched for LEFTOVER_AGE_S (one just made is not locked yet). Opened
    for writing, as NFS needs for the exclusive lock; one that cannot be (another user's) stays."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.startswith(prefix) and TEMP_NAME.fullmatch(entry.name[len(prefix):])]
    except OSError:
        return
    for name in names:
        with suppress(OSError):
            fd = os.open(folder / name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                found = os.fstat(fd)
                if not stat.S_ISREG(found.st_mode) or time.time() - found.st_mtime <= LEFTOVER_AGE_S:
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its command is writing it
                if os.stat(folder / name, follow_symlinks=False).st_ino == found.st_ino:  # still the file just checked
                    os.unlink(folder / name)
            finally:
                os.close(fd)


def _short(name: str, added: int) -> str:
    """`name`, cut so that a temporary name of `added` bytes more still fits in 255 bytes (most file systems' limit)."""
    return os.fsencode(name)[: 255 - added].decode("utf-8", "ignore") if len(os.fsencode(name)) + added > 255 else name


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file (text or bytes) whole or not at all."""
    with atomic_file(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The file system refusing a write: full, over quota, a file over a size limit (`ulimit -f`, FAT32's 4 GiB),
# read-only, not permitted, a file where a folder goes or the reverse, a name too long. These are the user's to fix; any
# other OSError is left to be a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                          errno.EISDIR, errno.ENAMETOOLONG})
# Those fixed where they happen (space freed, a limit raised, permission given), after which a run can resume in place.
FIXABLE_IN_PLACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM})
# File systems made by the kernel, which refuse a new file or folder with ENOENT ("no such file"): /proc, /sys, ...
VIRTUAL_FILE_SYSTEMS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "configfs",
                                  "pstore", "bpf", "efivarfs", "binfmt_misc", "fusectl", "mqueue"})


def _refused_code(exc: OSError) -> int | None:
    """`exc`'s errno where the file system refused a write (WRITE_ERRNOS, and ENOENT for a new name in a folder of a
    virtual file system such as /proc), else None. Only for an error about a path being written (`refused_write`): a
    read of a missing file in /proc is no refused write."""
    if exc.errno in WRITE_ERRNOS:
        return exc.errno
    if exc.errno == errno.ENOENT and isinstance(exc.filename, (str, bytes)) and _in_virtual_fs(Path(os.fsdecode(exc.filename)).parent):
        return errno.ENOENT
    return None


def _in_virtual_fs(folder: Path) -> bool:
    """Whether `folder` lies in one of VIRTUAL_FILE_SYSTEMS, by the mount table of Linux (elsewhere: False)."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    where, best, kind = os.path.realpath(folder), "", ""
    for line in mounts:  # ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE ...
        fields, _, rest = line.partition(" - ")
        fields = fields.split(" ")
        point = fields[4].replace("\\040", " ") if len(fields) > 4 else ""  # a space in a mount point is written \040
        if point and (where == point or where.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, rest.split(" ")[0]
    return kind in VIRTUAL_FILE_SYSTEMS


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the file system refusing a write to `path` (a file, or a folder being filled) in the block into
    a one-line WriteError naming `path`, the cause and the fix. Anything else passes through unchanged."""
    path = Path(path)
    try:
        yield
    except BertclsError:
        raise
    except Exception as exc:
        code = refused_write(exc, path)
        if code is None:
            raise
        raise write_error(path, code) from exc


def refused_write(exc: BaseException | None, path: Path) -> int | None:
    """The errno of a write to `path` that the file system refused, found in `exc` or what it wraps (torch
    wraps the OSError in a RuntimeError; safetensors names the errno only in its message); None for
    anything else, and for an error about some other file (a source being read, say)."""
    for cause in causes(exc):
        if isinstance(cause, OSError) and (code := _refused_code(cause)) is not None and _is_about(cause.filename, path):
            return code
        found = re.search(r"\(os error (\d+)\)", str(cause))
        if found and int(found[1]) in WRITE_ERRNOS:
            return int(found[1])
    return None


def _is_about(filename: str | bytes | int | None, path: Path) -> bool:
    """Whether an OSError's file is `path`, inside it, or one of its temporaries (`.NAME.*`); a write
    to an open file (the disk filling up) names no file at all."""
    if filename is None or isinstance(filename, int):
        return True
    file, path = Path(os.path.abspath(os.fsdecode(filename))), Path(os.path.abspath(path))
    return file == path or path in file.parents or (file.parent == path.parent and file.name.startswith(f".{path.name}."))


def write_error(path: Path, code: int, writing: bool = True, elsewhere: str = "") -> WriteError:
    """`path: cause; fix` for a write the file system refused with `code` (`writing` False: for an
    access to `path` that may have been a read). `elsewhere`: the way out that writes somewhere else,
    for a command that has one (`choose another --output`)."""
    fixes = {
        errno.ENOSPC: "free space on its disk",
        errno.EDQUOT: "free space within your disk quota",
        errno.EFBIG: "raise the file-size limit (ulimit -f; a FAT32 disk holds files of 4 GiB at most)",
        errno.EROFS: "its file system is mounted read-only; write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "a folder is in the way of a file; move it, or choose another path",
        errno.ENAMETOOLONG: "shorten it (most file systems take names of up to 255 bytes)",
    }
    folder = Path(path) if os.path.isdir(path) else Path(path).parent  # a folder refused a new entry: that folder
    fix = fixes.get(code, f"make {folder} writable" if writing else f"check the permissions of {path} and its folder")
    if code in (errno.ENOENT, errno.EPERM, errno.EACCES) and _in_virtual_fs(folder):  # how /proc, /sys, ... refuse
        fix = "its folder is in a virtual file system (such as /proc or /sys), which takes no new files; choose another path"
    elif elsewhere and code in FIXABLE_IN_PLACE:  # the others' fix is already to write elsewhere
        fix += f", or {elsewhere}"
    return WriteError(f"{path}: {os.strerror(code)}; {fix}", code)


def check_folder_path(path: Path, what: str) -> None:
    """Refuse a folder to write that is a file, or lies under one (`notes.txt/run`), or a link to nothing, before
    any work is done."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():
            where = "is a link" if part == path else f"is under {part}, a link"
            if link_loop(part):
                raise RunError(f"{what} {path} {where} that leads back to itself; choose another folder")
            raise RunError(f"{what} {path} {where} to {os.readlink(part)}, which does not exist; make that folder, or choose another")
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"is under {part}, which is a file"
            raise RunError(f"{what} {path} {where}; choose a folder")


def link_loop(path: Path) -> bool:
    """Whether `path` is a link that leads back to itself, directly or through other links."""
    return Path(path).is_symlink() and not Path(path).exists() and os.path.lexists(os.path.realpath(path))


@contextmanager
def making(folder: Path) -> Iterator[None]:
    """Make `folder` and its missing parents for the block; when the block fails, remove those made, deepest first,
    stopping at one that someone else has put a file in meanwhile. A refused mkdir is a WriteError naming `folder`."""
    folder = Path(folder)
    made = [part for part in (folder, *folder.parents) if not part.exists()]  # deepest first
    try:
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for part in made:
            try:
                part.rmdir()
            except OSError:
                break
        raise


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux's renameat2 with RENAME_EXCHANGE), so that neither name is ever
    missing; False where the system or file system cannot (then nothing moved)."""
    global _renameat2
    if _renameat2 is None:
        try:
            _renameat2 = ctypes.CDLL(None).renameat2
            _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        except (AttributeError, OSError):  # not Linux, or a C library without it
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_cwd, rename_exchange = -100, 2
    return _renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0


_renameat2: Any = None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def temp_dir_for(dest: Path) -> Path:
    """A fresh temporary folder next to `dest`, to fill and then `publish_dir`."""
    tmp = Path(tempfile.mkdtemp(dir=Path(dest).parent, prefix=f".{_short(Path(dest).name, 15)}.tmp-"))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the permissions mkdir would
    return tmp


def settle(folder: Path) -> list[Path]:
    """Give every file in `folder` the permissions open() would (some writers make 0600) and every
    folder mkdir's, fsync the files, and return them."""
    umask = current_umask()
    files = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files.append(path)
    return files


FILLING_PREFIX = ".bertcls-tmp-"  # the temporary folder `filling` writes in, inside the folder it fills
FILLING_MARK = ".bertcls-filling"  # in it: the file locked while it is filled, holding MARK_TEXT
MARK_TEXT = b"bertcls: a temporary folder, removed when its command ends or by the next one into this folder\n"
NEW_PREFIX = ".bertcls-new-"  # its name while it is made, before it is locked
_NAMES = {prefix: re.compile(re.escape(prefix) + r"[a-z0-9_]{8}") for prefix in (FILLING_PREFIX, NEW_PREFIX)}  # as mkdtemp names one
LEFTOVER_AGE_S = 60  # a NEW_PREFIX folder, or an unlocked temporary file, this old was left by a command killed while making it


@contextmanager
def filling(folder: Path, what: str) -> Iterator[Path]:
    """A temporary folder inside `folder` (made, with its parents, if need be) to write new files in. When the
    block succeeds they move into `folder` all together or not at all, none replacing a file there: if another
    process put one of their names there meanwhile, nothing moves and it is a RunError (`what`: how the
    messages name the folder, e.g. "--output"). When the block or the move fails, the temporary folder goes,
    and so do the folders made for it; a write the file system refused is a WriteError naming `folder`.

    The temporary folder holds FILLING_MARK, locked while it is filled (flock, which dies with the process): one a
    killed command left behind is unlocked, and the next `filling` of the same folder removes it."""
    folder = Path(folder)
    try:
        with making(folder):
            _clear_leftovers(folder)
            tmp, lock = _locked_temp_dir(folder)
            try:
                yield tmp
                _move_in([file for file in settle(tmp) if file != tmp / FILLING_MARK], tmp, folder, what)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                os.close(lock)
    except BaseException as exc:
        code = refused_write(exc, folder) if isinstance(exc, Exception) else None
        if code is None:
            raise
        raise WriteError(f"{what} {write_error(folder, code, elsewhere=f'choose another {what}')}", code) from exc


def _locked_temp_dir(folder: Path) -> tuple[Path, int]:
    """A new temporary folder in `folder` and the descriptor of its FILLING_MARK, locked. It is made under another name
    and renamed once locked, so that no other process ever sees one of ours unlocked while it is being made."""
    new = Path(tempfile.mkdtemp(dir=folder, prefix=NEW_PREFIX))
    lock = None
    try:
        lock = os.open(new / FILLING_MARK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.write(lock, MARK_TEXT)
        tmp = folder / (FILLING_PREFIX + new.name.removeprefix(NEW_PREFIX))
        os.rename(new, tmp)
    except BaseException:
        if lock is not None:
            os.close(lock)
        shutil.rmtree(new, ignore_errors=True)
        raise
    return tmp, lock


def _clear_leftovers(folder: Path) -> None:
    """Remove the temporary folders in `folder` that killed `filling`s left: named as ours, holding our FILLING_MARK,
    unlocked; and those killed while being made (NEW_PREFIX, holding nothing but the mark, old). A folder of someone
    else's that happens to share a prefix holds no such mark, or more than it, and stays."""
    for entry in folder.glob(".bertcls-*"):
        prefix = next((prefix for prefix, name in _NAMES.items() if name.fullmatch(entry.name)), None)
        if prefix is None or entry.is_symlink() or not entry.is_dir():
            continue
        if prefix == NEW_PREFIX:
            with suppress(OSError):
                _clear_unmade(entry)
            continue
        lock = _unlocked_mark(entry)
        if lock is not None:
            shutil.rmtree(entry, ignore_errors=True)
            os.close(lock)


def _clear_unmade(entry: Path) -> None:
    """Remove `entry`, a NEW_PREFIX folder, if a command was killed while making it: old, and holding nothing but
    perhaps its mark (a plain file, no longer than MARK_TEXT, that no command holds)."""
    if time.time() - entry.stat().st_mtime <= LEFTOVER_AGE_S or not {p.name for p in entry.iterdir()} <= {FILLING_MARK}:
        return
    mark = entry / FILLING_MARK
    if mark.exists():
        lock = os.open(mark, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            if not stat.S_ISREG(os.fstat(lock).st_mode) or os.fstat(lock).st_size > len(MARK_TEXT):
                return
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mark.unlink()
        finally:
            os.close(lock)
    entry.rmdir()


def _unlocked_mark(entry: Path) -> int | None:
    """The descriptor of `entry`'s FILLING_MARK, now locked by us, when it is our mark (a plain file holding MARK_TEXT)
    and no command holds it; else None."""
    try:
        lock = os.open(entry / FILLING_MARK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no mark: not ours; or gone meanwhile
        return None
    try:
        if not stat.S_ISREG(os.fstat(lock).st_mode) or os.read(lock, len(MARK_TEXT) + 1) != MARK_TEXT:
            raise OSError("not our mark")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while another command is filling it
    except OSError:
        os.close(lock)
        return None
    return lock


def _move_in(files: list[Path], tmp: Path, folder: Path, what: str) -> None:
    """Hard-link each of `files` (under `tmp`) into `folder` at the same relative path, which fails rather than
    replace a file; on the first that is taken, take back those linked so far."""
    placed: list[Path] = []
    try:
        for file in files:
            target = folder / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            taken = RunError(f"{what} {folder}: {target.relative_to(folder)} appeared there meanwhile (another process writing "
                             "the same folder?); nothing of this one was written there; choose a new folder")
            try:
                os.link(file, target)
            except FileExistsError:
                raise taken from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                    raise
                if target.exists() or target.is_symlink():  # a file system without hard links: check, then copy
                    raise taken from None
                placed.append(target)  # before the copy: one cut short is taken back too
                shutil.copy2(file, target)
                continue
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        raise
