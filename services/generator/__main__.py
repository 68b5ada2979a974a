"""`python -m services.generator --model FILE --bank-url URL [--host H] [--port P]`
(CONTRACT.md section 3).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import typer
from pydantic import ValidationError

from services.generator.settings import GeneratorSettings
from shared.errors import GMemError

log = logging.getLogger("gmem.generator")


def check_bank_at_start(settings: GeneratorSettings) -> None:
    """Wait up to ``bank_start_wait_s`` for the bank; exit non-zero if it is incompatible with the model.

    An unreachable bank does not stop the start: the service comes up not ready and
    says so in /readyz until the bank answers.
    """
    # Imported here so `--help` answers without loading torch.
    from services.generator.runtime import check_bank_compatible, read_model_facts
    from shared.client import BankClient, ClientError, RetryPolicy

    try:
        facts = read_model_facts(settings.model)
    except GMemError as exc:
        raise SystemExit(f"gmem generator: {exc.message}") from exc
    deadline = time.monotonic() + settings.bank_start_wait_s
    with BankClient(
        settings.bank_url, timeout=min(2.0, settings.bank_timeout_s), retry=RetryPolicy(attempts=1)
    ) as bank:
        while True:
            try:
                info = bank.info()
                break
            except ClientError as exc:
                if time.monotonic() >= deadline:
                    log.warning(
                        "bank at %s not reachable (%s); starting not ready", settings.bank_url, exc.message
                    )
                    return
                time.sleep(0.5)
    try:
        check_bank_compatible(facts, info.feature_dim, info.encoder, settings.bank_url)
    except GMemError as exc:
        raise SystemExit(f"gmem generator: refusing to start: {exc.message}") from exc


def serve(
    model: str | None = typer.Option(None, "--model", help="model file (env GMEM_GENERATOR_MODEL)"),
    bank_url: str | None = typer.Option(None, "--bank-url", help="bank service URL (env GMEM_BANK_URL)"),
    host: str | None = typer.Option(
        None, "--host", help="bind address (env GMEM_GENERATOR_HOST; default 127.0.0.1)"
    ),
    port: int | None = typer.Option(None, "--port", help="port (env GMEM_GENERATOR_PORT; default 8002)"),
) -> None:
    """Serve GMem sampling over HTTP (POST /generate); snippets come from the bank service.

    Every other setting is an environment variable GMEM_GENERATOR_* (services/generator/settings.py).
    """
    # Imported here so `--help` answers without loading torch.
    from services.generator.app import create_app
    from shared.http.middleware import setup_logging
    from shared.http.server import serve as serve_http

    setup_logging("INFO")
    given: dict[str, Any] = {"model": model, "bank_url": bank_url, "host": host, "port": port}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        settings = GeneratorSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"gmem generator: invalid settings: {problems}") from None
    check_bank_at_start(settings)
    try:
        app = create_app(settings)
    except GMemError as exc:  # e.g. a T2S adapter that does not fit the model
        raise SystemExit(f"gmem generator: refusing to start: {exc.message}") from exc
    serve_http(app, settings.server_limits(settings.retry_after_s))


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
