"""Prometheus metrics of one generator app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_NFE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass
class GeneratorMetrics:
    registry: CollectorRegistry
    requests: Counter
    images: Counter
    latency: Histogram
    forward_per_nfe: Histogram
    dropped: Counter
    bank_calls: Counter
    cache: Counter
    cache_enabled: Gauge
    queue_seconds: Histogram
    inference_seconds: Histogram
    batch_rows: Histogram
    batch_jobs: Histogram
    queue_jobs: Gauge
    running_jobs: Gauge
    jobs: Counter
    saved_forwards: Counter


def make_metrics() -> GeneratorMetrics:
    r = CollectorRegistry()
    return GeneratorMetrics(
        registry=r,
        requests=Counter(
            "gmem_generator_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        ),
        images=Counter("gmem_generator_images", "images generated and returned", registry=r),
        latency=Histogram(
            "gmem_generator_request_seconds",
            "request latency by route",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        ),
        forward_per_nfe=Histogram(
            "gmem_generator_forward_seconds_per_nfe",
            "wall time per network evaluation of a (micro-)batch, averaged over its sampler run",
            buckets=_NFE,
            registry=r,
        ),
        dropped=Counter(
            "gmem_generator_dropped_requests", "queued requests dropped because the client left", registry=r
        ),
        bank_calls=Counter(
            "gmem_generator_bank_calls", "calls to the bank by outcome", ["outcome"], registry=r
        ),
        cache=Counter("gmem_generator_snippet_cache", "pinned-snippet cache events", ["event"], registry=r),
        cache_enabled=Gauge(
            "gmem_generator_snippet_cache_enabled", "1 while the Redis-fed cache is coherent", registry=r
        ),
        # Triton/TGI-style names: queue time and compute time of each job, separately.
        queue_seconds=Histogram(
            "gmem_generator_queue_duration_seconds",
            "time a job waited before its first step",
            buckets=_LATENCY,
            registry=r,
        ),
        inference_seconds=Histogram(
            "gmem_generator_inference_duration_seconds",
            "time from a job's first step to its end",
            buckets=_LATENCY,
            registry=r,
        ),
        batch_rows=Histogram(
            "gmem_generator_batch_size",
            "network rows per step-scheduler forward (CFG rows included)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        ),
        batch_jobs=Histogram(
            "gmem_generator_batch_jobs",
            "jobs sharing one step-scheduler forward",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        ),
        queue_jobs=Gauge("gmem_generator_queue_size", "jobs waiting for the scheduler", registry=r),
        running_jobs=Gauge("gmem_generator_running_jobs", "jobs in the step scheduler's batch", registry=r),
        jobs=Counter("gmem_generator_jobs", "finished jobs by status", ["status"], registry=r),
        saved_forwards=Counter(
            "gmem_generator_saved_forwards",
            "unconditional network rows skipped outside the guidance interval",
            registry=r,
        ),
    )
