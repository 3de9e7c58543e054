"""Worker processes on this machine (``--workers N``): the throughput mode of a folder run.

N spawned processes each open the run's explainer once with `threads` runtime threads (the cores shared
out) and take items as they free up; while one worker decodes, preprocesses or writes PNG bytes, another
runs its model, so the cores stay busy. At most 2·N items are in flight and results come back in input
order. Spawned, not forked: a fork of a process whose runtime already started its thread pools can hang.
A spawned worker imports the main script again, so a script must start workers under
``if __name__ == "__main__":``; one that does not is refused before any worker starts (`unguarded_line`).
"""

from __future__ import annotations

import ast
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import CamInferError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                 # not Linux
        return os.cpu_count() or 1


class Processes:
    def __init__(self, workers: int, threads: int):
        line = unguarded_line()
        if line is not None:
            raise CamInferError(f"'{sys.modules['__main__'].__file__}' starts worker processes at line {line}, "
                                "outside `if __name__ == \"__main__\":`; each worker imports the script again and "
                                "would start workers itself: put the run under that guard")
        self.workers, self.threads = workers, threads

    def map(self, work, items):
        import multiprocessing

        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        os.environ.update({name: str(self.threads) for name in THREAD_VARIABLES})   # read as workers start
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(self.threads, os.getpid()))
        pending: deque = deque()
        try:
            for item in items:
                pending.append(_submitted(pool, work, item))
                if len(pending) >= 2 * self.workers:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        except BaseException:       # interrupted or failed: the workers are stopped, not awaited
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def describe(self) -> str:
        return f"{self.workers} worker processes x {self.threads} threads"


def _stop(pool) -> None:
    """End a process pool's workers in the middle of their items (a run interrupted during a long batch): the
    journal keeps what was done, the items in flight are redone on resume."""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


def _submitted(pool, work, item):
    try:
        return pool.submit(work, item)
    except BrokenProcessPool:               # a worker died while the results before it were being written
        raise _died() from None


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise _died() from None


def _died() -> CamInferError:
    return CamInferError("a worker process died (killed, or out of memory); what was written is kept: run the same "
                         "command again to resume")


def unguarded_line() -> int | None:
    """The line of the main script that is starting workers, if a spawned worker importing that script again
    (as ``__mp_main__``) would run it too: a line of the script's top-level code outside a block under
    ``if __name__ ...``. None when the script is guarded, or when workers do not import it (a package's
    ``__main__``, ``python -c``, an interactive session), as multiprocessing's spawn decides."""
    main = sys.modules.get("__main__")
    spec, path = getattr(main, "__spec__", None), getattr(main, "__file__", None)
    if path is None or (spec is not None and spec.name.split(".")[-1] == "__main__"):
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:                                   # not called while the script's top level runs
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    guarded = any(isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__"
                                                   for n in ast.walk(node.test))
                  and node.body[0].lineno <= line <= node.end_lineno for node in ast.walk(tree))
    return None if guarded else line


def start_worker(threads: int, parent: int) -> None:
    """A new worker: it ends with its parent, even one killed (SIGKILL) with no chance to stop it, rather than live
    on orphaned with its model loaded (Linux: the parent-death signal), and it takes its share of the threads."""
    end_with_parent(parent)
    limit_threads(threads)


def end_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux's PR_SET_PDEATHSIG: strictly, when the parent's thread that
    started it ends; the pool starts its workers from the run's own thread); at once if the parent already has.
    Elsewhere the pool's own shutdown is all there is."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        set_parent_death_signal = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if set_parent_death_signal(1, signal.SIGTERM) == 0 and os.getppid() != parent:     # 1 = PR_SET_PDEATHSIG
        os.kill(os.getpid(), signal.SIGTERM)


def limit_threads(threads: int) -> None:
    """In a new worker: OpenCV uses its share of the cores (the math libraries read THREAD_VARIABLES as
    the worker starts; the runtime's threads are set when the explainer opens)."""
    import cv2
    cv2.setNumThreads(threads)
