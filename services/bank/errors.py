"""Errors of the bank service and their one mapping to HTTP.

Class tree (service-local, beside ``shared.errors``)::

    GMemError
    ├── Unauthorized          wrong or missing bearer token (401)
    ├── MutationsDisabled     no GMEM_BANK_TOKEN configured (403)
    ├── PayloadTooLarge       body or image over its limit (413)
    ├── UnsupportedMediaType  a body that is neither JSON nor multipart (415)
    ├── NotReady              base index still building (503, Retry-After)
    └── StorageUnavailable    edit log not writable (503, Retry-After; in store.py)

``STATUS`` maps every error type (looked up along its MRO) to a status code;
``install`` registers one handler rendering ``{"error": {"code", "message"}}``
for those, for request validation (422) and routing errors (404/405), and for
anything unexpected (500, which is a bug).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.bank.index import IndexNotReady
from services.bank.store import StorageUnavailable
from shared import errors as E
from shared.schemas.bank import ErrorResponse

log = logging.getLogger("gmem.bank")

RETRY_AFTER_S = "1"


class Unauthorized(E.GMemError):
    code = "unauthorized"


class MutationsDisabled(E.GMemError):
    code = "mutations_disabled"


class PayloadTooLarge(E.GMemError):
    code = "payload_too_large"


class UnsupportedMediaType(E.GMemError):
    code = "unsupported_media_type"


class NotReady(E.GMemError):
    code = "not_ready"


STATUS: dict[type[BaseException], int] = {
    E.InvalidInput: 422,
    E.EncoderUnavailable: 422,
    E.UnknownSnippet: 404,
    E.BaseSnippetImmutable: 409,
    E.EmptyPool: 409,
    E.IncompatibleArtifacts: 409,
    Unauthorized: 401,
    MutationsDisabled: 403,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    NotReady: 503,
    StorageUnavailable: 503,
    E.GMemError: 500,
}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}


def status_of(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="gmem-bank"')
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    tail = f" (and {more} more)" if more > 0 else ""
    return "invalid request: " + "; ".join(parts) + tail + ". See /docs for the request schema."


def install(app: FastAPI) -> None:
    """Register the one error handler (per exception family) on ``app``."""

    async def on_gmem(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500 and not isinstance(exc, NotReady | StorageUnavailable):
            log.error("unexpected domain error", exc_info=exc)
        return error_response(status, getattr(exc, "code", "gmem_error"), str(exc))

    async def on_not_ready(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "index_building", f"the search index is not ready ({exc}); retry shortly")

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json") and any(
            tuple(err.get("loc", ()))[:1] == ("body",) for err in exc.errors()
        ):
            # FastAPI does not parse a JSON body sent under another type (curl -d sends form-urlencoded),
            # which otherwise surfaces as a puzzling "Input should be a valid dictionary".
            return error_response(415, "unsupported_media_type", f"content type {ctype!r} is not accepted; send "
                                  "the JSON body with 'Content-Type: application/json'")
        return error_response(422, "invalid_request", _validation_message(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): bad input like any other.
            return error_response(422, "invalid_request", f"unreadable request body ({exc.detail}); send UTF-8 "
                                  "JSON matching the schema in /docs")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the endpoints"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error (a bug); the request id is in X-Request-ID")

    app.add_exception_handler(E.GMemError, on_gmem)
    app.add_exception_handler(IndexNotReady, on_not_ready)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    text = {401: "wrong or missing bearer token", 403: "mutations disabled (no GMEM_BANK_TOKEN)",
            404: "unknown snippet id", 409: "conflict (base row, empty pool)", 413: "body too large", 415: "unsupported content type",
            422: "invalid input", 503: "not ready / storage unavailable (Retry-After)"}
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}
