"""Worker processes on this machine (``--workers N``): the throughput mode of a folder run.

N spawned processes each open the run's explainer once with `threads` runtime threads (the cores shared
out) and take items as they free up; while one worker decodes, preprocesses or writes PNG bytes, another
runs its model, so the cores stay busy. At most 2·N items are in flight and results come back in input
order. Spawned, not forked: a fork of a process whose runtime already started its thread pools can hang.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import CamInferError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class Processes:
    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads

    def map(self, work, items):
        import multiprocessing

        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        os.environ.update({name: str(self.threads) for name in THREAD_VARIABLES})   # read as workers start
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=limit_threads, initargs=(self.threads,))
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= 2 * self.workers:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def describe(self) -> str:
        return f"{self.workers} worker processes x {self.threads} threads"


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise CamInferError("a worker process died (killed, or out of memory); what was written is kept: run the "
                            "same command again to resume") from None


def limit_threads(threads: int) -> None:
    """In a new worker: OpenCV uses its share of the cores (the math libraries read THREAD_VARIABLES as
    the worker starts; the runtime's threads are set when the explainer opens)."""
    import cv2
    cv2.setNumThreads(threads)
