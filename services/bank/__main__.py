"""``python -m services.bank --factors FILE --data-dir DIR [--host H] [--port P]``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from shared.errors import GMemError

log = logging.getLogger("gmem.bank")


def serve(
    factors: Annotated[Path | None, typer.Option(help="bank factors file (env GMEM_BANK_FACTORS)")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="edit log dir, created if missing (env GMEM_BANK_DATA_DIR)")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="bind address (env GMEM_BANK_HOST, default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (env GMEM_BANK_PORT, default 8001)")] = None,
    encoder: Annotated[
        str | None, typer.Option(help="encoder id for image inserts (env GMEM_BANK_ENCODER)")
    ] = None,
    encoder_weights: Annotated[Path | None, typer.Option(help="(env GMEM_BANK_ENCODER_WEIGHTS)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="event stream (env GMEM_REDIS_URL)")] = None,
    accept_data_loss: Annotated[
        bool | None,
        typer.Option(
            "--accept-data-loss",
            help="start although acknowledged edits are missing or damaged (env GMEM_BANK_ACCEPT_DATA_LOSS)",
        ),
    ] = None,
) -> None:
    """Serve the GMem memory bank: noise-CDF retrieval and durable test-time edits (CONTRACT.md section 4)."""
    # Imported here so `--help` answers without loading numpy, FAISS and FastAPI.
    from services.bank.app import create_app
    from services.bank.errors import RETRY_AFTER_S
    from services.bank.settings import BankSettings
    from shared.http.middleware import setup_logging
    from shared.http.server import serve as serve_http

    given = {
        "factors": factors,
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "encoder": encoder,
        "encoder_weights": encoder_weights,
        "redis_url": redis_url,
        "accept_data_loss": accept_data_loss or None,
    }
    try:
        overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        settings = BankSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        missing = any(e["type"] == "missing" for e in exc.errors())
        hint = " (give --factors/--data-dir or GMEM_BANK_FACTORS/GMEM_BANK_DATA_DIR)" if missing else ""
        raise typer.BadParameter(problems + hint) from None
    setup_logging(settings.log_level)
    if not settings.mutations_enabled:
        log.warning(
            "GMEM_BANK_TOKEN is not set: reads are served, every mutation (insert, interpolate, delete) "
            "is refused with 403; set GMEM_BANK_TOKEN to a secret of at least 16 characters to enable them"
        )
    try:
        app = create_app(settings)
    except GMemError as exc:
        log.error("cannot start: %s", exc)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    log.info(
        "bank ready to serve on %s:%d (factors %s, data dir %s)",
        settings.host,
        settings.port,
        settings.factors,
        settings.data_dir,
    )
    try:
        serve_http(app, settings.server_limits(RETRY_AFTER_S))
    finally:
        app.state.close()


def main() -> None:
    # Retrieval does small matmuls ([k, r] x [r, d]) per request; multi-threaded BLAS makes them ~10x
    # slower here (threads spin and fight the event loop for cores). Must be set before numpy loads.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    typer.run(serve)


if __name__ == "__main__":
    main()
