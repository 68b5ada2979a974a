"""Real processes on loopback: redis-server, the bank service and the generator service.

The session stack serves the embedded default artifacts (artifacts/mnist-5k) with
a Redis event stream, small maxima and a short batching window. Tests that stop
a process or need other settings start their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "artifacts" / "mnist-5k" / "model.safetensors"
DEFAULT_BANK = ROOT / "artifacts" / "mnist-5k" / "bank.safetensors"
TOKEN = "test-token-generator"

# Settings every test generator shares: small limits keep schemathesis and batching fast.
GENERATOR_ENV = {
    "GMEM_GENERATOR_MAX_N": "8",
    "GMEM_GENERATOR_MAX_STEPS": "32",
    "GMEM_GENERATOR_MAX_BATCH_SIZE": "8",
    "GMEM_GENERATOR_MAX_BATCH_WAIT_MS": "30",
    "GMEM_GENERATOR_TORCH_THREADS": "1",
    "GMEM_GENERATOR_BANK_TIMEOUT_S": "2",
    "GMEM_GENERATOR_BANK_START_WAIT_S": "5",
    "GMEM_GENERATOR_READY_CACHE_S": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A child process serving HTTP (or redis) on a loopback port, with its log file."""

    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self._fh = self.log.open("ab")
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=self._fh, stderr=subprocess.STDOUT)
        return self

    def wait_http(self, path: str = "/healthz", timeout: float = 60.0, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url}{path} not {status} after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_port(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"port {self.port} not open after {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        if kill:
            self.popen.kill()
        else:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._fh.close()


def _started(proc: Proc, wait) -> None:
    """Wait for ``proc`` to serve; never leave it running when it does not."""
    try:
        wait()
    except BaseException:
        proc.stop(kill=True)
        raise


def start_redis(tmp: Path, port: int | None = None) -> Proc:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    port = port or free_port()
    proc = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp)], port, tmp / f"redis-{port}.log").start()
    _started(proc, proc.wait_port)
    return proc


def start_bank(tmp: Path, factors: Path = DEFAULT_BANK, redis_url: str | None = None, port: int | None = None,
               data_dir: Path | None = None, encoder: str | None = None) -> Proc:
    port = port or free_port()
    data_dir = data_dir or tmp / f"bank-data-{port}"
    env = {"GMEM_BANK_TOKEN": TOKEN}
    if redis_url:
        env["GMEM_REDIS_URL"] = redis_url
    if encoder:
        env["GMEM_BANK_ENCODER"] = encoder
    proc = Proc([sys.executable, "-m", "services.bank", "--factors", str(factors), "--data-dir", str(data_dir),
                 "--port", str(port)], port, tmp / f"bank-{port}.log", env).start()
    _started(proc, lambda: proc.wait_http("/readyz"))
    return proc


def start_generator(tmp: Path, bank_url: str, model: Path = DEFAULT_MODEL, wait_ready: bool = True,
                    **env: str) -> Proc:
    port = free_port()
    proc = Proc([sys.executable, "-m", "services.generator", "--model", str(model), "--bank-url", bank_url,
                 "--port", str(port)], port, tmp / f"generator-{port}.log", {**GENERATOR_ENV, **env}).start()
    _started(proc, lambda: proc.wait_http("/readyz" if wait_ready else "/healthz"))
    return proc


@dataclass
class Stack:
    redis: Proc
    bank: Proc
    generator: Proc


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis + bank + generator on the embedded default artifacts, sharing one event stream."""
    tmp = tmp_path_factory.mktemp("stack")
    redis = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        bank = start_bank(tmp, redis_url=redis_url, encoder="gmem/mnist-cnn")
        try:
            gen = start_generator(tmp, bank.url, GMEM_REDIS_URL=redis_url)
        except BaseException:
            bank.stop()
            raise
    except BaseException:
        redis.stop()
        raise
    running = Stack(redis, bank, gen)
    yield running
    # Read back from the stack: a test may have replaced a process (e.g. restarted redis).
    for p in (running.generator, running.bank, running.redis):
        p.stop()


@pytest.fixture()
def gen_url(stack: Stack) -> str:
    return stack.generator.url
