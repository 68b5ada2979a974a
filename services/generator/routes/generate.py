"""POST /generate (CONTRACT.md section 6): a thin handler over ``Generator.generate``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.generator.deps import Gen
from services.generator.errors import ERROR_RESPONSES
from shared.schemas.generator import GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES)
async def generate(body: GenerateRequest, request: Request, gen: Gen) -> GenerateResponse:
    return await gen.generate(body, gone=request.is_disconnected)
