"""The one resume format of every folder run: an append-only journal of finished work, from which the
run's files are written.

    .cam-infer.journal      {"job": "explain", "settings": {...}}                      ← line 1: what the run is
                            {"inputs": {"photos/a.jpg": {"size": .., "mtime_ns": ..}},
                             "keys": {"photos/a.jpg": "/home/me/photos/a.jpg"}, "rows": [...], "names": {...}}
                            ...                                                         ← one line per finished item

A line is appended (and synced) after the item's pictures are on disk, so a line means its work is whole.
A kill can only tear the last line, which does not parse and is dropped. Why lines, not a rewritten file:
appending costs the same at the ten-thousandth image as at the first, and a kill loses at most the item in
progress. When a run starts, the journal is read back: lines of images whose file changed since (their
stamp: size and mtime) or whose output the job no longer finds are dropped, and the journal is rewritten
with what is kept, so the next line never lands after a torn one.

An image is known by its `file_key` (its resolved path), so the same command resumes from any working folder and
with its folders given any way; its rows keep the path as the first run wrote it. A line without keys (written
before they were recorded) is read with its paths resolved from where the run starts, as it was then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CamInferError
from ..outputs import file_key, fingerprint, write_atomically

JOURNAL = ".cam-infer.journal"


class Journal:
    def __init__(self, out: Path):
        self.path = Path(out) / JOURNAL
        self._file = None
        self.gone: list[dict] = []          # after `resume`: the rows of images whose file is gone since

    def resume(self, job: str, settings: dict, what: str, keep=lambda row: True, methods_in: str | None = None,
               effective=lambda settings: settings) -> tuple[list[dict], list[str]]:
        """The kept lines of an earlier run with these settings, and the images redone because their file
        changed; a journal of other settings is an error (what the folder holds: `what`). Settings are compared
        as they take effect (`effective`: a method's defaults filled in); `methods_in` names the setting that is a
        dict by method, when the run may add methods to the folder's (`check_settings`)."""
        header = {"job": job, "settings": settings}
        text = self.path.read_text(encoding="utf-8", errors="replace") if self.path.exists() else ""
        lines = text.splitlines()
        earlier = _parse(lines[0]) if lines else header
        if not (isinstance(earlier, dict) and "settings" in earlier):
            raise CamInferError(f"'{self.path.parent}' holds a damaged journal ({JOURNAL}: its first line is not a "
                                "run's settings); choose another --out or pass --force to start over there")
        check_settings(earlier, header, what, self.path.parent, methods_in, effective)
        entries = []
        for line in lines[1:]:
            entry = _parse(line)
            if not _whole(entry):               # the torn tail of a killed run (or a damaged line: redone from there)
                break
            entries.append(entry)
        kept, redone, self.gone = _unchanged(entries, keep)
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


def check_settings(earlier, header: dict, what: str, out: Path, methods_in: str | None, effective) -> None:
    """Refuse, in one line, to resume a run (`earlier`: its journal's header) with other settings than `header`'s.
    Where `methods_in` names the settings of each method, the run may add methods (they run over every image, the
    earlier results are kept), but every method the folder holds must be given: its results stay whole."""
    if isinstance(earlier, dict) and earlier.get("job") != header["job"]:
        raise CamInferError(f"'{out}' holds the results of `cam-infer {earlier.get('job')}`, not {what}; choose "
                            "another --out or pass --force to start over there")
    then, now = _compared(earlier, effective), _compared(header, effective)
    held, given = _methods(then, methods_in), _methods(now, methods_in)
    if held is not None and given is not None:
        left_out = [m for m in held if m not in given]
        if left_out:
            raise CamInferError(f"'{out}' holds {what} of methods {', '.join(held)}; give --method each of them "
                                f"(left out: {', '.join(left_out)}; more may be added: they run over every image and "
                                "the earlier results stay), or choose another --out or pass --force to start over")
        now = {**now, "settings": {**now["settings"], methods_in: {m: given[m] for m in held}}}
    if then != now:
        raise CamInferError(f"'{out}' holds {what} with other settings ({_difference(then, now)});"
                            " choose another --out or pass --force to start over there")


def _methods(header, methods_in: str | None) -> dict | None:
    """The settings of each method in a (compared) header, or None when it has none by method."""
    settings = header.get("settings") if isinstance(header, dict) else None
    methods = settings.get(methods_in) if isinstance(settings, dict) and methods_in else None
    return methods if isinstance(methods, dict) and all(isinstance(v, dict) for v in methods.values()) else None


def _compared(header, effective=lambda settings: settings) -> object:
    """A journal header as it takes effect (`effective`), without `RECORDED_ONLY` (a run made before they were
    recorded resumes)."""
    if not isinstance(header, dict) or not isinstance(header.get("settings"), dict):
        return header
    settings = effective(header["settings"])
    return {**header, "settings": {k: v for k, v in settings.items() if k not in RECORDED_ONLY}}


def _difference(earlier, now, where: str = "") -> str:
    """The first setting that differs between two runs' headers, as ``key: earlier → now``."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in [*earlier, *(k for k in now if k not in earlier)]:
            if earlier.get(key, _ABSENT) != now.get(key, _ABSENT):
                return _difference(earlier.get(key, _ABSENT), now.get(key, _ABSENT), f"{where}.{key}".lstrip("."))
    shown = [("(none)" if v is _ABSENT else json.dumps(v))[:60] for v in (earlier, now)]
    return f"{where.removeprefix('settings.') or 'the run'}: {shown[0]} then, {shown[1]} now"


_ABSENT = object()


def _whole(entry) -> bool:
    """Whether a parsed journal line is one a run wrote: its inputs, and its rows each naming an image."""
    return (isinstance(entry, dict) and isinstance(entry.get("inputs"), dict)
            and isinstance(entry.get("rows", []), list)
            and all(isinstance(row, dict) and isinstance(row.get("image"), str) for row in entry.get("rows", []))
            and all(isinstance(entry.get(key, {}), dict) for key in ("keys", "names")))


def _parse(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def keys_of(entry: dict) -> dict[str, str]:
    """Each input of a journal line → its `file_key`: as the line records it, or (a line written before keys were
    recorded) its path as typed then, resolved from here."""
    recorded = entry.get("keys") or {}
    return {image: recorded.get(image) or file_key(image) for image in entry["inputs"]}


def _unchanged(entries: list[dict], keep) -> tuple[list[dict], list[str], list[dict]]:
    """The entries restricted to images whose file is still the one that was worked on, and to rows `keep`
    accepts; the images that changed (still there, other stamp), in journal order; the rows of images whose file is
    gone."""
    current: dict[str, dict | None] = {}
    kept, redone, gone = [], [], []
    for entry in entries:
        keys, inputs = keys_of(entry), {}
        for image, stamp in entry["inputs"].items():
            key = keys[image]
            if key not in current:
                current[key] = _stamp_now(key)
            if stamp == current[key]:
                inputs[image] = stamp
            elif current[key] is not None and image not in redone:
                redone.append(image)
        gone += [r for r in entry["rows"] if current.get(keys.get(r["image"], "")) is None
                 and r["image"] not in inputs]
        if inputs:
            kept.append({"inputs": inputs, "keys": {i: keys[i] for i in inputs},
                         "rows": [r for r in entry["rows"] if r["image"] in inputs and keep(r)],
                         "names": {i: n for i, n in entry.get("names", {}).items() if i in inputs}})
    return kept, redone, gone


def _stamp_now(path: str) -> dict | None:
    """The file's stamp now, or None when it is gone."""
    try:
        return fingerprint(path)
    except OSError:
        return None
