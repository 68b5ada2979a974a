"""One error envelope and one exception -> status table for every GMem service.

A service builds its table as ``ErrorTable(SHARED_ROWS + its rows)`` and calls
``install_error_handlers``. Every error then answers ``{"error": {"code", "message"}}``:

- a ``GMemError``: the status of the nearest class of its MRO in the table (500 if none), its ``code``;
- request validation: 422 ``invalid_request`` (a body sent under a non-JSON content type: 415
  ``unsupported_media_type``; malformed, non-UTF-8 or too deeply nested JSON: 422 saying so);
- routing: 404 ``not_found`` naming the routes that exist, 405 ``method_not_allowed`` with an ``Allow``
  header listing every method of the path (Starlette's lists only those of the first route it matched).

Unexpected exceptions are not handled here: ``shared.http.middleware.RequestContext`` renders them as a
500 envelope inside the request-id scope, so the 500 carries ``X-Request-ID`` too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from shared.errors import (
    BaseSnippetImmutable,
    EmptyPool,
    EncoderUnavailable,
    GMemError,
    InvalidInput,
    UnknownSnippet,
)
from shared.schemas.envelope import ErrorEnvelope

log = logging.getLogger("gmem.http")

Row = tuple[type[BaseException], int]

# Shared domain errors mean the same to every service.
SHARED_ROWS: list[Row] = [
    (InvalidInput, 422),
    (EncoderUnavailable, 422),
    (UnknownSnippet, 404),
    (BaseSnippetImmutable, 409),
    (EmptyPool, 409),
]

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}
_RETRY_STATUSES = (429, 503)


class ErrorTable:
    """Exception class -> HTTP status, looked up along the exception's MRO (nearest class wins)."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.rows: dict[type[BaseException], int] = dict(rows)

    def status_of(self, exc: BaseException) -> int:
        for cls in type(exc).__mro__:
            if cls in self.rows:
                return self.rows[cls]
        return 500

    def response(self, exc: BaseException, retry_after_s: float | None = None) -> JSONResponse:
        """The envelope for ``exc``: its status, its ``code``, its ``headers`` (e.g. WWW-Authenticate)."""
        return error_response(
            self.status_of(exc),
            getattr(exc, "code", "gmem_error"),
            str(exc),
            getattr(exc, "headers", None),
            retry_after_s=retry_after_s,
        )


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    """The envelope; ``Retry-After`` on 429/503 when ``retry_after_s`` is given."""
    out = dict(headers or {})
    if retry_after_s is not None and status in _RETRY_STATUSES:
        out.setdefault("Retry-After", f"{retry_after_s:g}")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=out)


def error_responses(descriptions: Mapping[int, str], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    return {s: {"model": ErrorEnvelope, "description": descriptions.get(s, "error")} for s in statuses}


def _paths(app: FastAPI) -> dict[str, list[str]]:
    """Path template -> its methods, from the app's OpenAPI document (cached by FastAPI)."""
    return {path: sorted(m.upper() for m in ops) for path, ops in app.openapi().get("paths", {}).items()}


def routes_served(app: FastAPI) -> str:
    """``GET /healthz, POST /generate, ...`` from the app's own routes, for 404/405 messages."""
    out = [f"{m} {path}" for path, methods in _paths(app).items() for m in methods]
    return ", ".join(out + ["GET /openapi.json"])


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``path`` accepts (FastAPI routes do not answer HEAD unless declared)."""
    methods: set[str] = set()
    for template, ops in _paths(app).items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            methods |= set(ops)
    return sorted(methods)


def validation_message(exc: RequestValidationError, schema_hint: str) -> str:
    errs = list(exc.errors())
    parts = []
    for err in errs[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more + f"; see {schema_hint} for the request schema"


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def install_error_handlers(
    app: FastAPI, table: ErrorTable, *, retry_after_s: float, json_example: str = '{"...": ...}'
) -> None:
    """Register the handlers above on ``app``; ``json_example`` is shown when a body is not JSON."""
    schema_hint = "GET /openapi.json (or /docs)"

    async def on_gmem(request: Request, exc: Exception) -> JSONResponse:
        if table.status_of(exc) == 500:
            log.error("domain error without a status (a bug)", exc_info=exc)
        return table.response(exc, retry_after_s)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errs = list(exc.errors())
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not _is_json(ctype) and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errs):
            # FastAPI does not parse a JSON body sent under another type (curl -d sends form-urlencoded),
            # which otherwise surfaces as a puzzling "Input should be a valid dictionary".
            return error_response(
                415,
                "unsupported_media_type",
                f"content type {ctype!r} is not accepted; send "
                "the JSON body with 'Content-Type: application/json'",
            )
        bad_json = next((e for e in errs if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            # FastAPI's loc here is (body, character offset), which reads as a field name; say it plainly.
            loc = tuple(bad_json.get("loc", ()))
            at = loc[-1] if len(loc) > 1 else "?"
            why = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
            return error_response(
                422,
                "invalid_request",
                f"request body is not valid JSON ({why} at character "
                f"{at}); send a UTF-8 JSON object such as {json_example}",
            )
        return error_response(422, "invalid_request", validation_message(exc, schema_hint))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        if status == 400:
            # FastAPI's "error parsing the body": bytes that are not UTF-8, JSON nested past the parser's
            # recursion limit. Bad input like any other, so the same 422 on every service.
            return error_response(
                422,
                "invalid_request",
                f"unreadable request body ({exc.detail}); send UTF-8 "
                f"JSON (nested at most a few levels) matching the schema in {schema_hint}",
            )
        headers = dict(exc.headers or {})
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 404:
            message = (
                f"no route {request.method} {request.url.path}; this service answers {routes_served(app)}"
            )
        elif status == 405:
            allow = allowed_methods(app, request.url.path)
            headers["Allow"] = ", ".join(allow)
            message = (
                f"method {request.method} is not allowed on {request.url.path} (allowed: "
                f"{', '.join(allow)}); this service answers {routes_served(app)}"
            )
        return error_response(
            status, _HTTP_CODES.get(status, "http_error"), message, headers, retry_after_s=retry_after_s
        )

    app.add_exception_handler(GMemError, on_gmem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
