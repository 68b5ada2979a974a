"""Publishes acknowledged mutations to the bank's Redis stream (format: ``shared.events``).

Runs in its own thread, woken after each mutation, so Redis being slow or down
never blocks or fails a mutation. The source of truth is the store's event list
(rebuilt from the edit log at start); the publisher only keeps a cursor, the
last version it knows is in the stream. After any error it reconnects with
backoff and resumes from the stream's last ``version`` entry, so events missed
while Redis was down (or lost by a Redis restart) are appended in order, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.bank.store import BankStore
from shared.events import BankEvent, event_version

log = logging.getLogger("gmem.bank.events")

_BATCH = 500
_IDLE_PING_S = 2.0
_MAX_BACKOFF_S = 2.0


class EventPublisher:
    """Background XADD of ``{"version", "op", "id"}`` per mutation, in version order."""

    def __init__(
        self,
        store: BankStore,
        url: str,
        stream: str,
        maxlen: int,
        timeout_s: float,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.timeout_s = timeout_s
        self.on_failure = on_failure
        self.published = 0
        self.state = "connecting"
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def pending(self) -> int:
        return max(0, self.store.view().version - self.published)

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.store.add_listener(self.notify)
        self._thread = threading.Thread(target=self._run, name="bank-redis-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.timeout_s + 1)

    def _connect(self) -> redis.Redis:
        client = redis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        client.ping()
        self.published = self._resume_point(client)
        return client

    def _resume_point(self, client: redis.Redis) -> int:
        """Last version already in the stream; a stream ahead of us belongs to another data dir."""
        last: Any = client.xrevrange(self.stream, count=1)  # redis-py types its replies loosely
        current = self.store.view().version
        if not last:
            return 0
        version = event_version(last[0][1])
        if version is None:
            return current
        return version if version <= current else current

    def _publish_pending(self, client: redis.Redis) -> None:
        target = self.store.view().version
        while self.published < target and not self._stop.is_set():
            batch = self.store.events_since(self.published, _BATCH)
            if not batch:
                return
            pipe = client.pipeline(transaction=False)
            for version, op, sid in batch:
                pipe.xadd(
                    self.stream,
                    BankEvent(version, op, sid).fields(),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
            pipe.execute()
            self.published = batch[-1][0]

    def _run(self) -> None:
        client: redis.Redis | None = None
        backoff = 0.05
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                    if self.state != "up":
                        log.info(
                            "redis %s: connected, resuming events after version %d", self.url, self.published
                        )
                    self.state, backoff = "up", 0.05
                self._wake.clear()
                self._publish_pending(client)
                if not self._wake.wait(_IDLE_PING_S) and not self._stop.is_set():
                    client.ping()  # notice an outage while idle, for /readyz
            except Exception as exc:  # this thread must outlive any error; Redis ones are expected
                if not isinstance(exc, redis.RedisError | OSError):
                    log.exception("event publisher error; retrying")
                self.failures += 1
                self.on_failure()
                if self.state == "up" or self.state == "connecting":
                    log.warning(
                        "redis %s unavailable (%s); mutations continue, events are queued", self.url, exc
                    )
                self.state = f"down: {type(exc).__name__}"
                if client is not None:
                    client.close()
                    client = None
                self._stop.wait(backoff)
                backoff = min(2 * backoff, _MAX_BACKOFF_S)
        if client is not None:
            client.close()
