"""Step-level continuous batching: one network forward per step over the rows of every running job.

Each running job holds a ``SamplerState`` (training/samplers.py). Between forwards
the scheduler admits queued jobs (FIFO), drops cancelled ones, and collects the
``(x, t)`` every running job needs next: jobs with different steps, samplers and
times share the forward because ``t`` is an input per row. A job with classifier-free
guidance adds its unconditional rows (null = zero or the negative snippet) to the
same forward, and only while guidance applies at its current ``t``. Each job then
advances with its own rows, with exactly the arithmetic ``run_sampler`` does, so an
image's bytes are those of the image run alone whenever the network's rows do not
depend on their neighbours (services/generator/runtime.py probes that, or pads).

Admission policies (the benchmark compares them in one run):

- ``step``: a queued job joins at the next forward while the running jobs hold
  fewer than ``max_images`` images (a job larger than that runs when nothing else does);
- ``request``: yesterday's request-level batching: a batch of queued jobs with the
  same (steps, sampler, cfg_scale) starts together and runs to its end before the next;
- ``none``: one job at a time.

The loop runs in one worker thread (one device's worth of compute); callbacks fire in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger("gmem.generator")

Policy = Literal["step", "request", "none"]


@dataclass
class Work:
    """One job's images as the scheduler sees them."""

    id: str
    snippets: np.ndarray  # [n, d] float32 unit rows
    seeds: list[int]
    steps: int
    sampler: str
    cfg_scale: float = 1.0
    negative: np.ndarray | None = None  # [n, d] CFG null rows; None = zero vector
    interval: tuple[float, float] | None = None  # guidance interval [t_lo, t_hi]
    preview_every: int | None = None
    # Called in the worker thread: on_start(); on_progress(step, steps, preview PNG or None);
    # on_done(pngs or None, error or None, saved unconditional forwards per image).
    on_start: Callable[[], None] = lambda: None
    on_progress: Callable[[int, int, bytes | None], None] = lambda s, n, p: None
    on_done: Callable[[list[bytes] | None, BaseException | None, int], None] = lambda p, e, s: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    state: Any = None
    cond: Any = None
    null: Any = None
    saved: int = 0  # unconditional forward rows skipped (guidance interval), summed over images
    reported_step: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def key(self) -> tuple[int, str, float]:
        return (self.steps, self.sampler, self.cfg_scale)


class Cancelled(Exception):
    """The job was cancelled before it finished."""


class StepScheduler:
    """Runs ``Work`` items through the model, one shared forward per step."""

    def __init__(self, runtime: Any, max_images: int, metrics: Any = None, policy: Policy = "step") -> None:
        self.runtime = runtime
        self.max_images = max_images
        self.metrics = metrics
        self.policy = policy
        self._queue: deque[Work] = deque()
        self._running: list[Work] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.forwards = 0

    # ------------------------------------------------------------ control (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gmem-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, work: Work) -> None:
        with self._cv:
            self._queue.append(work)
            self._gauge()
            self._cv.notify_all()

    def cancel(self, work: Work) -> None:
        work.cancelled.set()
        with self._cv:
            self._cv.notify_all()

    def position(self, work: Work) -> int | None:
        """Jobs ahead of ``work`` in the queue (0 = next); None once it runs."""
        with self._cv:
            for i, w in enumerate(self._queue):
                if w is work:
                    return i
        return None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def idle(self) -> bool:
        with self._cv:
            return not self._queue and not self._running

    # ------------------------------------------------------------ the loop (worker thread)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._running:
                    self._cv.wait()
                if self._stop:
                    return
                self._drop_cancelled()
                admitted = self._admit()
            for work in admitted:
                self._begin(work)
            if self._running:
                self._step()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_jobs.set(len(self._queue))
            self.metrics.running_jobs.set(len(self._running))

    def _drop_cancelled(self) -> None:
        for work in [w for w in self._queue if w.cancelled.is_set()]:
            self._queue.remove(work)
            self._finish(work, None, Cancelled())
        for work in [w for w in self._running if w.cancelled.is_set()]:
            self._running.remove(work)
            self._finish(work, None, Cancelled())
        self._gauge()

    def _admit(self) -> list[Work]:
        taken: list[Work] = []
        if self.policy == "step":
            images = sum(w.n for w in self._running)
            while self._queue and (
                not self._running and not taken or images + self._queue[0].n <= self.max_images
            ):
                work = self._queue.popleft()
                taken.append(work)
                images += work.n
        elif not self._running and self._queue:
            head = self._queue.popleft()
            taken.append(head)
            if self.policy == "request":
                images = head.n
                for work in list(self._queue):
                    if work.key == head.key and images + work.n <= self.max_images:
                        self._queue.remove(work)
                        taken.append(work)
                        images += work.n
        self._running.extend(taken)
        self._gauge()
        return taken

    def _begin(self, work: Work) -> None:
        try:
            self.runtime.begin(work)
        except Exception as exc:  # noqa: BLE001 - the job fails, the scheduler goes on
            self._running.remove(work)
            self._finish(work, None, exc)
            return
        work.started_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.queue_seconds.observe(work.started_at - work.queued_at)
        work.on_start()

    def _step(self) -> None:
        batch = list(self._running)
        t0 = time.perf_counter()
        try:
            rows = self.runtime.step(batch)
        except Exception as exc:  # every job of a failed forward fails
            log.exception("forward failed")
            for work in batch:
                self._running.remove(work)
                self._finish(work, None, exc)
            return
        self.forwards += 1
        if self.metrics is not None:
            self.metrics.forward_per_nfe.observe(time.perf_counter() - t0)
            self.metrics.batch_rows.observe(rows)
            self.metrics.batch_jobs.observe(len(batch))
        for work in batch:
            state = work.state
            if state.step != work.reported_step or state.done:
                work.reported_step = state.step
                preview = None
                if work.preview_every and not state.done and state.step % work.preview_every == 0:
                    preview = self._safe_preview(work)
                work.on_progress(state.step, work.steps, preview)
            if state.done:
                with self._cv:
                    self._running.remove(work)
                    self._gauge()
                try:
                    pngs = self.runtime.finish(work)
                except Exception as exc:  # noqa: BLE001
                    self._finish(work, None, exc)
                    continue
                self._finish(work, pngs, None)

    def _safe_preview(self, work: Work) -> bytes | None:
        try:
            preview: bytes | None = self.runtime.preview(work)
            return preview
        except Exception:  # a preview never fails a job
            log.exception("preview of job %s failed", work.id)
            return None

    def _finish(self, work: Work, pngs: list[bytes] | None, error: BaseException | None) -> None:
        if self.metrics is not None:
            status = (
                "succeeded" if error is None else ("cancelled" if isinstance(error, Cancelled) else "failed")
            )
            self.metrics.jobs.labels(status).inc()
            if work.started_at is not None:
                self.metrics.inference_seconds.observe(time.monotonic() - work.started_at)
            if work.saved:
                self.metrics.saved_forwards.inc(work.saved)
        work.state = work.cond = work.null = None  # free the tensors now, not when the record expires
        try:
            work.on_done(pngs, error, work.saved)
        except Exception:
            log.exception("on_done of job %s failed", work.id)
