"""The one folder-run driver of `cam-infer explain` and `cam-infer audit`, for every task:

    collect (images) → lock (the output folder) → resume (the journal) → runner (the work) → write (the files)

What the job and the task change is a `Job`: its settings, the picklable `work` a runner maps over batches of
images, and `write`, which turns the run's rows into its files (results.json; metrics.csv, summary.json,
index.html). The driver does the rest the same way for all of them: one lock, one settings check, one resume
format (`journal`), changed images redone, pictures written before their journal line, the growing files
rewritten atomically every `SAVE_EVERY` seconds and at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CamInferError
from ..outputs import SAVE_EVERY, OutputLock, file_key, prepare_folder
from ..parallel import ExplainerSpec, InProcess
from ..postprocess import write_file
from ..progress import Progress
from .folders import ImageFiles, collect_images, free_name, overlay_names
from .journal import JOURNAL, Journal, keys_of
from .map_store import MapStore, put_maps


@dataclass
class Job:
    """A folder run, as the driver needs it. `work(batch) → result`, where batch is a list of
    (image path, its output name, methods still to do, `extra(path)`) and result is
    ``{"inputs": {image: stamp}, "rows": [...], "files": {relative path: bytes}, "errors": [{"image", "error"}]}``
    (each row has its "image"; rows with a "method" tell a per-method resume which methods are done), and
    optionally ``"maps": [(row position, 8-bit map)]`` for the run's array store (`map_store`)."""

    command: str                          # "explain" | "audit": the lock's and the progress report's name
    what: str                             # what the folder holds, for the settings error ("an audit")
    settings: dict                        # JSON-able; a rerun resumes only with equal settings
    methods: tuple
    work: Callable                        # picklable, with a `spec` (`cam_infer.parallel.ExplainerSpec`)
    write: Callable                       # (Run, final: bool) → None: the run's files from its rows
    batch_size: int = 1
    names: Callable[[ImageFiles], dict] = lambda found: overlay_names(found.files)
    extra: Callable = lambda path: None   # what else the work needs of an image (its true boxes)
    per_method: bool = False              # resume per (image, method) (explain) or per image (audit)
    methods_in: str | None = None         # the setting that is a dict by method, when a rerun may add methods
    effective: Callable = lambda settings: settings   # settings as they take effect (defaults filled), compared
    keep: Callable = lambda out, row: True   # a row of an earlier run still stands (its overlay is there)
    folders: tuple = ()                   # the output's subfolders the files go in
    clear: tuple = ()                     # files and folders a restart removes
    files_of: Callable = lambda row: ()   # the files a row's run wrote beside them (a restart removes those too)
    cost: Callable | None = None          # () → the line saying what the run will cost


@dataclass
class Run:
    """What a run has: its rows in order (earlier runs' first), unreadable images, skipped files, redone images,
    each image's name (`stable_names`: the stem of its files) and how its files write each path (`shown_paths`)."""

    out: Path
    found: ImageFiles
    rows: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    redone: list = field(default_factory=list)
    names: dict = field(default_factory=dict)
    shown: dict = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        return [self.shown.get(f, str(f)) for f in self.found.skipped]


def run_job(job: Job, paths, out, runner, *, restart: bool = False, progress: bool | None = None,
            report=None) -> Run:
    """Run `job` over the images of `paths` into `out` with `runner` (`cam_infer.parallel`)."""
    found = collect_images(paths, leave_out=out)
    out = prepare_folder(out)
    with OutputLock(out, job.command):
        _refuse_files_of_another(out, job)
        if restart:
            _clear(out, (*_written(out, job), JOURNAL, *job.clear))
        for folder in job.folders:
            (out / folder).mkdir(exist_ok=True)
        journal = Journal(out)
        kept, redone = journal.resume(job.command, job.settings, job.what, lambda row: job.keep(out, row),
                                      job.methods_in, job.effective)
        _clear(out, _files_of_gone(out, job, journal.gone, kept))
        run = Run(out, found, [row for entry in kept for row in entry["rows"]], [], redone)
        todo = _todo(job, found.files, kept)
        names = run.names = stable_names(job.names(found), kept)
        run.shown = shown_paths(found, kept)
        shown = {str(f): image for f, image in run.shown.items()}
        if report and todo:
            report(job.cost())
        units: deque = deque()
        store = MapStore(out, run.rows)
        with Progress(sum(len(needed) if job.per_method else 1 for _, needed in todo), job.command,
                      enabled=progress) as bar:
            saved = -SAVE_EVERY                       # the first result is written at once, then every SAVE_EVERY s
            finished = False
            try:
                for result in _map(runner, job, todo, names, units):
                    for name, data in result["files"].items():
                        write_file(out / name, data)
                    put_maps(store, result)
                    opened = list(result["inputs"])
                    result = restated(result, shown)
                    with signals_held():                   # the journal and the run's rows agree when it stops
                        journal.append({"inputs": result["inputs"], "keys": {shown[i]: file_key(i) for i in opened},
                                        "rows": result["rows"], "names": {shown[i]: names[Path(i)] for i in opened}})
                        run.rows += result["rows"]
                        run.errors += result["errors"]
                    bar.advance(units.popleft())
                    if time.monotonic() - saved >= SAVE_EVERY:
                        job.write(run, False)
                        saved = time.monotonic()
                finished = True
            finally:
                store.close()
                journal.close()
                if not finished:                      # stopped: the files say what the journal has, then it ends
                    _write_what_is_done(job, run)
        job.write(run, True)
    return run


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM held while the block runs and delivered after it, to the handlers they had: a stop between
    a batch's journal line and its rows in memory left the files written at the stop a batch short of the journal.
    In the main thread only (where Python runs signal handlers)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if threading.current_thread() is not threading.main_thread() or None in handlers.values():
        yield                                   # (None: a handler not set from Python, which cannot be put back)
        return
    held: list[int] = []
    for s in handlers:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for s in held:
            signal.raise_signal(s)


def _write_what_is_done(job: Job, run: Run) -> None:
    """The run's files from the rows done when it stopped (Ctrl-C, SIGTERM, an error), so that they list what the
    journal keeps; a failure here must not hide why the run stopped."""
    try:
        job.write(run, False)
    except Exception:
        pass


def _todo(job: Job, files, kept: list[dict]) -> list[tuple[Path, tuple]]:
    """(image, methods still to do) for every image not done."""
    done: dict[str, set] = {}                  # by file (`file_key`): one folder given two ways is one
    for entry in kept:
        keys = keys_of(entry)
        for image in entry["inputs"]:
            done.setdefault(keys[image], set() if job.per_method else set(job.methods))
        for row in entry["rows"] if job.per_method else ():
            done[keys[row["image"]]].add(row["method"])
    todo = [(f, tuple(m for m in job.methods if m not in done.get(file_key(f), ()))) for f in files]
    return [(f, needed) for f, needed in todo if needed]


def stable_names(names: dict, kept: list[dict]) -> dict:
    """Each image's name (the stem of its files): the one it had in the runs the journal keeps, else the job's,
    made unique against those. An image added to the folder (or a second folder into the same --out) must not take
    the name, and so overwrite the files, of an image done before."""
    earlier = {keys_of(entry)[image]: name for entry in kept for image, name in entry["names"].items()}
    chosen = {f: earlier[file_key(f)] for f in names if file_key(f) in earlier}
    taken = set(earlier.values())
    for f, name in names.items():
        if f not in chosen:
            chosen[f] = free_name(name, taken)
    return chosen


def shown_paths(found: ImageFiles, kept: list[dict]) -> dict[Path, str]:
    """How the run's files write each image (and skipped file): as the journal's lines first wrote it, whatever
    folder the run is resumed from and however its folders are given now; one new to the run in the form its folder
    had then (so that a resumed run writes what an uninterrupted one would have), else as given now. A form that
    already names another file in the journal is not reused: that image is written by its resolved path."""
    recorded = {key: image for entry in kept for image, key in keys_of(entry).items()}
    earlier_forms = {}                         # a folder given now → the form it had in the journal
    for f, folder in found.folders.items():
        form = _folder_part(recorded[file_key(f)], f.relative_to(folder)) if file_key(f) in recorded else None
        if form is not None:
            earlier_forms.setdefault(folder, form)
    taken = set(recorded.values())
    shown = {}
    for f in [*found.files, *found.skipped]:
        key, folder = file_key(f), found.folders.get(f)
        if key in recorded:
            shown[f] = recorded[key]
            continue
        form = earlier_forms.get(folder)
        image = str(form / f.relative_to(folder)) if form is not None else str(f)
        shown[f] = key if image in taken else image
    return shown


def _folder_part(image: str, relative: Path) -> Path | None:
    """The folder `image` was written under, given its path `relative` to that folder; None when it does not end
    so (a line written from another folder's listing)."""
    parts, tail = Path(image).parts, relative.parts
    return Path(*parts[:-len(tail)]) if len(parts) >= len(tail) and parts[-len(tail):] == tail else None


def restated(result: dict, shown: dict[str, str]) -> dict:
    """A work's result with its images (inputs, rows, errors) as the run's files write them (`shown_paths`)."""
    return {**result, "inputs": {shown.get(i, i): stamp for i, stamp in result["inputs"].items()},
            "rows": [_with_image(row, shown) for row in result["rows"]],
            "errors": [_with_image(error, shown) for error in result["errors"]]}


def _with_image(record: dict, shown: dict[str, str]) -> dict:
    return {**record, "image": shown.get(record["image"], record["image"])} if "image" in record else record


def _map(runner, job: Job, todo, names: dict, units: deque):
    """The runner's results for the batches of `todo`; `units` hears each batch's progress units as it is sent
    (runners give results in input order)."""

    def batches():
        for start in range(0, len(todo), job.batch_size):
            batch = todo[start:start + job.batch_size]
            units.append(sum(len(needed) if job.per_method else 1 for _, needed in batch))
            yield [(path, names[path], needed, job.extra(path)) for path, needed in batch]

    return runner.map(job.work, batches())


def spec_for(explainer, runner):
    """The `ExplainerSpec` workers open `explainer` with; the in-process runner uses `explainer` itself."""
    spec = ExplainerSpec.of(explainer, runner.threads)
    if isinstance(runner, InProcess):
        return spec.remember(explainer)
    if explainer.backend.name == "torch":
        raise CamInferError("workers open the bundle themselves; a PyTorch model in memory cannot be sent to them: "
                            "export it to a bundle (cam-infer export) and explain that")
    return spec


def _refuse_files_of_another(out: Path, job: Job) -> None:
    """A folder without a run's journal that holds what a run writes (results.json, maps/, overlays/, …) holds
    someone else's files: a run would overwrite them, and --force delete them."""
    if (out / JOURNAL).exists():
        return
    theirs = [name for name in job.clear if (out / name).exists()]
    if theirs:
        raise CamInferError(f"'{out}' holds {', '.join(theirs)} but no earlier run of cam-infer (no {JOURNAL}): "
                            "choose a new or empty --out")


def _written(out: Path, job: Job) -> list[str]:
    """The files an earlier run in `out` wrote, as its journal's rows name them (relative paths inside `out`)."""
    path = out / JOURNAL
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:] if path.exists() else []
    names = []
    for line in lines:
        try:
            rows = json.loads(line).get("rows", [])
        except (ValueError, AttributeError):
            continue                           # the torn tail of a killed run
        names += [name for row in rows if isinstance(row, dict) for name in job.files_of(row)]
    return [name for name in dict.fromkeys(names) if _own_file(out, name)]


def _files_of_gone(out: Path, job: Job, gone: list[dict], kept: list[dict]) -> list[str]:
    """The files written for images removed from the folder since (their rows, `Journal.gone`) that no kept row
    names: a resume drops those images' rows, and their overlays must not stay behind as pictures of the run."""
    kept_files = {name for entry in kept for row in entry["rows"] for name in job.files_of(row)}
    return [name for row in gone for name in job.files_of(row) if name not in kept_files and _own_file(out, name)]


def _own_file(out: Path, name) -> bool:
    """A file a run writes: a plain file right in `out`, not hidden (the journal, the lock), not a link."""
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        return False
    path = out / name
    return path.is_file() and not path.is_symlink()


def _clear(out: Path, names) -> None:
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
