"""Prometheus metrics of one bank app, in its own registry (several apps can live in one process)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BankMetrics:
    """Request counts and latencies per route, bank size and version, fsync and Redis health."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gmem_bank_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gmem_bank_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync = Histogram(
            "gmem_bank_fsync_seconds", "edit-log write + fsync latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.redis_failures = Counter(
            "gmem_bank_redis_publish_failures", "failed Redis connects/publishes", registry=r
        )
        self.size = Gauge("gmem_bank_size", "live snippets per pool", ["pool"], registry=r)
        self.version = Gauge("gmem_bank_version", "current bank version (acknowledged mutations)", registry=r)
        self.last_fsync = Gauge(
            "gmem_bank_last_fsync_seconds", "latency of the last edit-log fsync", registry=r
        )
        self.snapshot_version = Gauge(
            "gmem_bank_snapshot_version", "bank version of the last snapshot (0 = none)", registry=r
        )
        self.snapshot_time = Gauge(
            "gmem_bank_snapshot_timestamp_seconds",
            "unix time the last snapshot was written (0 = none)",
            registry=r,
        )
        self.redis_up = Gauge("gmem_bank_redis_up", "1 when the event stream is reachable", registry=r)
        self.redis_pending = Gauge(
            "gmem_bank_redis_pending_events", "mutations not yet in the stream", registry=r
        )

    def bind(
        self,
        *,
        size: Callable[[str], float],
        version: Callable[[], float],
        last_fsync: Callable[[], float],
        redis_up: Callable[[], float],
        redis_pending: Callable[[], float],
        snapshot_version: Callable[[], float] = lambda: 0.0,
        snapshot_time: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """Gauges read live state at scrape time, so they can never drift from the store."""
        for pool in ("base", "user", "all"):
            self.size.labels(pool).set_function(functools.partial(size, pool))
        self.version.set_function(version)
        self.last_fsync.set_function(last_fsync)
        self.snapshot_version.set_function(snapshot_version)
        self.snapshot_time.set_function(snapshot_time)
        self.redis_up.set_function(redis_up)
        self.redis_pending.set_function(redis_pending)

    def observe_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """One finished HTTP request (``shared.http.middleware.RequestContext``'s ``on_request``)."""
        label = route or "unmatched"
        self.requests.labels(method, label, str(status)).inc()
        self.latency.labels(method, label).observe(seconds)
