"""Server-side batching: concurrent requests for the same signature run as one model call.

Like TF Serving's batching, requests wait in a queue; the batcher takes the first one,
adds whatever else is queued for the same version, signature and input shape until the
batch holds ``max_batch`` examples or ``timeout`` has passed since it started, then runs
the batch on one worker thread (so the event loop keeps answering status calls while the
model computes) and hands each request its slice of the outputs.  While a batch runs,
new requests queue up and form the next one.  ``max_batch=1`` turns batching off: each
request runs alone.  A request larger than ``max_batch`` runs alone, whole.

When a batch of several requests fails (one holds an image that does not decode), each
request is run again on its own, so only the bad one fails.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# (inputs batched over the first dimension) -> outputs batched the same way
BatchFunction = Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Job:
    """One request's examples: what it runs (``key``), its inputs, and the future of its outputs."""

    key: Any
    inputs: dict[str, np.ndarray]
    size: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Collects jobs into batches and runs them with ``run(key, inputs)`` on one worker thread.

    ``key`` says which jobs may share a batch (and is passed to ``run``: e.g. the version,
    the signature and the input shapes).
    """

    def __init__(self, run: BatchFunction, max_batch: int = 32, timeout: float = 0.002):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, received: {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.timeout = timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kcnn-model")
        self.queue: collections.deque[Job] = collections.deque()
        self.wake = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.batches = 0            # model calls made (for tests and the benchmark)
        self.examples = 0

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish what is queued, then stop the task and the worker thread."""
        while self.queue:
            await asyncio.sleep(0.005)
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
            self.worker = None
        self.executor.shutdown(wait=True)

    async def submit(self, key: Any, inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Queue a request's examples; returns its outputs (or raises the model's error for it)."""
        self.start()
        job = Job(key, inputs, size, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.wake.set()
        return await job.future

    async def _work(self) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            batch = await self._collect()
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[Job]:
        """The next batch: the first live job plus compatible queued ones, waiting at most ``timeout``."""
        first = self._pop_live()
        if first is None:
            return []
        batch, size = [first], first.size
        deadline = time.perf_counter() + self.timeout
        while size < self.max_batch:
            job = self._take_compatible(first.key, self.max_batch - size)
            if job is not None:
                batch.append(job)
                size += job.size
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                break
        return batch

    def _pop_live(self) -> Job | None:
        while self.queue:
            job = self.queue.popleft()
            if not job.future.done():   # a request that timed out or disconnected is dropped
                return job
        return None

    def _take_compatible(self, key: Any, room: int) -> Job | None:
        for job in self.queue:
            if job.future.done():
                continue
            if job.key == key and job.size <= room:
                self.queue.remove(job)
                return job
        return None

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self.executor, self._call, batch[0].key, batch)
        except Exception as error:  # noqa: BLE001 - the model's error belongs to its request(s)
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            for job in batch:   # find the request that broke the batch: each runs alone
                await self._run([job])
            return
        start = 0
        for job in batch:
            _settle(job, {name: value[start:start + job.size] for name, value in outputs.items()})
            start += job.size

    def _call(self, key: Any, batch: list[Job]) -> dict[str, np.ndarray]:
        """Runs on the worker thread: one model call for the whole batch."""
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([job.inputs[name] for job in batch]) for name in batch[0].inputs}
        outputs = self.run(key, inputs)
        self.batches += 1
        self.examples += sum(job.size for job in batch)
        return outputs


def _settle(job: Job, outputs: dict[str, np.ndarray] | None = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(outputs)
