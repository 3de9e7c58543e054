"""Where a folder run's work happens: in this process, in worker processes on this machine, or on a Ray
cluster, always with the same results written by the driver in the same order.

A run is a picklable `work` callable mapped over items (an image, or a batch of images): each worker opens
the run's Explainer once (`ExplainerSpec.open`), then turns items into results (rows, PNG bytes) that the
driver writes: the files are the same whichever runner computed them, and a killed run resumes from what
the driver had written.

    runner = make_runner(workers=2)                      # or ray="auto" | "local" | "HOST:PORT"
    for result in runner.map(work, items):               # input order, a bounded number in flight
        ...

- `InProcess`: the default; one process, the runtime's own threads.
- `Processes` (``--workers N``): N spawned processes, each with its share of the cores for its runtime
  threads, decoding and preprocessing overlapped with the other workers' inference (`processes`).
- `RayRunner` (``--ray``): one actor per worker on a Ray cluster via Ray Data (`ray_cluster`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ..backends.sessions import leave_the_cores_to_the_runtime
from ..errors import CamInferError
from .processes import cores


STAGES = 3                # batches an in-process run has in flight: one decoded, one in the runtime, one encoded
OPEN_AT_MOST = 2          # explainers a process keeps open: a worker serves one run's spec, a driver one at a time


@dataclass(frozen=True)
class ExplainerSpec:
    """How a worker opens the run's explainer: a bundle folder and its runtime settings (picklable). The
    explainer is whatever the bundle's task calls for (`cam_infer.jobs.explainers.open_explainer`)."""

    bundle: str
    backend: str = "auto"
    device: str = "CPU"
    gradients: str | None = None
    threads: int | None = None
    precision: str = "f32"
    hint: str | None = None                     # OpenVINO's performance hint (`open_explainer`)

    def open(self):
        """The explainer of this spec, opened once per process (a worker's: its cores are the runtime's); the
        least recently used beyond OPEN_AT_MOST are let go."""
        if self not in _OPENED:
            from ..jobs.explainers import open_explainer
            leave_the_cores_to_the_runtime()
            self.remember(open_explainer(self.bundle, self.backend, self.device, self.threads, self.gradients,
                                         self.precision, self.hint))
        _OPENED.move_to_end(self)
        return _OPENED[self]

    def remember(self, explainer) -> "ExplainerSpec":
        """Use an explainer already open in this process for this spec (the in-process runner)."""
        _OPENED[self] = explainer
        _OPENED.move_to_end(self)
        while len(_OPENED) > OPEN_AT_MOST:
            _OPENED.popitem(last=False)
        return self

    @classmethod
    def of(cls, explainer, threads: int | None = None) -> "ExplainerSpec":
        """The spec that reopens `explainer` elsewhere (its bundle, runtime, device, gradients)."""
        backend = explainer.backend
        return cls(str(explainer.bundle.path.resolve()), backend.name, getattr(backend, "device", "CPU"),
                   "torch" if getattr(explainer, "gradients", None) is not None and backend.name != "torch" else None,
                   threads, asked_precision(backend), getattr(backend, "hint", None))


def asked_precision(backend) -> str:
    """The precision `backend` was opened with (``auto`` stays ``auto``: each worker resolves it on its device)."""
    runtime = getattr(backend, "runtime", None)
    return runtime.precision if runtime is not None else "f32"


_OPENED: OrderedDict = OrderedDict()


class InProcess:
    """Every item in this process, `stages` at a time in threads: while one batch runs in the runtime, the next
    is decoded and preprocessed and the last one's pictures are encoded (OpenCV and the runtimes release the
    GIL; the explainer is safe from several threads). Results come back in input order, at most `stages`
    items in flight; ``stages=1`` runs them one after the other."""

    workers, threads, stages = 1, None, STAGES

    def __init__(self, stages: int = STAGES):
        self.stages = stages

    def map(self, work, items):
        if self.stages <= 1:
            for item in items:
                yield work(item)
            return
        yield from ordered_threads(work, items, self.stages)

    def describe(self) -> str:
        return "this process" + (f", {self.stages} batches in flight" if self.stages > 1 else "")


def ordered_threads(work, items, threads: int):
    """`work` over `items` in `threads` threads, results in input order, at most `threads` items in flight
    (the iterator is read only as results are taken: memory stays bounded whatever the number of items)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads, thread_name_prefix="cam-infer")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:           # interrupted or closed: the items not started are dropped, none awaited
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def make_runner(workers=None, ray: str | None = None, threads: int | None = None):
    """`workers`: None or 1 (this process), an int, or "auto" (one per core); `ray`: a Ray address
    ("auto": the running cluster, "local": start one here, or "HOST:PORT" / "ray://HOST:PORT");
    `threads`: runtime threads per worker (default: the cores shared out)."""
    count = resolve_workers(workers)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise CamInferError(f"threads must be a positive integer, not {threads!r}")
    if ray is not None:
        from .ray_cluster import RayRunner
        runner = RayRunner(ray, workers=None if workers is None else count, threads=threads)
        runner.connect()                 # a cluster it cannot join is said before the run announces its cost
        return runner
    if count == 1:
        return InProcess()
    from .processes import Processes
    return Processes(count, threads or max(1, cores() // count))


def resolve_workers(workers) -> int:
    if workers is None:
        return 1
    if workers == "auto":
        return cores()
    try:
        count = int(workers)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise CamInferError(f"workers must be a positive integer or 'auto', not {workers!r}")
    return count


__all__ = ["ExplainerSpec", "InProcess", "cores", "make_runner"]
