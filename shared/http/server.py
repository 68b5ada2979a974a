"""Run a service's app under uvicorn with limits against slow and greedy clients.

- ``header_timeout_s``: a connection must deliver a request's complete headers within this many
  seconds of connecting, or of the previous response (slowloris): it is closed otherwise. uvicorn has
  no such timeout, so ``GuardedH11Protocol`` adds it.
- ``body_timeout_s``: enforced by ``shared.http.middleware.RequestContext`` (408).
- ``keep_alive_s``: uvicorn's ``timeout_keep_alive``, idle time between requests.
- ``max_connections``: connections above it are answered 503 with the JSON envelope and
  ``Retry-After``, then closed (uvicorn's own ``limit_concurrency`` answers plain text).
- ``max_header_bytes``: h11's ``max_incomplete_event_size``; larger request heads are refused.

The server runs the h11 protocol: httptools (llhttp) refuses methods it does not know before the app
sees them, with a plain-text 400. Under h11 an unknown method reaches the app and gets the 405 envelope
with ``Allow``; what h11 itself cannot parse is answered with a JSON 400 envelope (``send_400_response``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from shared.http.middleware import REQUEST_ID


@dataclass(frozen=True)
class ServerLimits:
    """What ``serve`` passes to uvicorn; each service exposes these as its own settings."""

    host: str
    port: int
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024
    retry_after_s: float = 1.0
    graceful_shutdown_s: int = 5


def _envelope_bytes(
    status: int, reason: bytes, code: str, message: str, extra: list[tuple[bytes, bytes]]
) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    lines = [b"HTTP/1.1 %d %s" % (status, reason)] + [k + b": " + v for k, v in head]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout, a JSON connection limit and a JSON 400."""

    limits: ServerLimits  # set by ``protocol_for``

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_after: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            retry = f"{self.limits.retry_after_s:g}".encode()
            transport.write(
                _envelope_bytes(
                    503,
                    b"Service Unavailable",
                    "too_many_connections",
                    f"the server holds its maximum of {self.limits.max_connections} connections; retry "
                    "shortly",
                    [(b"retry-after", retry)],
                )
            )
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        # The timer fires unless a new request (a new cycle) arrived since it was armed.
        self._waiting_after = self.cycle
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        rid = REQUEST_ID.get()
        extra = [(b"x-request-id", rid.encode())] if rid != "-" else []
        try:
            self.transport.write(
                _envelope_bytes(
                    400,
                    b"Bad Request",
                    "bad_request",
                    f"{msg} (the request line or headers could not be parsed as HTTP/1.1)",
                    extra,
                )
            )
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def protocol_for(limits: ServerLimits) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class per connection)."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_config(app: ASGIApp, limits: ServerLimits) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=limits.host,
        port=limits.port,
        http=protocol_for(limits),
        access_log=False,
        log_config=None,
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=limits.graceful_shutdown_s,
        server_header=False,
    )


def serve(app: ASGIApp, limits: ServerLimits) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (the caller closes the app's resources afterwards)."""
    uvicorn.Server(uvicorn_config(app, limits)).run()
