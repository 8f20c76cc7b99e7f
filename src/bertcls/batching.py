"""Dynamic batching: requests (lists of texts) in from an event loop, merged into model batches that one
thread runs, and each request's own predictions out, in its order.

No HTTP here: `bertcls.serve` checks each request, then awaits `Batcher.submit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

log = logging.getLogger("bertcls.batching")
MODEL_THREAD = "bertcls-model"  # the name of the thread that loads and runs the model


@dataclass
class _Job:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future
    arrived: float  # the event loop's clock at submit


class Batcher:
    """Merges the requests waiting for the model into batches and runs them in one model thread.

    A batch starts with the oldest waiting request and takes the requests behind it while it holds at
    most `max_batch_size` texts, waiting for more to arrive until `max_wait_s` after the oldest arrived (a request
    larger than `max_batch_size` runs alone). Texts with pairs and texts without run as separate model calls.
    """

    def __init__(self, predict: Callable[[list[str], list[str] | None], list], max_batch_size: int, max_wait_s: float,
                 on_batch: Callable[[list, float], None] | None = None) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=MODEL_THREAD)  # the model's one thread
        self.waiting: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve())

    async def close(self) -> None:
        """Stop batching, once the server has answered or given up on every request (so none that waits has a client).
        A model call still running is not waited for: the thread ends when it returns (see `serve.run`)."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: list[str], pairs: list[str] | None = None) -> list:
        """The predictions for `texts`, in their order, once their batch has run."""
        loop = asyncio.get_running_loop()
        job = _Job(texts, pairs, loop.create_future(), loop.time())
        self.waiting.append(job)
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # its client left: it no longer fills a batch, nor counts in the queue's depth
            with suppress(ValueError):
                self.waiting.remove(job)
            raise

    async def _serve(self) -> None:
        while True:
            jobs = await self._collect()
            if jobs is None:
                return  # closing, and nothing left to answer
            jobs = [job for job in jobs if not job.future.done()]  # a client that left cancelled its future
            try:
                for group in ([j for j in jobs if j.pairs is None], [j for j in jobs if j.pairs is not None]):
                    if group:
                        await self._run(group)
            except Exception as exc:  # a bug here must fail these requests, not leave every later one waiting
                log.exception("batching failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _collect(self) -> list[_Job] | None:
        """The next batch: wait for a first request, then for more until the batch is full or max_wait_s has passed
        since the oldest arrived. None once closing with nothing left."""
        while True:
            while True:
                while self.waiting and self.waiting[0].future.done():  # its client left: it waits for nothing
                    self.waiting.popleft()
                if self.waiting:
                    break
                if self._closing:
                    return None
                self._arrived.clear()
                await self._arrived.wait()
            # From its arrival, not from now: a request that waited while the last batch ran does not wait again.
            deadline = self.waiting[0].arrived + self.max_wait_s
            while self.waiting and self._size() < self.max_batch_size and not self._closing:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if self.waiting:  # else every request left while the batch filled (see `submit`): wait for another
                break
        jobs = [self.waiting.popleft()]
        size = len(jobs[0].texts)
        while self.waiting and size + len(self.waiting[0].texts) <= self.max_batch_size:
            size += len(self.waiting[0].texts)
            jobs.append(self.waiting.popleft())
        return jobs

    def _size(self) -> int:
        return sum(len(job.texts) for job in self.waiting)

    async def _run(self, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        pairs = None if jobs[0].pairs is None else [pair for job in jobs for pair in job.pairs]
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts, pairs)
        except Exception as exc:
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            # Which request did the model fail on? Run each alone: only those that fail again get the error.
            for job in jobs:
                await self._run([job])
            return
        if self.on_batch is not None:
            self.on_batch(results, time.perf_counter() - started)
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start:start + len(job.texts)])
            start += len(job.texts)
