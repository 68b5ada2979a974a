"""Request and response models of generation jobs (CONTRACT.md section 7)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.schemas.envelope import ErrorDetail
from shared.schemas.generator import GenerateRequest

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobRequest(GenerateRequest):
    """POST /jobs: the POST /generate body plus how often to send a preview."""

    preview_every: int | None = Field(
        None, ge=1, description="send a preview PNG with every k-th progress event"
    )


class JobCreated(BaseModel):
    id: str
    status: JobStatus = "queued"
    position: int | None = Field(None, description="jobs ahead in the queue (0 = next); null once running")


class JobInfo(BaseModel):
    """GET /jobs/{id}; also the data of the final ``done`` event."""

    id: str
    status: JobStatus
    step: int = 0
    steps: int
    position: int | None = None
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = Field(
        None, description="exactly the POST /generate response, once succeeded"
    )
    error: ErrorDetail | None = None


class JobCancelled(BaseModel):
    id: str
    status: JobStatus
