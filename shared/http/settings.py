"""Server limits every service exposes as settings (``GMEM_BANK_HEADER_TIMEOUT_S``, ``GMEM_GENERATOR_...``).

A service's settings class inherits ``HttpSettings`` and sets its own ``env_prefix``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from shared.http.server import ServerLimits


class HttpSettings(BaseSettings):
    """Bind address, port and the limits against slow or greedy clients (shared.http.server)."""

    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection's request headers must arrive "
        "within this many seconds (slow clients are disconnected)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request body must arrive within this many seconds of its headers (408 otherwise)",
    )
    keep_alive_s: int = Field(
        5, ge=1, description="idle keep-alive connections close after this many seconds"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections above this are answered 503 and closed"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="largest request line plus headers")

    def server_limits(self, retry_after_s: float) -> ServerLimits:
        return ServerLimits(
            host=self.host,
            port=self.port,
            header_timeout_s=self.header_timeout_s,
            keep_alive_s=self.keep_alive_s,
            max_connections=self.max_connections,
            max_header_bytes=self.max_header_bytes,
            retry_after_s=retry_after_s,
        )
