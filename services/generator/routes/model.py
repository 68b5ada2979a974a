"""GET /model (CONTRACT.md section 6)."""

from __future__ import annotations

from fastapi import APIRouter

from services.generator.deps import Gen
from services.generator.errors import ModelNotReady, responses
from shared.schemas.generator import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses=responses(503))
async def model_info(gen: Gen) -> ModelInfo:
    # Before the weights are in, "parameters" is unknown: say not ready rather than report 0.
    ok, detail = gen.model_status()
    if not ok:
        raise ModelNotReady(f"{detail}; GET /model answers once the model is loaded, retry shortly")
    return gen.runtime.info()
