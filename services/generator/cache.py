"""Pinned-snippet cache kept coherent by the bank's Redis event stream (``shared.events``).

A snippet id's content never changes and ids are never reused, so the only event
that can make a cached entry wrong is its deletion. The cache therefore serves an
id only while it can prove it has seen every event up to now:

- before every lookup it reads the stream from its last position (a non-blocking
  XREAD, one Redis round trip), evicting and tombstoning deleted ids; a
  background task does the same every ``poll_s`` so evictions also happen
  between requests;
- an entry is never stored for a tombstoned id, so a bank answer fetched just
  before a delete cannot re-enter the cache after the delete was seen;
- any Redis error disables the cache and clears it (no answers from a cache that
  cannot follow the stream); when Redis answers again the cache restarts empty
  from the stream's current end.

Redis being down never fails a request: the generator simply asks the bank. Nor does a hung
Redis slow one down: a circuit breaker guards every call (short timeouts; the first failure opens
it; while open, lookups skip Redis and go to the bank at once; after ``open_s`` the background task,
never a request, probes Redis (half-open) and closes the breaker when it answers). A lookup waits
for another one's catch-up at most ``timeout_s``, then asks the bank.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from services.generator.metrics import GeneratorMetrics
from shared.events import DEFAULT_STREAM, decode_event, event_version

log = logging.getLogger("gmem.generator.cache")


class SnippetCache:
    """id -> unit snippet, following the bank's event stream; disabled while Redis is unreachable."""

    def __init__(
        self,
        redis_url: str,
        metrics: GeneratorMetrics,
        max_entries: int = 100_000,
        poll_s: float = 0.5,
        stream: str = DEFAULT_STREAM,
        timeout_s: float = 0.1,
        open_s: float = 1.0,
    ) -> None:
        # redis is needed only with GMEM_REDIS_URL set; the generator's image may leave it out
        # (deploy/requirements-generator.txt), so it is imported when a cache is made.
        import redis.asyncio as aioredis

        self._timeout_s = timeout_s
        self._open_s = open_s
        self._tripped = False  # breaker open (or half-open): requests do not touch Redis
        self._probe_at = 0.0  # when the background task may probe a tripped breaker (monotonic time)
        self._redis = aioredis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._metrics = metrics
        self._stream = stream
        self._max = max_entries
        self._poll_s = poll_s
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()
        self._deleted: set[int] = set()
        self._last_id: str | None = None  # stream position; None = disabled
        self.version: int | None = None  # highest bank version seen on the stream
        self._lock = asyncio.Lock()
        # Bumped whenever the cache restarts: a bank answer fetched in an older epoch may
        # predate a delete this epoch never saw, so put() refuses it.
        self.epoch = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._last_id is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="gmem-snippet-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    @property
    def breaker_open(self) -> bool:
        return self._tripped

    async def _follow(self) -> None:
        while True:
            if not self._tripped or time.monotonic() >= self._probe_at:
                await self.sync()  # for a tripped breaker, this is the half-open probe
            await asyncio.sleep(self._poll_s)

    async def sync(self, wait_s: float | None = None) -> bool:
        """Catch up with the stream (enabling the cache if Redis is back); True when coherent.

        ``wait_s``: how long to wait for a catch-up already in progress (None: as long as it takes).
        """
        try:
            await asyncio.wait_for(self._lock.acquire(), wait_s)
        except TimeoutError:
            return False
        try:
            async with asyncio.timeout(
                2 * self._timeout_s + 0.05
            ):  # a bound even if a socket timeout is missed
                if self._last_id is None:
                    await self._enable()
                else:
                    await self._catch_up()
            self._tripped = False
            return True
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "cannot stay coherent"
            if self.enabled:
                log.warning(
                    "snippet cache disabled for %.1f s: Redis unreachable or slow (%s)",
                    self._open_s,
                    type(exc).__name__,
                )
            self._disable()
            self._tripped, self._probe_at = True, time.monotonic() + self._open_s
            self._metrics.cache.labels("breaker_opened").inc()
            return False
        finally:
            self._lock.release()

    async def _enable(self) -> None:
        # Start from the stream's current end: everything cached from now on is
        # newer than the position, so every later delete will be seen.
        # redis-py types its replies loosely (bytes | str | ...); these are bytes, decode_responses off.
        last: Any = await self._redis.xrevrange(self._stream, count=1)
        self._entries.clear()
        self._deleted.clear()
        self.version = None
        if last:
            self._apply(last[0][1])
        self._last_id = last[0][0].decode() if last else "0-0"
        self.epoch += 1
        self._metrics.cache_enabled.set(1)
        self._metrics.cache.labels("enabled").inc()

    async def _catch_up(self) -> None:
        while True:
            assert self._last_id is not None
            resp: Any = await self._redis.xread({self._stream: self._last_id}, count=1000)
            if not resp:
                return
            entries = resp[0][1]
            for entry_id, fields in entries:
                self._apply(fields)
                self._last_id = entry_id.decode()
            if len(entries) < 1000:
                return

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        version = event_version(fields)
        if version is not None:
            self.version = max(self.version or 0, version)
        event = decode_event(fields)
        if event is None:
            return
        # Only deletes change an existing id; evicting on any event is equally safe and simpler.
        if self._entries.pop(event.id, None) is not None:
            self._metrics.cache.labels("evicted").inc()
        if event.is_delete:
            self._deleted.add(event.id)

    def _disable(self) -> None:
        if self._last_id is not None:
            self.epoch += 1
        self._last_id = None
        self._entries.clear()
        self._deleted.clear()
        self._metrics.cache_enabled.set(0)

    async def get(self, ids: list[int], min_version: int | None = None) -> dict[int, np.ndarray]:
        """Cached snippets among ``ids`` after catching up with the stream; {} when disabled.

        ``min_version``: a bank version known to exist. While the stream has not reached it
        (the bank publishes after acknowledging), a delete may be missing, so nothing is served.
        """
        if self.breaker_open:
            self._metrics.cache.labels("breaker_open").inc()
            return {}
        if not await self.sync(wait_s=self._timeout_s):
            return {}
        if min_version is not None and (self.version or 0) < min_version:
            self._metrics.cache.labels("stream_behind").inc()
            return {}
        found: dict[int, np.ndarray] = {}
        for i in set(ids):
            row = self._entries.get(i)
            if row is not None:
                self._entries.move_to_end(i)
                found[i] = row
        self._metrics.cache.labels("hit").inc(sum(1 for i in ids if i in found))
        self._metrics.cache.labels("miss").inc(sum(1 for i in ids if i not in found))
        return found

    def put(self, ids: list[int], snippets: np.ndarray, epoch: int) -> None:
        """Remember snippets the bank returned in ``epoch``, except for ids already seen deleted."""
        if not self.enabled or epoch != self.epoch:
            return
        for i, row in zip(ids, snippets, strict=True):
            if i in self._deleted:
                continue
            self._entries[i] = np.array(row, dtype=np.float32)
            self._entries.move_to_end(i)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
