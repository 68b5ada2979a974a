"""Errors of the playground's JSON API and their one mapping to HTTP.

Class tree::

    PlaygroundError              .status, .code, .message
    ├── BadUpload                415 (not an image) / 413 (too large) / 422 (empty)
    ├── NoSuchRun                404: unknown or expired generation run
    └── NoProvenance             404: no source image behind this id (no dataset, or not a base row)

Errors of the bank and the generator arrive as ``shared.client`` exceptions and are passed on
with the upstream status where it is a client error (404, 409, 413, 422), 503 when a service is
unreachable (with a message naming which and where), 403 when the bank refuses the playground's
token (a setting of the playground, not of the page), and 502 when a service answers outside the
contract. Every error is rendered as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.client import ClientError, Forbidden, Unauthorized, Unavailable, UnexpectedResponse

log = logging.getLogger("gmem.playground")
RETRY_AFTER_S = "2"


class PlaygroundError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code


class BadUpload(PlaygroundError):
    status, code = 415, "not_an_image"


class NoSuchRun(PlaygroundError):
    status, code = 404, "unknown_run"


class NoProvenance(PlaygroundError):
    status, code = 404, "no_source_image"


class Upstream(Exception):
    """A ``ClientError`` from one named service (``bank`` or ``generator``)."""

    def __init__(self, service: str, url: str, err: ClientError) -> None:
        super().__init__(err.message)
        self.service, self.url, self.err = service, url, err


def envelope(status: int, code: str, message: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def upstream_error(service: str, url: str, err: ClientError) -> tuple[int, str, str]:
    """(status, code, message) the page gets for an error of the bank or the generator."""
    detail = err.detail
    if isinstance(err, Unavailable):
        if err.status is None:
            return (
                503,
                f"{service}_unavailable",
                (
                    f"the {service} service at {url} is unreachable or timed out; "
                    f"start it (or check the playground's --{service}-url)"
                ),
            )
        return 503, err.code or f"{service}_unavailable", f"the {service} service is unavailable: {detail}"
    if isinstance(err, Unauthorized | Forbidden):
        return (
            403,
            "bank_token",
            (
                f"the bank refused the playground's token ({detail}); start the playground "
                "with GMEM_BANK_TOKEN set to the bank's token"
            ),
        )
    if isinstance(err, UnexpectedResponse) or err.status is None or err.status >= 500:
        return 502, "bad_gateway", f"the {service} service answered outside its contract: {detail}"
    return err.status, err.code, f"{service}: {detail}"


def install_handlers(app: FastAPI) -> None:
    """Render every error of the playground as the JSON envelope."""

    @app.exception_handler(PlaygroundError)
    async def _own(request: Request, exc: PlaygroundError) -> JSONResponse:
        return envelope(exc.status, exc.code, exc.message)

    @app.exception_handler(Upstream)
    async def _upstream(request: Request, exc: Upstream) -> JSONResponse:
        return envelope(*upstream_error(exc.service, exc.url, exc.err))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = (
                ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")) or "body"
            )
            parts.append(f"{where}: {err.get('msg')}")
        return envelope(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return envelope(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(
            500, "internal", f"the playground failed on {request.url.path}: {type(exc).__name__}; see its log"
        )
