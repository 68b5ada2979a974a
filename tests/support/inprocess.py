"""An app served by the real server (shared.http.server: uvicorn, h11, our limits) in a thread.

For faults that cannot be produced through a service's public surface (a route that raises an
unexpected exception): the test patches one dependency of the app, and everything else (the socket,
HTTP parsing, middleware, keep-alive) is the production path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gmem.launch import free_port
from shared.http.server import ServerLimits, uvicorn_config


@contextmanager
def serve_in_thread(app: Any, lifespan: str = "off", **limits: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL and stops the server afterwards."""
    port = free_port()
    config = uvicorn_config(app, ServerLimits(host="127.0.0.1", port=port, **limits))
    config.lifespan = lifespan
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-thread server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
