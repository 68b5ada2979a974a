"""`python -m services.playground --bank-url URL --generator-url URL [--host H] [--port P]`
(CONTRACT.md section 8).
"""

from __future__ import annotations

import logging
from typing import Any

import typer
import uvicorn
from pydantic import ValidationError

from services.playground.app import create_app
from services.playground.settings import PlaygroundSettings


def serve(
    bank_url: str | None = typer.Option(
        None, "--bank-url", help="bank service URL (env GMEM_PLAYGROUND_BANK_URL or GMEM_BANK_URL)"
    ),
    generator_url: str | None = typer.Option(
        None,
        "--generator-url",
        help="generator URL (env GMEM_PLAYGROUND_GENERATOR_URL or GMEM_GENERATOR_URL)",
    ),
    host: str | None = typer.Option(
        None, "--host", help="bind address (env GMEM_PLAYGROUND_HOST; default 127.0.0.1)"
    ),
    port: int | None = typer.Option(None, "--port", help="port (env GMEM_PLAYGROUND_PORT; default 8003)"),
    source: str | None = typer.Option(
        None,
        "--source",
        help="dataset behind the bank's base rows (env "
        "GMEM_PLAYGROUND_SOURCE; default: what the bank reports)",
    ),
) -> None:
    """Serve the GMem playground page at / (generate, insert a style, interpolate, browse the bank).

    Bank mutations use GMEM_BANK_TOKEN, held by this server and never sent to the browser.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    given: dict[str, Any] = dict(
        bank_url=bank_url, generator_url=generator_url, host=host, port=port, source=source
    )
    try:
        settings = PlaygroundSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"gmem playground: invalid settings: {problems}") from None
    if not settings.bank_token:
        logging.getLogger("gmem.playground").warning(
            "GMEM_BANK_TOKEN is not set: inserting, interpolating and deleting snippets will be refused"
        )
    logging.getLogger("gmem.playground").info(
        "playground on http://%s:%d/ (bank %s, generator %s)",
        settings.host,
        settings.port,
        settings.bank_url,
        settings.generator_url,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=3,
    )


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
