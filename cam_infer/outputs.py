"""Output folders that two runs cannot share by accident, and inputs whose changes a resume notices.

    with OutputLock(out, "explain"):          # a second run on `out` refuses, naming this one
        ...
    fingerprint(path)                          # {"size": ..., "mtime_ns": ...}: redo when it changes
    write_atomically(path, text_or_bytes)      # readers see the old file or the new one, never half of one
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CamInferError

LOCK_NAME = ".cam-infer.lock"
SAVE_EVERY = 2.0         # seconds between rewrites of a run's growing files (results.json, metrics.csv)


def prepare_folder(out, what: str = "--out") -> Path:
    """Create the output folder (parents too); a file in its place or an unwritable place is a user error."""
    if not isinstance(out, (str, os.PathLike)):
        raise CamInferError(f"{what} is a folder's path, not {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CamInferError(f"{what} '{out}' is a file, not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CamInferError(f"cannot create {what} '{out}': {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise CamInferError(f"cannot write in {what} '{out}': permission denied or a read-only file system")
    return out


class OutputLock:
    """An exclusive lock on an output folder for the life of one run (an OS file lock: released when the
    process ends, however it ends). A second run on the same folder fails at once with one line that
    names the run holding it."""

    def __init__(self, out, command: str):
        self.path = Path(out) / LOCK_NAME
        self.command = command
        self._file = None

    def __enter__(self) -> "OutputLock":
        try:
            self._file = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise CamInferError(f"cannot write in '{self.path.parent}': {exc.strerror or exc}") from None
        if not _try_lock(self._file):
            holder = _read_holder(self._file)
            self._file.close()
            self._file = None
            raise CamInferError(f"'{self.path.parent}' is in use by another run ({holder}); wait for it to finish "
                                "or choose another --out")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                     "argv": " ".join(sys.argv[1:])[:200],
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            _unlock(self._file)
            self._file.close()
            self._file = None


def _read_holder(file) -> str:
    try:
        file.seek(0)
        info = json.loads(file.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a cam-infer run that has not said who it is yet"
    return (f"cam-infer {info.get('command', '?')}, pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')}")


if os.name == "nt":      # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(file) -> bool:
        try:
            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(file) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def fingerprint(path) -> dict:
    """What a resume compares to tell a changed input from the one it explained: size and modification
    time (ns). Replacing a file (copy, save, download) changes them; a rerun redoes that image."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_key(path) -> str:
    """What a resume knows an input by, however its path was typed and wherever the command runs: its folder
    resolved (absolute, links followed, `.` and `..` gone) joined with its own name. The name itself is not
    followed: a link to an image is an image of its own (its own name, its own outputs), as in any one run."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.normcase(os.path.join(os.path.realpath(folder or os.curdir), name))


def write_atomically(path, data: str | bytes) -> None:
    """Write a file whole or not at all: into a temporary file beside it, then renamed over it (an atomic
    replace on every OS), so a kill or a reader at any moment sees either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)          # no half-written copy left beside the file
        raise
