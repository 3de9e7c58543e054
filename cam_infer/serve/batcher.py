"""Dynamic batching: requests that arrive while the model is busy (or within `window` seconds of the first
one) run as one batch, up to `max_batch` images; requests with different parameters (`Key`) run in
separate batches. One model call at a time, in one thread: the runtime's own threads use the cores.

With ``window=0`` (the default) a lone request runs at once, and under load the batch is whatever queued
up during the previous call: no added latency at concurrency 1, full batches at high concurrency.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError


@dataclass
class Pending:
    x: np.ndarray
    key: object
    classes: list | None
    future: asyncio.Future


class Batcher:
    def __init__(self, model, max_batch: int = 16, window: float = 0.0, on_batch=None):
        self.model, self.max_batch, self.window = model, max_batch, window
        self.on_batch = on_batch or (lambda size: None)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cam-infer-model")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def run(self, x: np.ndarray, key, classes) -> dict[str, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(x, key, classes, future))
        return await future

    async def call(self, function, *args):
        """`function(*args)` on the model's thread, between batches (a request that is not a batch of tensors)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].x)
            deadline = loop.time() + self.window
            while size < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                size += len(item.x)
            for group in _groups(batch):
                await self._run(group)

    async def _run(self, group: list[Pending]) -> None:
        x = group[0].x if len(group) == 1 else np.concatenate([p.x for p in group])
        classes = None if group[0].classes is None else [c for p in group for c in p.classes]
        self.on_batch(len(x))
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.model.run, x,
                                                                       group[0].key, classes)
        except Exception as exc:
            if len(group) > 1 and isinstance(exc, CamInferError):   # a refusal may be one request's own (a
                for p in group:                                     # segmenter's absent class): each still waited
                    if not p.future.done():                         # for runs alone, its own answer or error
                        await self._run([p])
                return
            for p in group:                           # the runtime's own failure: the batch's, given to each
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in group:
            n = len(p.x)
            if not p.future.done():
                p.future.set_result({name: value[start:start + n] for name, value in outputs.items()})
            start += n


def _groups(batch: list[Pending]) -> list[list[Pending]]:
    groups: dict = {}
    for p in batch:
        groups.setdefault(p.key, []).append(p)
    return list(groups.values())
