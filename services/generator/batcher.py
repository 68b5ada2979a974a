"""Dynamic batching: concurrent requests with the same (steps, sampler, cfg_scale) share one forward.

The oldest waiting request opens a batch and waits at most ``max_wait_s`` for
company, but only while company can still come: requests announce themselves with
``expect()`` when they start (before fetching their snippets), so a lone request
with nobody else in flight runs at once instead of idling through the window.
Compatible requests behind it join in arrival order while the batch
holds at most ``max_images`` images (a request larger than that runs alone).
While the model computes in its worker thread, new requests queue up, so under
load batches fill without any wait. A request whose client has gone, or whose
handler gave up (timeout), is dropped before it costs compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.generator.errors import Overloaded
from services.generator.metrics import GeneratorMetrics

BatchKey = tuple[int, str, float]  # (steps, sampler, cfg_scale)
RunBatch = Callable[[BatchKey, np.ndarray, list[int]], list[bytes]]


@dataclass
class Job:
    """One request's images waiting for the model."""

    key: BatchKey
    snippets: np.ndarray  # [n, d] float32 unit rows
    seeds: list[int]
    gone: Callable[[], Awaitable[bool]] | None = None
    future: asyncio.Future[list[bytes]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.seeds)


class Batcher:
    """Merges jobs into forward batches and runs them one at a time in a worker thread."""

    def __init__(
        self,
        run: RunBatch,
        max_images: int,
        max_wait_s: float,
        max_queue_images: int,
        metrics: GeneratorMetrics,
    ) -> None:
        self._run = run
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self._metrics = metrics
        self._waiting: list[Job] = []
        self._incoming = 0  # requests announced by expect() and not yet submitted
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread: the model is one device's worth of compute; batches run back to back.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmem-forward")

    @property
    def queued_images(self) -> int:
        return sum(j.n for j in self._waiting)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gmem-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._waiting:
            if not job.future.done():
                job.future.cancel()
        self._waiting.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def expect(self) -> None:
        """A request has started and will submit soon (or call ``unexpect``): worth waiting for."""
        self._incoming += 1

    def unexpect(self) -> None:
        """An announced request failed before submitting."""
        self._incoming -= 1
        self._wake.set()

    async def submit(self, job: Job, expected: bool = False) -> list[bytes]:
        """Queue ``job`` and wait for its PNGs; ``expected`` when it was announced with ``expect()``."""
        if expected:
            self._incoming -= 1
            self._wake.set()
        if self.queued_images + job.n > self.max_queue_images:
            raise Overloaded(
                f"{self.queued_images} images are already waiting (limit {self.max_queue_images}); retry "
                "later"
            )
        self._waiting.append(job)
        self._update_depth()
        self._wake.set()
        return await job.future

    def _update_depth(self) -> None:
        self._metrics.queue_depth.set(self.queued_images)

    async def _loop(self) -> None:
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._collect()
            batch = await self._drop_abandoned(batch)
            if batch:
                await self._execute(batch)

    async def _collect(self) -> list[Job]:
        """Wait (bounded) until the head's compatible jobs fill a batch, then take them."""
        head = self._waiting[0]
        deadline = head.enqueued + self.max_wait_s
        while self._incoming > 0 and self._compatible_images(head.key) < self.max_images:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        taken: list[Job] = []
        total = 0
        for job in list(self._waiting):
            if job.key != head.key:
                continue
            if taken and total + job.n > self.max_images:
                break
            taken.append(job)
            total += job.n
            self._waiting.remove(job)
        self._update_depth()
        return taken

    def _compatible_images(self, key: BatchKey) -> int:
        return sum(j.n for j in self._waiting if j.key == key)

    async def _drop_abandoned(self, batch: list[Job]) -> list[Job]:
        kept = []
        for job in batch:
            if job.future.done():  # the handler timed out or was cancelled
                self._metrics.dropped.inc()
                continue
            if job.gone is not None and await job.gone():
                self._metrics.dropped.inc()
                job.future.cancel()
                continue
            kept.append(job)
        return kept

    async def _execute(self, batch: list[Job]) -> None:
        key = batch[0].key
        seeds = [s for j in batch for s in j.seeds]
        self._metrics.batch_images.observe(len(seeds))
        self._metrics.batch_requests.observe(len(batch))
        loop = asyncio.get_running_loop()
        try:
            snippets = np.concatenate([j.snippets for j in batch])
            pngs = await loop.run_in_executor(self._pool, self._run, key, snippets, seeds)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        at = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(pngs[at : at + job.n])
            at += job.n
