"""HTTP routes of generation jobs (CONTRACT.md section 7): thin handlers over jobs/service.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette.sse import EventSourceResponse

from services.generator.errors import ERROR_RESPONSES
from services.generator.jobs.service import JobService
from shared.schemas.jobs import JobCancelled, JobCreated, JobInfo, JobRequest

router = APIRouter(tags=["jobs"])

_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ERROR_RESPONSES[404]["model"], "description": "unknown or expired job id"}
}


def _jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.generator.jobs
    return jobs


@router.post("/jobs", status_code=202, response_model=JobCreated, responses=ERROR_RESPONSES)
async def submit_job(body: JobRequest, request: Request, response: Response) -> JobCreated:
    job_id, position = await _jobs(request).create(body)
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobCreated(id=job_id, status="queued", position=position)


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=_404)
async def get_job(job_id: str, request: Request) -> JobInfo:
    return await _jobs(request).read(job_id)


@router.delete("/jobs/{job_id}", status_code=202, response_model=JobCancelled, responses=_404)
async def cancel_job(job_id: str, request: Request) -> JobCancelled:
    job_id, status = await _jobs(request).delete(job_id)
    return JobCancelled(id=job_id, status=status)


@router.get("/jobs/{job_id}/events", responses={**_404, 200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request) -> EventSourceResponse:
    stream = await _jobs(request).stream(job_id)  # 404 before the stream starts

    async def frames() -> AsyncIterator[dict[str, str]]:
        async for event, data in stream:
            yield {"event": event, "data": json.dumps(data, separators=(",", ":"))}

    return EventSourceResponse(frames(), ping=15)
