"""The one resume format of every folder run: an append-only journal of finished work, from which the
run's files are written.

    .cam-infer.journal      {"job": "explain", "settings": {...}}                      ← line 1: what the run is
                            {"inputs": {"photos/a.jpg": {"size": .., "mtime_ns": ..}}, "rows": [...]}
                            ...                                                         ← one line per finished item

A line is appended (and synced) after the item's pictures are on disk, so a line means its work is whole.
A kill can only tear the last line, which does not parse and is dropped. Why lines, not a rewritten file:
appending costs the same at the ten-thousandth image as at the first, and a kill loses at most the item in
progress. When a run starts, the journal is read back: lines of images whose file changed since (their
stamp: size and mtime) or whose output the job no longer finds are dropped, and the journal is rewritten
with what is kept, so the next line never lands after a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CamInferError
from ..outputs import fingerprint, write_atomically

JOURNAL = ".cam-infer.journal"


class Journal:
    def __init__(self, out: Path):
        self.path = Path(out) / JOURNAL
        self._file = None

    def resume(self, job: str, settings: dict, what: str, keep=lambda row: True) -> tuple[list[dict], list[str]]:
        """The kept lines of an earlier run with these settings, and the images redone because their file
        changed; a journal of other settings is an error (what the folder holds: `what`)."""
        header = {"job": job, "settings": settings}
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        earlier = _parse(lines[0]) if lines else header
        if _compared(earlier) != _compared(header):
            raise CamInferError(f"'{self.path.parent}' holds {what} with other settings "
                                f"({_difference(_compared(earlier), _compared(header))});"
                                " choose another --out or pass --force to start over there")
        entries = []
        for line in lines[1:]:
            entry = _parse(line)
            if entry is None:                   # the torn tail of a killed run
                break
            entries.append(entry)
        kept, redone = _unchanged(entries, keep)
        write_atomically(self.path, "".join(json.dumps(e) + "\n" for e in [header, *kept]))
        return kept, redone

    def append(self, entry: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


RECORDED_ONLY = ("layer",)       # settings a run records but does not compare: the bundle's hashes pin them


def _compared(header) -> object:
    """A journal header without `RECORDED_ONLY` (a run made before they were recorded resumes)."""
    if not isinstance(header, dict) or not isinstance(header.get("settings"), dict):
        return header
    return {**header, "settings": {k: v for k, v in header["settings"].items() if k not in RECORDED_ONLY}}


def _difference(earlier, now, where: str = "") -> str:
    """The first setting that differs between two runs' headers, as ``key: earlier → now``."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in [*earlier, *(k for k in now if k not in earlier)]:
            if earlier.get(key, _ABSENT) != now.get(key, _ABSENT):
                return _difference(earlier.get(key, _ABSENT), now.get(key, _ABSENT), f"{where}.{key}".lstrip("."))
    shown = [("(none)" if v is _ABSENT else json.dumps(v))[:60] for v in (earlier, now)]
    return f"{where.removeprefix('settings.') or 'the run'}: {shown[0]} then, {shown[1]} now"


_ABSENT = object()


def _parse(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _unchanged(entries: list[dict], keep) -> tuple[list[dict], list[str]]:
    """The entries restricted to images whose file is still the one that was worked on, and to rows `keep`
    accepts; the images that changed (still there, other stamp), in journal order."""
    current: dict[str, dict | None] = {}
    kept, redone = [], []
    for entry in entries:
        inputs = {}
        for image, stamp in entry["inputs"].items():
            if image not in current:
                try:
                    current[image] = fingerprint(image)
                except OSError:
                    current[image] = None
            if stamp == current[image]:
                inputs[image] = stamp
            elif current[image] is not None and image not in redone:
                redone.append(image)
        if inputs:
            kept.append({"inputs": inputs, "rows": [r for r in entry["rows"] if r["image"] in inputs and keep(r)],
                         "names": {i: n for i, n in entry.get("names", {}).items() if i in inputs}})
    return kept, redone
