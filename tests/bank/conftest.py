"""Fixtures for the bank service: a small synthetic bank, the app over ASGI, the real process, redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.bank.app import create_app
from services.bank.settings import BankSettings
from shared.factors import BankMeta, save_factors

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-bank-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N0, D, R = 300, 24, 8
ENCODER_ID = "test/grey-4x6"


def bank_labels(n: int) -> np.ndarray:
    """Class i % 10, with every 7th row unknown (-1)."""
    idx = np.arange(n)
    return np.where(idx % 7 == 0, -1, idx % 10)


@dataclass(frozen=True)
class SyntheticBank:
    path: Path
    snippets: np.ndarray  # the unit-norm rows that were factorised [N0, D]
    mu: np.ndarray
    B: np.ndarray
    S: np.ndarray
    C: np.ndarray


def make_bank(path: Path, n: int = N0, d: int = D, r: int = R, seed: int = 0, encoder: str = ENCODER_ID,
              labels: bool = True) -> SyntheticBank:
    """A rank-r factorisation of n random unit rows, written with the project's own writer."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, d))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    mu = M.mean(axis=0)
    U, S, Vt = np.linalg.svd(M - mu, full_matrices=False)
    U, S, Vt = U[:, :r], S[:r], Vt[:r]
    C, B = U * np.sqrt(S), Vt.T * np.sqrt(S)
    meta = BankMeta(encoder=encoder, feature_dim=d, rank=r, source="synthetic",
                    explained_variance=float((S**2).sum() / ((M - mu) ** 2).sum()))
    save_factors(path, mu, B, S, C, meta, labels=bank_labels(n) if labels else None)
    f32 = np.float32
    return SyntheticBank(path, M, mu.astype(f32), B.astype(f32), S.astype(f32), C.astype(f32))


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> SyntheticBank:
    return make_bank(tmp_path_factory.mktemp("bank") / "bank.safetensors")


def settings_for(bank: SyntheticBank, data_dir: Path, **kw: object) -> BankSettings:
    return BankSettings(factors=bank.path, data_dir=data_dir, token=TOKEN, **kw)


@pytest.fixture()
def client(bank: SyntheticBank, tmp_path: Path) -> Iterator[TestClient]:
    """The app over ASGI (no socket), with a token configured, on a fresh data dir."""
    app = create_app(settings_for(bank, tmp_path / "data"))
    with TestClient(app) as c:
        yield c
    app.state.close()


# -- real processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(factors: Path, data_dir: Path, log_path: Path, env: dict[str, str] | None = None,
                  args: list[str] | None = None, wait: bool = True) -> Service:
    """``python -m services.bank`` on a free loopback port, waiting until /readyz answers 200."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
    full_env.update({"GMEM_BANK_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, **(env or {}))
    cmd = [sys.executable, "-m", "services.bank", "--factors", str(factors), "--data-dir", str(data_dir),
           "--host", "127.0.0.1", "--port", str(port), *(args or [])]
    out = log_path.open("ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(proc, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_ready(service)
    return service


def wait_ready(service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"bank exited with {service.proc.returncode}:\n{service.logs()[-3000:]}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    service.kill()
    raise RuntimeError(f"bank did not become ready in {timeout}s:\n{service.logs()[-3000:]}")


@pytest.fixture()
def service_factory(tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def factory(factors: Path, data_dir: Path, **kw: object) -> Service:
        svc = start_service(factors, data_dir, tmp_path / f"bank-{len(started)}.log", **kw)  # type: ignore[arg-type]
        started.append(svc)
        return svc

    yield factory
    for svc in started:
        svc.stop()


# -- redis ------------------------------------------------------------------------------------------
@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is required: apt-get install -y redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()
