"""Per-request plumbing of every GMem service: request id, body limit, guard, catch-all 500, access log.

``RequestContext`` is one pure ASGI middleware (not ``BaseHTTPMiddleware``, so a route's
``request.is_disconnected()`` still sees the client leave). For each HTTP request it

1. takes ``X-Request-ID`` from the request (when well-formed) or draws one, and adds it to the
   response, whatever the status;
2. runs the service's ``guard`` (e.g. the bank's token check) before any byte of the body is read,
   so an unauthenticated 60 MiB upload is refused without being read;
3. buffers the body up to ``max_body_bytes`` (413 ``payload_too_large`` beyond, also for chunked bodies
   without Content-Length) within ``body_timeout_s`` (408 ``request_timeout`` for a client that
   trickles its body), before any route runs;
4. renders an exception that escapes the app as a 500 envelope inside the request-id scope: the
   traceback is logged with the request id, the response carries ``X-Request-ID``, and the
   connection stays usable (Starlette's ServerErrorMiddleware re-raises, so uvicorn would close it);
5. logs one JSON access line and reports (method, route, status, seconds) to ``on_request``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.http.errors import error_response

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Guard = Callable[[Scope], Awaitable[Response | None]]
OnRequest = Callable[[str, str | None, int, float], None]

log = logging.getLogger("gmem.http")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for key in ("method", "path", "status", "ms", "route"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for every logger (the services' own, uvicorn's, httpx's)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RequestContext:
    """See the module docstring. ``body_limit_name`` is the setting to name in the 413 message;
    ``access_logger`` the logger of the access lines (``gmem.bank.access``, ``gmem.generator.access``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_limit_name: str,
        body_timeout_s: float,
        on_request: OnRequest | None = None,
        guard: Guard | None = None,
        access_logger: str = "gmem.access",
        route_limits: Mapping[str, int] | None = None,
        route_limit_hint: str = "",
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        # path -> the most that route can ever need (tighter than max_body_bytes), and what to name in its 413
        self.route_limits = dict(route_limits or {})
        self.route_limit_hint = route_limit_hint
        self.limit_name = body_limit_name
        self.body_timeout_s = body_timeout_s
        self.on_request = on_request
        self.guard = guard
        self.access_log = logging.getLogger(access_logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        rid = given if _VALID_RID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refusal = await self.guard(scope) if self.guard is not None else None
            if refusal is not None:
                refusal.headers["Connection"] = "close"  # the unread body must not be taken for a request
                await refusal(scope, receive, send_with_id)
                return
            try:
                replay = await self._read_body(scope, receive)
            except _Refused as exc:
                resp = error_response(exc.status, exc.code, exc.message, {"Connection": "close"})
                await resp(scope, receive, send_with_id)
                return
            await self.app(scope, replay, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if state["started"]:
                raise  # half a response is out: only closing the connection can tell the client
            resp = error_response(
                500,
                "internal_error",
                f"internal error (a bug); quote request id {rid} "
                "(also in the X-Request-ID header) when reporting it",
            )
            await resp(scope, receive, send_with_id)
        finally:
            self._record(scope, int(state["status"]), time.perf_counter() - start)
            REQUEST_ID.reset(token)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive:
        """A receive that replays the buffered body; _Refused when it is too large or too slow."""
        if scope["method"] not in _BODY_METHODS:
            return receive
        limit = self.route_limits.get(scope["path"].rstrip("/"), self.max_body)
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(int(declared), limit)
        chunks: list[bytes] = []
        total, more = 0, True
        deadline = time.monotonic() + self.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _Refused(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self.body_timeout_s:g} s; send it at once",
                ) from None
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise self._too_large(total, limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _too_large(self, size: int, limit: int) -> _Refused:
        what = self.limit_name if limit == self.max_body else self.route_limit_hint or self.limit_name
        return _Refused(
            413,
            "payload_too_large",
            f"request body of {size}+ bytes exceeds the limit of "
            f"{limit} bytes ({what}); send a smaller request",
        )

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None)
        method = scope["method"]
        if self.on_request is not None:
            self.on_request(method, route, status, seconds)
        self.access_log.info(
            "%s %s %d",
            method,
            scope["path"],
            status,
            extra={
                "method": method,
                "path": scope["path"],
                "route": route or "unmatched",
                "status": status,
                "ms": round(seconds * 1000, 3),
            },
        )
