"""A run's work on a Ray cluster (``--ray``), through Ray Data: the items (image paths, a few bytes each)
become a dataset, `map_batches` gives them to a fixed pool of actors that each open the explainer once
with `threads` runtime threads and one CPU each per thread, and the driver streams the results back in
input order (``preserve_order``; Ray Data's backpressure bounds what is in flight) and writes them.

Faults: an actor that dies (killed, out of memory, its node lost) is restarted and its item retried, at
most `RETRIES` times for one item; an unreadable image is a result (an error record), never an exception,
so it is never retried. A killed driver ends the job; the same command resumes from what it had written.

Every node must see the images at the paths the driver gives (a shared filesystem); the bundle travels
through the object store and is written to a node's temporary folder where its path does not exist (one folder
per bundle, named by its content, shared by the node's actors and later runs).

Addresses: ``auto`` (the cluster this machine belongs to, `ray start`), ``local`` (start one in this
process with this machine's cores), ``HOST:PORT`` or ``ray://HOST:PORT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

from ..errors import CamInferError
from .processes import THREAD_VARIABLES, cores

RETRIES = 3
INSTALL = "pip install 'cam-infer[ray]'"


def import_ray():
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CamInferError(f"--ray needs Ray and Ray Data, which are not installed here: {INSTALL}") from None
    return ray


def unreachable(address: str, exc: Exception) -> str:
    """The one line for a cluster `ray.init` could not join, in cam-infer's terms: Ray's reason without its
    advice about Ray's own command-line flags (``--address``), then what to give ``--ray`` instead."""
    sentences = re.split(r"(?<=\.)\s+", " ".join(str(exc).split()))
    reason = " ".join(s for s in sentences if "--address" not in s)[:300].rstrip(". ")
    if address == "auto":
        advice = ("--ray auto joins the one cluster that `ray start --head` started on this machine: start one, "
                  "or give a cluster's address with --ray HOST:PORT, or start one for this run with --ray local")
    else:
        advice = "check the address given to --ray (HOST:PORT or ray://HOST:PORT), or use --ray local"
    return f"cannot reach a Ray cluster at '{address}'" + (f": {reason}" if reason else "") + f"; {advice}"


class RayRunner:
    def __init__(self, address: str, workers: int | None = None, threads: int | None = None):
        self.address, self.threads = address, threads or 1
        self.ray = import_ray()
        self._started = False
        self.workers = workers

    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        options = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        try:
            if self.address == "local":
                ray.init(num_cpus=cores(), **options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CamInferError(unreachable(self.address, exc)) from None
        self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if self.workers is None:
            self.workers = max(1, cpus // self.threads)
        if self.workers * self.threads > cpus:
            raise CamInferError(f"{self.workers} workers x {self.threads} threads need {self.workers * self.threads} "
                                f"CPUs; the Ray cluster at '{self.address}' has {cpus}")

    def map(self, work, items):
        self.connect()
        ray = self.ray
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False                    # the run draws its own
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        bundle = ray.put({name: bundle_files(spec.bundle) for name, spec in specs_of(work).items()})
        dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in items])
        with warnings.catch_warnings():                         # max_task_retries has no named parameter yet
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = dataset.map_batches(
                RayWorker, fn_constructor_kwargs={"work": pickle.dumps(work), "bundle": bundle}, batch_size=1,
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=self.threads,
                max_task_retries=RETRIES,
                runtime_env={"env_vars": {name: str(self.threads) for name in THREAD_VARIABLES}})
        try:
            for row in dataset.iter_rows():
                yield pickle.loads(row["result"])
        except Exception as exc:                    # Ray wraps what failed in a worker: say what it was
            raise CamInferError(worker_failure(exc)) from None
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def describe(self) -> str:
        return f"Ray at {self.address}: {self.workers} actors x {self.threads} threads"


class RayWorker:
    """One actor: the run's work, with the bundle at a path that exists on this node."""

    def __init__(self, work: bytes, bundle):
        import ray
        self.work = pickle.loads(work)
        for name, spec in specs_of(self.work).items():
            if not (Path(spec.bundle) / "bundle.json").is_file():
                files = ray.get(bundle) if isinstance(bundle, ray.ObjectRef) else bundle
                path = materialise(files[name])
                self.work = replace(self.work, **{name: replace(spec, bundle=str(path))})

    def __call__(self, batch):
        import numpy as np
        results = [pickle.dumps(self.work(pickle.loads(item))) for item in batch["item"]]
        return {"result": np.array(results, dtype=object)}


def specs_of(work) -> dict:
    """The explainer specs of a run's work (`parallel.ExplainerSpec`: a bundle it opens), by field name: audit and
    explain have one (`spec`), a diff two."""
    return {name: value for name, value in vars(work).items()
            if isinstance(getattr(value, "bundle", None), str) and callable(getattr(value, "open", None))}


def bundle_files(folder: str) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in Path(folder).iterdir() if f.is_file()}


def materialise(files: dict[str, bytes]) -> Path:
    """The bundle's files in this node's temporary folder, named by their content: every actor and every later run
    with the same bundle shares one copy, so a node keeps one folder per bundle instead of one per actor start."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    folder = Path(tempfile.gettempdir()) / f"cam-infer-bundle-{digest.hexdigest()[:20]}"
    if _holds(folder, files):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
    for name, data in files.items():
        (staging / name).write_bytes(data)
    try:
        staging.rename(folder)                  # atomic: a concurrent actor's copy, if first, is the same files
    except OSError:
        if not _holds(folder, files):           # a copy a temp cleaner cut short: replace it
            shutil.rmtree(folder, ignore_errors=True)
            try:
                staging.rename(folder)
            except OSError:                     # another actor replaced it first
                pass
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether `folder` has every file of the bundle, at its size, and the same manifest."""
    try:
        return all((folder / name).stat().st_size == len(data) for name, data in files.items()) and \
            (folder / "bundle.json").read_bytes() == files.get("bundle.json")
    except OSError:
        return False


def worker_failure(exc: BaseException) -> str:
    """One line for an exception raised through Ray: the innermost cause, our own message when it is ours."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    if isinstance(exc, CamInferError):
        return str(exc).strip().splitlines()[-1] if "Traceback" in str(exc) else str(exc)
    text = " ".join(str(exc).split())
    return f"a Ray worker failed: {type(exc).__name__}: {text[:300]}"
