"""Dynamic batching in isolation: which jobs share a forward, bounds, and dropped clients."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from services.generator.batcher import Batcher, Job
from services.generator.errors import Overloaded
from services.generator.metrics import make_metrics


class Recorder:
    """A stand-in forward that records each batch (its key and seeds) and returns one 'PNG' per seed."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[tuple, list[int]]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, key: tuple, snippets: np.ndarray, seeds: list[int]) -> list[bytes]:
        assert snippets.shape[0] == len(seeds)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        self.batches.append((key, list(seeds)))
        return [f"{key}:{s}".encode() for s in seeds]


def job(key: tuple, seeds: list[int], gone=None) -> Job:
    return Job(key=key, snippets=np.zeros((len(seeds), 4), np.float32), seeds=seeds, gone=gone)


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(rec: Recorder, fn, max_images: int = 8, wait_s: float = 0.05, max_queue: int = 64):
    metrics = make_metrics()
    b = Batcher(rec, max_images=max_images, max_wait_s=wait_s, max_queue_images=max_queue, metrics=metrics)
    b.start()
    try:
        return await fn(b), metrics
    finally:
        await b.stop()


def test_compatible_concurrent_jobs_share_one_forward_and_get_their_own_results():
    rec = Recorder()

    async def go(b: Batcher):
        k = (4, "euler", 1.0)
        return await asyncio.gather(
            b.submit(job(k, [1, 2])), b.submit(job(k, [10])), b.submit(job(k, [20, 21, 22]))
        )

    results, metrics = run(_with_batcher(rec, go))
    assert len(rec.batches) == 1
    assert rec.batches[0][1] == [1, 2, 10, 20, 21, 22]
    assert results == [
        [b"(4, 'euler', 1.0):1", b"(4, 'euler', 1.0):2"],
        [b"(4, 'euler', 1.0):10"],
        [b"(4, 'euler', 1.0):20", b"(4, 'euler', 1.0):21", b"(4, 'euler', 1.0):22"],
    ]
    # The forward ran off the event loop, in the batcher's worker thread.
    assert all(name.startswith("gmem-forward") for name in rec.threads)
    samples = {s.name: s.value for s in metrics.batch_requests.collect()[0].samples}
    assert samples["gmem_generator_batch_requests_sum"] == 3


def test_incompatible_settings_never_share_a_batch():
    rec = Recorder()

    async def go(b: Batcher):
        return await asyncio.gather(
            b.submit(job((4, "euler", 1.0), [1])),
            b.submit(job((8, "euler", 1.0), [2])),
            b.submit(job((4, "heun", 1.0), [3])),
            b.submit(job((4, "euler", 2.0), [4])),
            b.submit(job((4, "euler", 1.0), [5])),
        )

    run(_with_batcher(rec, go))
    keys = [k for k, _ in rec.batches]
    assert len(keys) == len(set(keys)) == 4
    by_key = dict(rec.batches)
    assert by_key[(4, "euler", 1.0)] == [1, 5]


def test_batches_hold_at_most_max_images_and_a_large_job_runs_alone():
    rec = Recorder()

    async def go(b: Batcher):
        k = (2, "euler", 1.0)
        return await asyncio.gather(
            *[b.submit(job(k, [i * 10 + j for j in range(3)])) for i in range(5)],
            b.submit(job(k, list(range(100, 112)))),
        )

    run(_with_batcher(rec, go, max_images=8))
    sizes = [len(s) for _, s in rec.batches]
    assert sum(sizes) == 15 + 12
    assert 12 in sizes  # the oversized job alone
    assert all(s <= 8 for s in sizes if s != 12)


def test_a_lone_request_waits_for_announced_company_at_most_the_window_and_otherwise_not_at_all():
    rec = Recorder()

    async def go(b: Batcher):
        t0 = time.monotonic()
        await b.submit(job((1, "euler", 1.0), [1]))
        alone = time.monotonic() - t0
        b.expect()  # another request is in flight (fetching its snippets) but never arrives in time
        t0 = time.monotonic()
        await b.submit(job((1, "euler", 1.0), [2]))
        waited = time.monotonic() - t0
        b.unexpect()
        return alone, waited

    (alone, waited), _ = run(_with_batcher(rec, go, wait_s=0.2))
    assert alone < 0.1
    assert 0.15 <= waited < 1.0


def test_an_announced_request_that_arrives_joins_the_batch():
    rec = Recorder()

    async def go(b: Batcher):
        k = (1, "euler", 1.0)
        b.expect()
        first = asyncio.create_task(b.submit(job(k, [1])))
        await asyncio.sleep(0.05)  # the announced request is still fetching its snippets
        second = b.submit(job(k, [2]), expected=True)
        return await asyncio.gather(first, second)

    run(_with_batcher(rec, go, wait_s=1.0))
    assert [s for _, s in rec.batches] == [[1, 2]]


def test_requests_whose_client_left_are_dropped_before_compute():
    rec = Recorder(delay=0.2)

    async def go(b: Batcher):
        k = (1, "euler", 1.0)
        first = asyncio.create_task(b.submit(job(k, [1])))
        await asyncio.sleep(0.1)  # the first batch is now computing; these two queue behind it

        async def left() -> bool:
            return True

        gone = asyncio.create_task(b.submit(job(k, [2], gone=left)))
        stays = asyncio.create_task(b.submit(job(k, [3])))
        await first
        await stays
        try:
            await gone
        except asyncio.CancelledError:
            return "cancelled"
        return "served"

    outcome, metrics = run(_with_batcher(rec, go, wait_s=0.0))
    assert outcome == "cancelled"
    assert [s for _, s in rec.batches] == [[1], [3]]
    assert metrics.dropped._value.get() == 1


def test_queue_bound_refuses_with_overloaded():
    rec = Recorder(delay=0.3)

    async def go(b: Batcher):
        k = (1, "euler", 1.0)
        running = asyncio.create_task(b.submit(job(k, [0])))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(job(k, list(range(1, 9)))))
        await asyncio.sleep(0.01)
        try:
            await b.submit(job(k, [99]))
        except Overloaded as exc:
            await asyncio.gather(running, queued)
            return exc.message
        return None

    message, _ = run(_with_batcher(rec, go, max_queue=8, wait_s=0.0))
    assert message is not None and "limit 8" in message


def test_an_exception_in_the_forward_reaches_every_request_of_the_batch():
    def broken(key, snippets, seeds):
        raise ValueError("boom")

    async def go(b: Batcher):
        k = (1, "euler", 1.0)
        return await asyncio.gather(b.submit(job(k, [1])), b.submit(job(k, [2])), return_exceptions=True)

    results, _ = run(_with_batcher(broken, go))  # type: ignore[arg-type]
    assert all(isinstance(r, ValueError) for r in results)
