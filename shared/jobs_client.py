"""Job calls of the generator clients (CONTRACT.md section 7): submit, job, cancel, events, wait.

Mixed into ``shared.client.GeneratorClient`` / ``AsyncGeneratorClient``; they use the
client's httpx session and its error mapping (one exception per failure kind).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from shared.client_types import BadRequest, Unavailable, UnexpectedResponse, error_from_response
from shared.schemas.jobs import JobCancelled, JobCreated, JobInfo, JobRequest


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event: ``progress`` ({step, steps, preview?}) or ``done`` (the job's body)."""

    event: str
    data: dict[str, Any]


def _body(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        req = JobRequest(**{k: v for k, v in kwargs.items() if v is not None})
    except ValueError as exc:
        raise BadRequest(f"invalid job request: {exc}", code="invalid_input") from exc
    return req.model_dump(exclude_none=True)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise error_from_response(resp)
    return resp


class _Sse:
    """Incremental text/event-stream parser: ``feed`` one line, get an event at each blank line."""

    def __init__(self) -> None:
        self.event, self.data = "message", []  # type: ignore[var-annotated]

    def feed(self, line: str) -> JobEvent | None:
        if not line:
            ev = JobEvent(self.event, json.loads("\n".join(self.data))) if self.data else None
            self.event, self.data = "message", []
            return ev
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip())
        return None


class SyncJobCalls:
    """Job calls over a blocking httpx client (``self._http``)."""

    _http: httpx.Client

    def submit(self, **request: Any) -> JobCreated:
        """POST /jobs with the POST /generate fields (plus ``preview_every``); the job is queued."""
        return JobCreated(**_check(self._http.post("/jobs", json=_body(request))).json())

    def job(self, job_id: str) -> JobInfo:
        return JobInfo(**_check(self._http.get(f"/jobs/{job_id}")).json())

    def cancel(self, job_id: str) -> JobCancelled:
        return JobCancelled(**_check(self._http.delete(f"/jobs/{job_id}")).json())

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events until (and including) ``done``."""
        try:
            with self._http.stream(
                "GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(timeout, connect=5.0)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_from_response(resp)
                parser = _Sse()
                for line in resp.iter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield ev
                        if ev.event == "done":
                            return
        except httpx.TransportError as exc:
            raise Unavailable(f"event stream of job {job_id} broke: {exc}", code="unavailable") from exc
        raise UnexpectedResponse(f"event stream of job {job_id} ended without done", code="bad_response")

    def wait(
        self, job_id: str, on_progress: Callable[[JobEvent], None] | None = None, timeout: float | None = None
    ) -> JobInfo:
        """Follow the events until the job ends; returns its final body (status may be failed/cancelled)."""
        for ev in self.events(job_id, timeout):
            if ev.event == "done":
                return JobInfo(**ev.data)
            if on_progress is not None:
                on_progress(ev)
        raise AssertionError("unreachable")  # events() ends with done or raises


class AsyncJobCalls:
    """Job calls over an asyncio httpx client (``self._http``)."""

    _http: httpx.AsyncClient

    async def submit(self, **request: Any) -> JobCreated:
        return JobCreated(**_check(await self._http.post("/jobs", json=_body(request))).json())

    async def job(self, job_id: str) -> JobInfo:
        return JobInfo(**_check(await self._http.get(f"/jobs/{job_id}")).json())

    async def cancel(self, job_id: str) -> JobCancelled:
        return JobCancelled(**_check(await self._http.delete(f"/jobs/{job_id}")).json())

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        try:
            async with self._http.stream(
                "GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(timeout, connect=5.0)
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_from_response(resp)
                parser = _Sse()
                async for line in resp.aiter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield ev
                        if ev.event == "done":
                            return
        except httpx.TransportError as exc:
            raise Unavailable(f"event stream of job {job_id} broke: {exc}", code="unavailable") from exc
        raise UnexpectedResponse(f"event stream of job {job_id} ended without done", code="bad_response")

    async def wait(
        self, job_id: str, on_progress: Callable[[JobEvent], None] | None = None, timeout: float | None = None
    ) -> JobInfo:
        async for ev in self.events(job_id, timeout):
            if ev.event == "done":
                return JobInfo(**ev.data)
            if on_progress is not None:
                on_progress(ev)
        raise AssertionError("unreachable")
