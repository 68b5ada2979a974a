"""Per-request plumbing: request ids, body-size limit, metrics and structured access logs.

One pure ASGI middleware so the body limit also holds for chunked uploads with
no Content-Length: the body is read (up to the limit) before any route runs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.bank.errors import error_response
from services.bank.metrics import BankMetrics

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

access_log = logging.getLogger("gmem.bank.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

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
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestContext:
    """Request id (X-Request-ID in and out), body limit (413), request metrics, access log."""

    def __init__(self, app: ASGIApp, metrics: BankMetrics, max_body_bytes: int,
                 route_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.route_limits = route_limits or {}  # path -> the most that route can need (services/bank/reads.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _VALID_RID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        state = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            limit = self.route_limits.get(scope["path"].rstrip("/"), self.max_body)
            replay = await self._read_body(scope, receive, headers, limit)
            if isinstance(replay, int):
                await self._reject(scope, receive, send_with_id, replay, limit)
            else:
                await self.app(scope, replay, send_with_id)
        finally:
            self._record(scope, state["status"], time.perf_counter() - start)
            REQUEST_ID.reset(token)

    async def _read_body(self, scope: Scope, receive: Receive, headers: dict[str, str],
                         limit: int) -> Receive | int:
        """A receive that replays the buffered body, or the size that broke the limit."""
        if scope["method"] not in _BODY_METHODS:
            return receive
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return int(declared)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return total
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

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int, limit: int) -> None:
        what = ("GMEM_BANK_MAX_BODY_BYTES" if limit == self.max_body else
                f"{scope['path']} needs no more; see GMEM_BANK_RETRIEVE_MAX_ROWS, GMEM_BANK_RETRIEVE_MAX_NOISE_NUMEL "
                "and GMEM_BANK_MAX_IMAGE_BYTES")
        response = error_response(
            413, "payload_too_large",
            f"request body of {size}+ bytes exceeds the limit of {limit} bytes ({what}); "
            "send fewer or smaller vectors per request",
        )
        await response(scope, receive, send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        access_log.info("%s %s %d", method, scope["path"], status,
                        extra={"method": method, "path": scope["path"], "route": route, "status": status,
                               "ms": round(seconds * 1000, 3)})
