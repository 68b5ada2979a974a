"""Fixtures for the bank service: a synthetic bank, the app over ASGI, the real process, redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gmem.launch import Process
from services.bank.app import create_app
from tests.support.banks import SyntheticBank, make_bank
from tests.support.services import settings_for, start_redis, start_service


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> SyntheticBank:
    return make_bank(tmp_path_factory.mktemp("bank") / "bank.safetensors")


@pytest.fixture()
def client(bank: SyntheticBank, tmp_path: Path) -> Iterator[TestClient]:
    """The app over ASGI (no socket), with a token configured, on a fresh data dir."""
    app = create_app(settings_for(bank, tmp_path / "data"))
    with TestClient(app) as c:
        yield c
    app.state.close()


@pytest.fixture()
def service_factory(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def factory(factors: Path, data_dir: Path, **kw: object) -> Process:
        svc = start_service(factors, data_dir, tmp_path / f"bank-{len(started)}.log", **kw)  # type: ignore[arg-type]
        started.append(svc)
        return svc

    yield factory
    for svc in started:
        svc.stop()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[Process]:
    server = start_redis(tmp_path)
    yield server
    server.stop(kill=True)
