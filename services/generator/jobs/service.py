"""Jobs in the process: admission, records with a TTL, events, cancellation, and POST /generate as a job.

Admission happens before any work (issue: overload was once detected only after
the bank call and the noise): limits and the work bound (n x steps x (2 with
CFG), ``GMEM_GENERATOR_MAX_WORK``) give 422, a full queue gives 429 with
Retry-After, and only then are snippets fetched. Snippets are resolved before the
202, so a bad id is a 404 on ``POST /jobs`` rather than a failed job.

Records live in this process (no Redis): a restart loses queued and running jobs
and finished results, and only this replica answers for its jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from services.generator.errors import STATUS, Overloaded, RequestTimeout
from services.generator.jobs.executor import StepExecutor
from services.generator.jobs.scheduler import Cancelled, StepScheduler, Work
from services.generator.prompts import prompt_info
from shared.errors import GMemError, UnknownSnippet
from shared.schemas.generator import GenerateRequest, GenerateResponse
from shared.schemas.jobs import FINISHED, JobInfo, JobRequest

if TYPE_CHECKING:  # redis_jobs imports this module
    from services.generator.jobs.redis_jobs import RedisJobs

_DRAWN_SEED_LIMIT = 2**31
# How often a waiting POST /generate checks whether its client is still there.
_GONE_POLL_S = 0.1


def outcome(result: dict[str, Any] | None, err: BaseException | None) -> tuple[str, dict[str, str] | None]:
    """(status, error body) of a finished job."""
    if result is not None:
        return "succeeded", None
    if isinstance(err, Cancelled):
        return "cancelled", None
    code = err.code if isinstance(err, GMemError) else "internal_error"
    message = err.message if isinstance(err, GMemError) else f"generation failed: {type(err).__name__}"
    return "failed", {"code": code, "message": message}


@dataclass
class JobSpec:
    """A prepared job: everything needed to run it, on this replica or another, with the same bytes."""

    snippets: np.ndarray
    seeds: list[int]
    steps: int
    sampler: str
    cfg_scale: float
    negative: np.ndarray | None
    interval: tuple[float, float] | None
    preview_every: int | None
    head: dict[str, Any]  # the response fields known before the run (seed, indices, ...)


class UnknownJob(UnknownSnippet):
    """404 for a job id that never existed or whose result expired."""

    code = "unknown_job"


@dataclass
class JobRecord:
    id: str
    steps: int
    status: str = "queued"
    step: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    exception: BaseException | None = None
    work: Work | None = None
    expires_at: float | None = None
    listeners: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self, position: int | None) -> JobInfo:
        return JobInfo(
            id=self.id,
            status=self.status,
            step=self.step,
            steps=self.steps,
            position=position if self.status == "queued" else None,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            result=self.result,
            error=self.error,
        )


class JobService:
    """Owns the step scheduler and the job records of this replica."""

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        self.settings = gen.settings
        self.metrics = gen.metrics
        self.scheduler = StepScheduler(StepExecutor(gen.runtime), gen.settings.max_batch_size, gen.metrics)
        self.records: dict[str, JobRecord] = {}
        self._preparing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.remote: RedisJobs | None = None  # RedisJobs when GMEM_REDIS_URL is set (jobs/redis_jobs.py)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()
        if self.remote is not None:
            await self.remote.start()

    async def stop(self) -> None:
        if self.remote is not None:
            await self.remote.stop()
        await asyncio.to_thread(self.scheduler.stop)

    # ------------------------------------------------------------ the routes' API (local or Redis)

    async def create(self, req: JobRequest) -> tuple[str, int | None]:
        """POST /jobs: (id, position)."""
        if self.remote is not None:
            return await self.remote.create(req)
        rec = await self.submit(req, req.preview_every)
        return rec.id, self.info(rec).position

    async def read(self, job_id: str) -> JobInfo:
        if self.remote is not None:
            return await self.remote.read(job_id)
        return self.info(self.get(job_id))

    async def delete(self, job_id: str) -> tuple[str, str]:
        if self.remote is not None:
            return await self.remote.delete(job_id)
        rec = self.cancel(job_id)
        return rec.id, rec.status

    async def stream(self, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The job's events; raises UnknownJob (404) before the first one for an unknown id."""
        await self.read(job_id)
        source = self.remote.events(job_id) if self.remote is not None else self.events(job_id)
        return source

    # ------------------------------------------------------------ submit

    async def spec(self, req: GenerateRequest, preview_every: int | None, waiting: int) -> JobSpec:
        """Checks and admission (no work yet), then the snippets: all a job needs to run anywhere."""
        steps, sampler = self.gen.check(req)
        if waiting >= self.settings.max_queue_jobs:
            raise Overloaded(
                f"{waiting} jobs are already waiting (limit {self.settings.max_queue_jobs}, "
                "GMEM_GENERATOR_MAX_QUEUE_JOBS); retry after the Retry-After delay"
            )
        self._preparing += 1
        try:
            seed = req.seed if req.seed is not None else secrets.randbelow(_DRAWN_SEED_LIMIT)
            seeds = [seed + k for k in range(req.n)]
            prepared = await self.gen.prepare(req, seeds)
        finally:
            self._preparing -= 1
        prompt = prompt_info(self.gen.prompts, req)
        head = {
            "seed": seed,
            "indices": prepared.indices,
            "bank_version": prepared.bank_version,
            "model": self.gen.runtime.facts.id,
            "steps": steps,
            "sampler": sampler,
            "prompt": None if prompt is None else prompt.model_dump(),
        }
        return JobSpec(
            snippets=prepared.snippets,
            seeds=seeds,
            steps=steps,
            sampler=sampler,
            cfg_scale=float(req.cfg_scale),
            negative=prepared.negative,
            interval=req.guidance_interval,
            preview_every=preview_every,
            head=head,
        )

    def work(
        self,
        job_id: str,
        spec: JobSpec,
        on_start: Callable[[], None],
        on_progress: Callable[[int, int, bytes | None], None],
        on_done: Callable[[dict[str, Any] | None, BaseException | None], None],
    ) -> Work:
        """A scheduler ``Work`` for ``spec`` whose callbacks run on the event loop; on_done gets the result
        body."""
        loop = self._loop or asyncio.get_running_loop()
        t0 = time.perf_counter()

        def done(pngs: list[bytes] | None, err: BaseException | None, saved: int) -> None:
            result = None
            if err is None and pngs is not None:
                self.metrics.images.inc(len(pngs))
                result = GenerateResponse(
                    images=[base64.b64encode(p).decode("ascii") for p in pngs],
                    **spec.head,
                    elapsed_ms=round((time.perf_counter() - t0) * 1000.0, 3),
                    forwards_saved=saved,
                ).model_dump()
            on_done(result, err)

        # the scheduler's thread hands each callback to the event loop (named: the callbacks return None)
        def started() -> None:
            loop.call_soon_threadsafe(on_start)

        def progressed(s: int, n: int, p: bytes | None) -> None:
            loop.call_soon_threadsafe(on_progress, s, n, p)

        def finished(pngs: list[bytes] | None, err: BaseException | None, saved: int) -> None:
            loop.call_soon_threadsafe(done, pngs, err, saved)

        return Work(
            id=job_id,
            snippets=spec.snippets,
            seeds=spec.seeds,
            steps=spec.steps,
            sampler=spec.sampler,
            cfg_scale=spec.cfg_scale,
            negative=spec.negative,
            interval=spec.interval,
            preview_every=spec.preview_every,
            on_start=started,
            on_progress=progressed,
            on_done=finished,
        )

    async def submit(self, req: GenerateRequest, preview_every: int | None = None) -> JobRecord:
        """Admit, resolve snippets, queue: the record comes back queued (or 4xx/429/503 before any work)."""
        spec = await self.spec(req, preview_every, self.scheduler.queued + self._preparing)
        self._expire()
        rec = JobRecord(id=uuid.uuid4().hex, steps=spec.steps)
        rec.work = self.work(
            rec.id,
            spec,
            lambda: self._started(rec),
            lambda s, n, p: self._progress(rec, s, n, p),
            lambda res, err: self._done(rec, res, err),
        )
        self.records[rec.id] = rec
        self.scheduler.submit(rec.work)
        return rec

    # ------------------------------------------------------------ callbacks (event loop)

    def _publish(self, rec: JobRecord, event: str, data: dict[str, Any]) -> None:
        for q in rec.listeners:
            q.put_nowait((event, data))

    def _started(self, rec: JobRecord) -> None:
        if rec.status == "queued":
            rec.status, rec.started_at = "running", time.time()

    def _progress(self, rec: JobRecord, step: int, steps: int, preview: bytes | None) -> None:
        rec.step = step
        data: dict[str, Any] = {"step": step, "steps": steps}
        if preview is not None:
            data["preview"] = base64.b64encode(preview).decode("ascii")
        self._publish(rec, "progress", data)

    def _done(self, rec: JobRecord, result: dict[str, Any] | None, err: BaseException | None) -> None:
        rec.finished_at = time.time()
        rec.expires_at = time.monotonic() + self.settings.job_ttl_s
        rec.status, rec.error = outcome(result, err)
        if result is not None:
            rec.result, rec.step = result, rec.steps
        if rec.status == "failed":
            rec.exception = err
        rec.work = None
        rec.finished.set()
        self._publish(rec, "done", self.info(rec).model_dump())

    # ------------------------------------------------------------ reads and cancel

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, r in self.records.items() if r.expires_at is not None and r.expires_at < now]:
            del self.records[job_id]

    def get(self, job_id: str) -> JobRecord:
        self._expire()
        rec = self.records.get(job_id)
        if rec is None:
            raise UnknownJob(
                f"no job {job_id!r} (unknown, or its result expired after "
                f"{self.settings.job_ttl_s:g} s, GMEM_GENERATOR_JOB_TTL_S)"
            )
        return rec

    def info(self, rec: JobRecord) -> JobInfo:
        position = (
            self.scheduler.position(rec.work) if rec.work is not None and rec.status == "queued" else None
        )
        return rec.info(position)

    def cancel(self, job_id: str) -> JobRecord:
        rec = self.get(job_id)
        if rec.status not in FINISHED and rec.work is not None:
            self.scheduler.cancel(rec.work)
        return rec

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``progress`` events from now on, then one ``done`` with the job's body."""
        rec = self.get(job_id)
        if rec.status in FINISHED:
            yield "done", self.info(rec).model_dump()
            return
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        rec.listeners.add(q)
        try:
            if rec.step:
                yield "progress", {"step": rec.step, "steps": rec.steps}
            while True:
                event, data = await q.get()
                yield event, data
                if event == "done":
                    return
        finally:
            rec.listeners.discard(q)

    # ------------------------------------------------------------ POST /generate

    async def generate(
        self, req: GenerateRequest, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> GenerateResponse:
        """A job the server waits on; a client that leaves (or a timeout) cancels it."""
        rec = await self.submit(req)
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            while not rec.finished.is_set():
                if time.monotonic() > deadline:
                    raise RequestTimeout(
                        f"the request was not answered within {self.settings.request_timeout_s:g} s "
                        "(GMEM_GENERATOR_REQUEST_TIMEOUT_S); retry later or ask for fewer images or steps"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rec.finished.wait(), _GONE_POLL_S)
                if not rec.finished.is_set() and gone is not None and await gone():
                    self.metrics.dropped.inc()
                    raise asyncio.CancelledError
        except BaseException:
            if rec.work is not None:
                self.scheduler.cancel(rec.work)
            self.records.pop(rec.id, None)
            raise
        self.records.pop(rec.id, None)  # nobody can ask for a synchronous request's job id
        if rec.status == "succeeded":
            return GenerateResponse(**rec.result)  # type: ignore[arg-type]
        if isinstance(rec.exception, GMemError) and STATUS.status_of(rec.exception) != 500:
            raise rec.exception
        if rec.exception is not None:
            raise rec.exception
        raise RequestTimeout("the request was cancelled before it finished; retry")
