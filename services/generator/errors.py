"""Errors of the generator service and their one mapping to HTTP.

Class tree (beside shared.errors, which domain code also raises)::

    GMemError (shared.errors)
    ├── InvalidInput                 422 (bad snippet: dimension, NaN, zero)
    │   └── LimitExceeded            422 n or steps above the configured maxima
    ├── UnknownSnippet               404 (the bank's 404 for a pinned id)
    ├── EmptyPool                    409 (the chosen pool holds no snippets)
    └── GeneratorError
        ├── BankUnavailable          503 + Retry-After: the bank cannot be reached or timed out
        ├── BankRejected             502: the bank refused a request the generator built (a bug)
        ├── NotReady                 503 + Retry-After: model still loading, or bank incompatible
        ├── Overloaded               429 + Retry-After: too many images queued
        └── RequestTimeout           503 + Retry-After: not answered within GMEM_GENERATOR_REQUEST_TIMEOUT_S

Every error is rendered as ``{"error": {"code", "message"}}`` by ``install_handlers``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    BaseSnippetImmutable,
    EmptyPool,
    EncoderUnavailable,
    GMemError,
    IncompatibleArtifacts,
    InvalidInput,
    UnknownSnippet,
)
from shared.schemas.generator import ErrorEnvelope


class LimitExceeded(InvalidInput):
    code = "limit_exceeded"


class GeneratorError(GMemError):
    code = "generator_error"


class BankUnavailable(GeneratorError):
    code = "bank_unavailable"


class BankRejected(GeneratorError):
    code = "bank_rejected"


class NotReady(GeneratorError):
    code = "not_ready"


class Overloaded(GeneratorError):
    code = "overloaded"


class RequestTimeout(GeneratorError):
    code = "timeout"


# Most specific first: the first isinstance match wins.
STATUS: list[tuple[type[GMemError], int]] = [
    (LimitExceeded, 422),
    (InvalidInput, 422),
    (UnknownSnippet, 404),
    (EmptyPool, 409),
    (BaseSnippetImmutable, 409),
    (EncoderUnavailable, 422),
    (BankUnavailable, 503),
    (BankRejected, 502),
    (NotReady, 503),
    (IncompatibleArtifacts, 503),
    (Overloaded, 429),
    (RequestTimeout, 503),
]

# Declared on routes so the OpenAPI schema lists every error a client can get.
ERROR_RESPONSES: dict[int | str, dict] = {
    s: {"model": ErrorEnvelope, "description": d}
    for s, d in [(404, "unknown snippet id"), (409, "empty pool"), (413, "body too large"),
                 (422, "invalid request or over a limit"), (429, "overloaded; see Retry-After"),
                 (503, "bank unavailable, not ready or timed out; see Retry-After")]
}


ROUTES_SERVED = ("GET /healthz, GET /readyz, GET /metrics, GET /model, POST /generate, POST /jobs, GET /jobs/{id}, "
                 "GET /jobs/{id}/events, DELETE /jobs/{id}, GET /openapi.json")


def status_of(exc: GMemError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def envelope(status: int, code: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after and status in (429, 503) else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Render every error of this service as the JSON envelope (Retry-After on 429/503)."""

    @app.exception_handler(GMemError)
    async def _domain(request: Request, exc: GMemError) -> JSONResponse:
        return envelope(status_of(exc), exc.code, exc.message, retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            # FastAPI's loc here is (body, character offset), which reads as a field name; say it plainly.
            at = bad_json.get("loc", ("body", "?"))[-1]
            why = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
            return envelope(422, "invalid_request", f"request body is not valid JSON ({why} at character {at}); "
                            'send a JSON object such as {"n": 1, "seed": 0}')
        parts = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return envelope(422, "invalid_request", "; ".join(parts) + "; see GET /openapi.json for the schema")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            # Starlette's bare "Not Found" does not say what exists.
            what = "no such path" if exc.status_code == 404 else f"method {request.method} is not allowed on"
            message = f"{what} {request.url.path}; this service answers {ROUTES_SERVED}"
        return envelope(exc.status_code, code, message, retry_after_s)
