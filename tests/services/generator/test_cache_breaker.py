"""The snippet cache never waits on a hung Redis (issue item 12): a circuit breaker, then the bank.

Against a real redis-server, frozen with SIGSTOP (connections accepted, never answered) and killed.
Before this change every lookup queued behind one lock with a 2 s socket timeout: 8 concurrent
pinned-snippet lookups took 3.9 to 18 s. Now the first failure opens the breaker and the rest skip
Redis; only the background task probes it again (half-open), and the cache comes back by itself.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import numpy as np

from services.generator.cache import SnippetCache
from services.generator.metrics import GeneratorMetrics, make_metrics
from shared.events import DEFAULT_STREAM as STREAM
from tests.support.services import start_redis


def counted(metrics: GeneratorMetrics, event: str) -> float:
    return metrics.cache.labels(event)._value.get()


async def _scenario(port: int, freeze, thaw) -> dict[str, float]:
    metrics = make_metrics()
    cache = SnippetCache(f"redis://127.0.0.1:{port}/0", metrics, poll_s=0.05, timeout_s=0.1, open_s=0.3)
    cache.start()
    try:
        for _ in range(100):
            if cache.enabled:
                break
            await asyncio.sleep(0.02)
        assert cache.enabled
        cache.put([1, 2], np.ones((2, 4), np.float32), cache.epoch)
        assert set(await cache.get([1, 2])) == {1, 2}

        freeze()
        t = time.perf_counter()
        results = await asyncio.gather(*(cache.get([1, 2]) for _ in range(8)))
        first_wave = time.perf_counter() - t
        assert results == [{}] * 8  # nothing served while coherence cannot be proven
        assert cache.breaker_open and not cache.enabled
        t = time.perf_counter()
        later = await asyncio.gather(*(cache.get([1]) for _ in range(8)))
        second_wave = time.perf_counter() - t
        assert later == [{}] * 8
        assert counted(metrics, "breaker_open") >= 8  # the second wave never touched Redis
        assert counted(metrics, "breaker_opened") >= 1

        thaw()
        for _ in range(200):  # the background probe closes the breaker and re-enables the cache
            if cache.enabled and not cache.breaker_open:
                break
            await asyncio.sleep(0.02)
        assert cache.enabled and not cache.breaker_open
        assert await cache.get([1]) == {}  # restarted empty: entries from before the outage are gone
        return {"first_wave_s": first_wave, "second_wave_s": second_wave}
    finally:
        await cache.stop()


def test_hung_redis_opens_the_breaker_and_lookups_do_not_wait(tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    try:
        assert redis.popen is not None
        pid = redis.popen.pid
        times = asyncio.run(
            _scenario(
                redis.port,
                lambda: redis.popen.send_signal(signal.SIGSTOP),
                lambda: redis.popen.send_signal(signal.SIGCONT),
            )
        )
    finally:
        if redis.popen is not None and redis.popen.poll() is None:
            redis.popen.send_signal(signal.SIGCONT)
        redis.stop(kill=True)
    print(
        f"redis {pid} frozen: 8 concurrent lookups {times['first_wave_s'] * 1000:.0f} ms (breaker opening), "
        f"then 8 more {times['second_wave_s'] * 1000:.1f} ms"
    )
    # Loose bounds, far from the old 3.9-18 s: one short timeout at most, then no wait at all.
    assert times["first_wave_s"] < 2.0 and times["second_wave_s"] < 1.0


def test_killed_redis_falls_back_at_once_and_the_cache_returns(tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    port = redis.port
    box = {"redis": redis}

    def kill() -> None:
        box["redis"].stop(kill=True)

    def restart() -> None:
        box["redis"] = start_redis(tmp_path, port=port)

    try:
        asyncio.run(_scenario(port, kill, restart))
    finally:
        box["redis"].stop(kill=True)


def test_a_delete_published_during_the_outage_is_honoured_after_it(tmp_path: Path) -> None:
    """Coherence survives the breaker: the cache restarts from the stream's end, empty."""
    import redis as sync_redis

    server = start_redis(tmp_path)

    async def run() -> None:
        metrics = make_metrics()
        cache = SnippetCache(
            f"redis://127.0.0.1:{server.port}/0", metrics, poll_s=0.05, timeout_s=0.1, open_s=0.2
        )
        cache.start()
        try:
            while not cache.enabled:
                await asyncio.sleep(0.02)
            cache.put([7], np.ones((1, 4), np.float32), cache.epoch)
            assert 7 in await cache.get([7])
            assert server.popen is not None
            server.popen.send_signal(signal.SIGSTOP)
            assert await cache.get([7]) == {}
            server.popen.send_signal(signal.SIGCONT)
            sync_redis.Redis(port=server.port).xadd(STREAM, {"version": 9, "op": "delete", "id": 7})
            while cache.breaker_open or not cache.enabled:
                await asyncio.sleep(0.02)
            cache.put([7], np.ones((1, 4), np.float32), cache.epoch - 1)  # an answer from before: refused
            assert await cache.get([7]) == {}
        finally:
            await cache.stop()

    try:
        asyncio.run(run())
    finally:
        if server.popen is not None and server.popen.poll() is None:
            server.popen.send_signal(signal.SIGCONT)
        server.stop(kill=True)
