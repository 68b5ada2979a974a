"""The error envelope every GMem service answers with: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. dimension_mismatch")
    message: str = Field(description="what was wrong, what is allowed, what to do")


class ErrorEnvelope(BaseModel):
    """The body of every 4xx/5xx."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "unknown_snippet", "message": "snippet id 7 ..."}}]
        }
    )
    error: ErrorDetail
