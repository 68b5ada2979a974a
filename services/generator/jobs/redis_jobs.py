"""Jobs in Redis (``GMEM_REDIS_URL``): any replica answers for any job, work is shared, nothing is lost
to kill -9.

Layout:

- ``gmem:job:{id}``: a hash with the job's spec (seeds, snippets as float32 bytes, ...:
  everything needed to run it again with the same bytes), status, step, times,
  result or error, the latest preview, a cancel flag and the owner's consumer name;
  it expires ``GMEM_GENERATOR_JOB_TTL_S`` after the job ends.
- ``gmem:jobs``: a stream with one entry per job, read through the consumer group
  ``gmem-generators``. A replica takes an entry only when its scheduler has room,
  so queued work goes to whichever replica frees up first.

While a replica runs a job it keeps the entry's idle time low (``XCLAIM`` of its own
entries); an entry idle for ``GMEM_GENERATOR_JOB_CLAIM_IDLE_S`` belongs to a replica that
died, and ``XAUTOCLAIM`` hands it to another (or to the same one restarted), which runs
the job again from the start. Progress, previews and the cancel flag go through the
hash; event streams on any replica poll it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, StreamIdT

from services.generator.errors import ModelNotReady
from services.generator.jobs.scheduler import Work
from services.generator.jobs.service import JobService, JobSpec, UnknownJob, outcome
from shared.schemas.jobs import FINISHED, JobInfo, JobRequest

log = logging.getLogger("gmem.generator")

STREAM, GROUP = "gmem:jobs", "gmem-generators"
_POLL_S = 0.05
# A key of a job still running expires after this anyway (a safety net for abandoned keys).
_RUNNING_TTL_S = 24 * 3600


class JobsUnavailable(ModelNotReady):
    code = "jobs_unavailable"


def _key(job_id: str) -> str:
    return f"gmem:job:{job_id}"


def _rows(arr: np.ndarray | None) -> dict[str, Any] | None:
    if arr is None:
        return None
    a = np.ascontiguousarray(arr, dtype="<f4")
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _unrows(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    return np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"]).copy()


def dump_spec(spec: JobSpec) -> str:
    return json.dumps(
        {
            "snippets": _rows(spec.snippets),
            "seeds": spec.seeds,
            "steps": spec.steps,
            "sampler": spec.sampler,
            "cfg_scale": spec.cfg_scale,
            "negative": _rows(spec.negative),
            "interval": spec.interval,
            "preview_every": spec.preview_every,
            "head": spec.head,
        }
    )


def load_spec(text: str) -> JobSpec:
    d = json.loads(text)
    return JobSpec(
        snippets=_unrows(d["snippets"]),  # type: ignore[arg-type]
        seeds=d["seeds"],
        steps=d["steps"],
        sampler=d["sampler"],
        cfg_scale=d["cfg_scale"],
        negative=_unrows(d["negative"]),
        interval=tuple(d["interval"]) if d["interval"] else None,
        preview_every=d["preview_every"],
        head=d["head"],
    )


@dataclass
class _Local:
    entry: str
    work: Work
    step: int = 0
    written: int = -1
    preview: str | None = None
    preview_step: int = -1
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class RedisJobs:
    """The Redis job store and this replica's consumer of the shared queue."""

    def __init__(self, service: JobService, url: str) -> None:
        self.svc = service
        self.settings = service.settings
        self.r = aioredis.from_url(url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=2.0)
        self.consumer = f"gen-{uuid.uuid4().hex[:12]}"
        self.local: dict[str, _Local] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def _ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: another replica created it
            await self.r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)

    async def start(self) -> None:
        with contextlib.suppress(RedisError):  # Redis down at start: the pump retries
            await self._ensure_group()
        self._tasks = [
            asyncio.create_task(self._pump(), name="gmem-jobs-pump"),
            asyncio.create_task(self._beat(), name="gmem-jobs-beat"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.r.aclose()

    # ------------------------------------------------------------ API (any replica)

    async def _guard(self, coro: Any) -> Any:
        try:
            return await coro
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                # Redis lost the stream (restarted without persistence): recreate it; retry shortly.
                with contextlib.suppress(RedisError):
                    await self._ensure_group()
            raise JobsUnavailable(f"the job store (Redis) answered {exc}; retry shortly") from exc
        except RedisError as exc:
            raise JobsUnavailable(
                f"the job store (Redis) is unavailable ({type(exc).__name__}); retry later"
            ) from exc

    async def _waiting(self) -> int:
        try:
            groups = await self.r.xinfo_groups(STREAM)
        except ResponseError:  # no stream yet (or Redis lost it): make it
            await self._ensure_group()
            groups = await self.r.xinfo_groups(STREAM)
        for g in groups:
            if g["name"] == GROUP and g.get("lag") is not None:
                return int(g["lag"])
        return int(await self.r.xlen(STREAM))

    async def _position(self, entry: str) -> int | None:
        for g in await self.r.xinfo_groups(STREAM):
            if g["name"] == GROUP:
                last = g["last-delivered-id"]
                # redis-py types replies for both decode modes (and None); decode_responses=True gives str.
                ahead = cast(
                    "list[tuple[str, dict[str, str]]]",
                    await self.r.xrange(
                        STREAM, min=f"({last}", max=entry, count=self.settings.max_queue_jobs + 1
                    ),
                )
                return max(0, len(ahead) - 1) if any(e == entry for e, _ in ahead) else None
        return None

    async def create(self, req: JobRequest) -> tuple[str, int | None]:
        waiting = await self._guard(self._waiting())
        spec = await self.svc.spec(req, req.preview_every, waiting + self.svc._preparing)
        job_id = uuid.uuid4().hex

        async def put() -> int | None:
            key = _key(job_id)
            await self.r.hset(
                key,
                mapping={
                    "spec": dump_spec(spec),
                    "status": "queued",
                    "step": 0,
                    "steps": spec.steps,
                    "created_at": time.time(),
                },
            )
            await self.r.expire(key, _RUNNING_TTL_S)
            entry = cast(str, await self.r.xadd(STREAM, {"id": job_id}))  # decode_responses=True: a str
            await self.r.hset(key, "entry", entry)
            return await self._position(entry)

        return job_id, await self._guard(put())

    async def _hash(self, job_id: str) -> dict[str, str]:
        h: dict[str, str] = await self._guard(self.r.hgetall(_key(job_id)))
        if not h:
            raise UnknownJob(
                f"no job {job_id!r} (unknown, or its result expired after "
                f"{self.settings.job_ttl_s:g} s, GMEM_GENERATOR_JOB_TTL_S)"
            )
        return h

    async def read(self, job_id: str) -> JobInfo:
        h = await self._hash(job_id)
        position = None
        if h["status"] == "queued" and h.get("entry"):
            position = await self._guard(self._position(h["entry"]))

        def num(k: str) -> float | None:
            return float(h[k]) if h.get(k) else None

        return JobInfo(
            id=job_id,
            status=h["status"],
            step=int(h.get("step", 0)),
            steps=int(h["steps"]),
            position=position,
            created_at=float(h["created_at"]),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            result=json.loads(h["result"]) if h.get("result") else None,
            error=json.loads(h["error"]) if h.get("error") else None,
        )

    async def delete(self, job_id: str) -> tuple[str, str]:
        h = await self._hash(job_id)
        if h["status"] not in FINISHED:
            await self._guard(self.r.hset(_key(job_id), "cancel", 1))
            if job_id in self.local:
                self.svc.scheduler.cancel(self.local[job_id].work)
        return job_id, h["status"]

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        steps = int((await self._hash(job_id))["steps"])
        sent = 0
        while True:
            status, step, preview, preview_step = await self._guard(
                self.r.hmget(_key(job_id), "status", "step", "preview", "preview_step")
            )
            if status is None:
                return
            step_i = int(step or 0)
            if step_i > sent and status not in FINISHED:
                data: dict[str, Any] = {"step": step_i, "steps": steps}
                if preview and preview_step is not None and int(preview_step) == step_i:
                    data["preview"] = preview
                sent = step_i
                yield "progress", data
            if status in FINISHED:
                info = await self.read(job_id)
                if info.status == "succeeded" and sent < info.steps:
                    yield "progress", {"step": info.steps, "steps": info.steps}
                yield "done", info.model_dump()
                return
            await asyncio.sleep(_POLL_S)

    # ------------------------------------------------------------ this replica's share of the work

    def _room(self) -> bool:
        if not self.svc.gen.runtime.loaded:  # a replica still loading takes no work (it would fail it)
            return False
        sched = self.svc.scheduler
        images = sum(loc.work.n for loc in self.local.values())
        return sched.queued == 0 and images < self.settings.max_batch_size

    async def _pump(self) -> None:
        idle_ms = int(self.settings.job_claim_idle_s * 1000)
        while True:
            try:
                if not self._room():
                    await asyncio.sleep(_POLL_S)
                    continue
                # redis-py types the XREADGROUP reply as a union over both decode modes; with
                # decode_responses=True it is [[stream, [(entry, fields), ...]]] of str.
                claimed = await self.r.xautoclaim(STREAM, GROUP, self.consumer, idle_ms, "0-0", count=1)
                entries: list[tuple[str, dict[str, str] | None]] = claimed[1] if claimed else []
                if not entries:
                    got = cast(
                        "list[Any]",
                        await self.r.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=1, block=200),
                    )
                    entries = got[0][1] if got else []
                for entry, fields in entries:
                    if fields and "id" in fields:
                        await self._take(entry, fields["id"])
                    else:  # a deleted entry claimed again
                        await self.r.xack(STREAM, GROUP, entry)
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                log.warning("job queue consumer: %s; recreating the group", exc)
                with contextlib.suppress(RedisError):
                    await self._ensure_group()
                await asyncio.sleep(0.5)
            except Exception:  # Redis away: retry, never stop consuming
                log.exception("job queue consumer failed; retrying")
                await asyncio.sleep(1.0)

    async def _take(self, entry: str, job_id: str) -> None:
        key = _key(job_id)
        h = cast("dict[str, str]", await self.r.hgetall(key))  # decode_responses=True: str fields
        if not h or h.get("status") in FINISHED:
            await self._ack(entry)
            return
        if h.get("cancel"):
            await self._finish(job_id, entry, None, "cancelled", None)
            return
        if h.get("status") == "running":
            log.warning(
                "job %s: its replica %s went silent; running it again from the start", job_id, h.get("owner")
            )
        spec = load_spec(h["spec"])
        await self.r.hset(
            key, mapping={"status": "running", "step": 0, "owner": self.consumer, "started_at": time.time()}
        )
        loc: _Local

        def progress(step: int, steps: int, preview: bytes | None) -> None:
            loc.step = step
            if preview is not None:
                loc.preview, loc.preview_step = base64.b64encode(preview).decode("ascii"), step

        def done(result: dict[str, Any] | None, err: BaseException | None) -> None:
            status, error = outcome(result, err)
            task = asyncio.create_task(self._finish(job_id, entry, result, status, error))
            loc.tasks.add(task)

        work = self.svc.work(job_id, spec, lambda: None, progress, done)
        loc = _Local(entry, work)
        self.local[job_id] = loc
        self.svc.scheduler.submit(work)

    async def _ack(self, entry: str) -> None:
        await self.r.xack(STREAM, GROUP, entry)
        await self.r.xdel(STREAM, entry)

    async def _finish(
        self,
        job_id: str,
        entry: str,
        result: dict[str, Any] | None,
        status: str,
        error: dict[str, Any] | None,
    ) -> None:
        key = _key(job_id)
        fields: dict[EncodableT, EncodableT] = {"status": status, "finished_at": time.time()}
        if result is not None:
            fields["result"] = json.dumps(result)
            fields["step"] = result["steps"]
        if error is not None:
            fields["error"] = json.dumps(error)
        for attempt in range(20):  # the result must reach Redis; a brief outage is retried
            try:
                async with self.r.pipeline(transaction=True) as p:
                    # one command a statement: redis-py types a pipeline's commands as awaitables, not the
                    # pipeline
                    p.hset(key, mapping=fields)
                    p.expire(key, int(self.settings.job_ttl_s) or 1)
                    p.xack(STREAM, GROUP, entry)
                    p.xdel(STREAM, entry)
                    await p.execute()
                break
            except RedisError:
                log.warning("job %s: could not store its result (attempt %d)", job_id, attempt + 1)
                await asyncio.sleep(0.5)
        self.local.pop(job_id, None)

    async def _beat(self) -> None:
        last_claim = 0.0
        while True:
            await asyncio.sleep(_POLL_S)
            try:
                for job_id, loc in list(self.local.items()):
                    key = _key(job_id)
                    if loc.step != loc.written:
                        mapping: dict[EncodableT, EncodableT] = {"step": loc.step}
                        if loc.preview is not None:
                            mapping.update(preview=loc.preview, preview_step=loc.preview_step)
                        await self.r.hset(key, mapping=mapping)
                        loc.written = loc.step
                    if await self.r.hget(key, "cancel"):
                        self.svc.scheduler.cancel(loc.work)
                if self.local and time.monotonic() - last_claim > self.settings.job_claim_idle_s / 4:
                    entries: list[StreamIdT] = [loc.entry for loc in self.local.values()]
                    await self.r.xclaim(STREAM, GROUP, self.consumer, 0, entries, justid=True)
                    last_claim = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job heartbeat failed; retrying")
