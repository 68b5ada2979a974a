"""Generations with progress: one run per click of Generate, its events streamed to the page.

A run is fed by one of two paths and looks the same to the page either way:

- the generator serves jobs (CONTRACT.md section 7): ``POST /jobs``, then its
  ``GET /jobs/{id}/events`` stream is relayed event by event (``progress`` with step, steps and
  an optional preview, then ``done``);
- it does not (yet): ``POST /generate``, with one ``progress`` event whose ``step`` is null, which
  the page shows as an indeterminate bar.

The run keeps its events, so a page that reconnects replays them from the start. Runs live in
memory, a bounded number at a time, and expire ``RUN_TTL_S`` after they finish.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.playground.errors import NoSuchRun, Upstream, upstream_error
from services.playground.upstream import Upstreams, shape_generation
from shared.client_types import parse_generation

RUN_TTL_S = 600.0
MAX_RUNS = 64
# A failed job carries only the error envelope's inner object; these codes get the status that
# POST /generate would have answered (CONTRACT.md section 6), any other the generic 422.
FAILED_JOB_STATUS = {"unknown_snippet": 404, "empty_pool": 409, "bank_unavailable": 503, "not_ready": 503}


@dataclass
class Run:
    id: str
    mode: str  # "jobs" or "direct"
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finished_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))
        if event == "done":
            self.finished_at = time.monotonic()
        # Wake every waiting stream, then re-arm for the next event.
        self.changed.set()
        self.changed = asyncio.Event()

    def fail(self, status: int, code: str, message: str) -> None:
        self.emit(
            "done", {"status": "failed", "http_status": status, "error": {"code": code, "message": message}}
        )


async def sse_messages(resp: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body (the WHATWG format: blank line ends a message)."""
    event, data = "message", list[str]()
    async for line in resp.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


class Runs:
    """The playground's generation runs."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.up = upstreams
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def _prune(self) -> None:
        now = time.monotonic()
        for rid in [r.id for r in self._runs.values() if r.finished_at and now - r.finished_at > RUN_TTL_S]:
            del self._runs[rid]
        while len(self._runs) >= MAX_RUNS:
            _, old = self._runs.popitem(last=False)
            if old.task is not None:
                old.task.cancel()

    async def start(self, body: dict[str, Any]) -> Run:
        self._prune()
        mode = "jobs" if await self.up.has_jobs() else "direct"
        run = Run(id=secrets.token_hex(8), mode=mode)
        self._runs[run.id] = run
        work = self._via_jobs(run, body) if mode == "jobs" else self._direct(run, body)
        run.task = asyncio.create_task(self._guarded(run, work))
        return run

    def get(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            raise NoSuchRun(
                f"no generation run {run_id!r}: it finished more than {RUN_TTL_S:.0f}s ago or never "
                "existed; press Generate again"
            )
        return run

    async def stream(self, run_id: str) -> AsyncIterator[dict[str, str]]:
        """Every event of the run so far, then each new one until ``done`` (SSE dicts)."""
        run, sent = self.get(run_id), 0
        while True:
            waiter = run.changed
            while sent < len(run.events):
                event, data = run.events[sent]
                sent += 1
                yield {"event": event, "data": json.dumps(data)}
                if event == "done":
                    return
            await waiter.wait()

    async def _guarded(self, run: Run, work: Any) -> None:
        try:
            await work
        except Upstream as exc:
            run.fail(*upstream_error(exc.service, exc.url, exc.err))
        except Exception as exc:  # noqa: BLE001 - the page must hear about any failure, never hang
            run.fail(502, "run_failed", f"the generation failed: {type(exc).__name__}: {exc}")

    async def _direct(self, run: Run, body: dict[str, Any]) -> None:
        run.emit("progress", {"step": None, "steps": body.get("steps"), "mode": "direct"})
        with self.up.generator_call():
            gen = await self.up.generator.generate(**body)
        run.emit("done", {"status": "succeeded", "result": shape_generation(gen)})

    async def _via_jobs(self, run: Run, body: dict[str, Any]) -> None:
        # About 20 previews per run, whatever the step count (40: the embedded model's default).
        every = max(1, (body.get("steps") or 40) // 20)
        job_id = await self.up.start_job({**body, "preview_every": every})
        run.emit("progress", {"step": 0, "steps": body.get("steps"), "mode": "jobs", "job": job_id})
        final: dict[str, Any] | None = None
        async with self.up.job_events(job_id) as resp:
            async for event, data in sse_messages(resp):
                payload = json.loads(data)
                if event == "progress":
                    run.emit(
                        "progress",
                        {
                            "step": payload.get("step"),
                            "steps": payload.get("steps"),
                            "preview": payload.get("preview"),
                            "mode": "jobs",
                            "job": job_id,
                        },
                    )
                elif event == "done":
                    final = payload
                    break
        if final is None:  # the stream ended early: ask once for the job's state
            final = await self.up.get_job(job_id)
        self._finish_job(run, job_id, final)

    def _finish_job(self, run: Run, job_id: str, job: dict[str, Any]) -> None:
        status = job.get("status")
        if status == "succeeded" and job.get("result"):
            run.emit(
                "done", {"status": "succeeded", "result": shape_generation(parse_generation(job["result"]))}
            )
        elif status == "failed":
            err = job.get("error") or {}
            code = str(err.get("code", "job_failed"))
            run.fail(FAILED_JOB_STATUS.get(code, 422), code, f"generator: {err.get('message', 'job failed')}")
        else:
            run.fail(502, "job_unfinished", f"generator job {job_id} ended with status {status!r}")
