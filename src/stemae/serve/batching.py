"""Dynamic batching: concurrent requests to one model combined into one step call.

The first request waiting opens a batch; requests arriving within
``max_delay`` seconds join it while the batch stays within ``max_batch``
items; then the step runs once on all of them (in a worker thread, one
batch at a time per model, so the event loop keeps taking requests) and
each request gets its own rows back.

The step runs on the ``executor`` it is given: the server gives all its
models one thread, the only one that runs PyTorch (an OpenMP thread team
per calling thread would leave one team spinning while another works,
which costs half the speed on a small machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Combines concurrent calls of ``fn`` (a batch ``(B, ...)`` to
    ``{name: (B, ...)}``) into batches of at most ``max_batch`` items, run on
    ``executor``.

    ``observe(batch_items, step_seconds, queue_seconds)`` is called for
    every batch run (for metrics); ``queue_seconds`` lists each request's
    wait.
    """

    def __init__(self, fn: Callable[[np.ndarray], dict], max_batch: int, max_delay: float, executor: Executor,
                 observe: Callable[[int, float, list[float]], None] | None = None):
        self.fn, self.max_batch, self.max_delay, self.observe = fn, max_batch, max_delay, observe
        self.executor = executor
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.carry: _Pending | None = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The step's results for ``x`` (B, ...), B at most ``max_batch``."""
        p = _Pending(x, asyncio.get_running_loop().create_future())
        await self.queue.put(p)
        return await p.future

    async def close(self):
        """Finish every queued request, then stop."""
        await self.queue.join()
        if self.task is not None:
            self.task.cancel()

    async def _next_batch(self) -> list[_Pending]:
        first = self.carry or await self.queue.get()
        self.carry, batch, n = None, [first], len(first.x)
        deadline = time.perf_counter() + self.max_delay
        while n < self.max_batch:
            wait = deadline - time.perf_counter()
            try:
                p = self.queue.get_nowait() if wait <= 0 else await asyncio.wait_for(self.queue.get(), wait)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if n + len(p.x) > self.max_batch:
                self.carry = p  # opens the next batch
                break
            batch.append(p)
            n += len(p.x)
        return batch

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            sizes = np.cumsum([0] + [len(p.x) for p in batch])
            try:
                x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
                out = await loop.run_in_executor(self.executor, self.fn, x)
                for p, a, b in zip(batch, sizes[:-1], sizes[1:]):
                    if not p.future.done():
                        p.future.set_result({k: v[a:b] for k, v in out.items()})
            except Exception as e:  # the error goes to each request of the batch
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            finally:
                for _ in batch:
                    self.queue.task_done()
            if self.observe is not None:
                self.observe(int(sizes[-1]), time.perf_counter() - started, [started - p.queued for p in batch])
