"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.generator.deps import Gen

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "model loading or bank unreachable"}})
async def readyz(gen: Gen) -> JSONResponse:
    model_ok, model_detail = gen.model_status()
    bank_ok, bank_detail = await gen.bank_status()
    cache = "off" if gen.cache is None else ("coherent" if gen.cache.enabled else "disabled (redis down)")
    ok = model_ok and bank_ok
    body = {
        "status": "ready" if ok else "not_ready",
        "detail": {
            "model": model_detail,
            "bank": bank_detail,
            "cache": cache,
            "batching": gen.runtime.invariance,
        },
    }
    headers = None if ok else {"Retry-After": str(gen.settings.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/metrics")
async def metrics(gen: Gen) -> Response:
    return Response(generate_latest(gen.metrics.registry), media_type=CONTENT_TYPE_LATEST)
