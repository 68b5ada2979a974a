"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.bank.deps import Bank
from services.bank.errors import RETRY_AFTER_S, responses
from shared.schemas.bank import Health, Readiness

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=responses(503))
async def readyz(bank: Bank, response: Response) -> Readiness:
    store, publisher = bank.store, bank.publisher
    view = store.view()
    detail = {
        "factors": f"loaded ({store.factors.size} rows)",
        "index": store.index.state,
        "row_cache": f"{store.rows.used}/{store.rows.capacity} rows",
        "version": str(view.version),
        "redis": "disabled" if publisher is None else f"{publisher.state}, {publisher.pending} pending",
    }
    ready = not store.index.state.startswith("failed")
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = f"{RETRY_AFTER_S:g}"
    return Readiness(status="ready" if ready else "not_ready", detail=detail)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(bank: Bank) -> Response:
    return Response(generate_latest(bank.metrics.registry), media_type=CONTENT_TYPE_LATEST)
