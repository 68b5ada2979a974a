"""The one process launcher: redis-server, the bank and the generator as child processes on loopback.

Used by the local stack (``gmem.stack``, so `make demo`), the tests (``tests/support/``) and the
benchmarks (``bench/``), so all of them start the services the way a user does. A ``Process`` logs to
its own file, waits until it serves (an HTTP path answering, or its port open), fails fast with the
log's tail when the child dies, and stops with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """A child process exited, or did not serve in time."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (there is a small race until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_port(preferred: int | None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else any free port."""
    if preferred and port_is_free(preferred, host):
        return preferred
    return free_port(host)


@dataclass
class Process:
    """One child process serving on ``host:port``, logging to ``log_path``.

    ``env`` is added to this process's environment (``clean_env`` drops the caller's ``GMEM_*`` first);
    ``new_session`` puts the child in its own process group, so a terminal's Ctrl-C reaches only the
    parent and ``stop`` signals the whole group.
    """

    name: str
    argv: list[str]
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    clean_env: bool = False
    new_session: bool = False
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://host:port``, or ``redis://host:port/0`` for redis-server."""
        return f"{self.scheme}://{self.host}:{self.port}" + ("/0" if self.scheme == "redis" else "")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Process:
        base = {k: v for k, v in os.environ.items() if not (self.clean_env and k.startswith("GMEM_"))}
        env = {**base, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
        return self

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise LaunchError(
                f"{self.name} exited with status {self.popen.returncode}; last lines of "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    def wait_http(self, path: str = "/readyz", timeout: float = 60.0, status: int = 200) -> None:
        """Poll ``GET path`` until it answers ``status``."""
        deadline, last = time.monotonic() + timeout, "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    r = http.get(self.url + path)
                    if r.status_code == status:
                        return
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        raise LaunchError(
            f"{self.name} at {self.url}{path} was not {status} after {timeout:.0f}s ({last}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def wait_port(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise LaunchError(f"{self.name}: port {self.port} not open after {timeout:.0f}s:\n{self.log_tail()}")

    def _signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        try:
            if self.new_session:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (graceful shutdown) or, with ``kill``, SIGKILL; SIGKILL after ``timeout`` anyway."""
        if not self.running:
            return
        self._signal(signal.SIGKILL if kill else signal.SIGTERM)
        assert self.popen is not None
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL without warning: what a crash looks like to the data dir."""
        self.stop(kill=True)


def started(proc: Process, ready_path: str | None, timeout: float = 60.0) -> Process:
    """Start ``proc`` and wait until it serves (``ready_path`` over HTTP, or its port); never leave it
    running when it does not."""
    proc.start()
    try:
        if ready_path is None:
            proc.wait_port(timeout)
        else:
            proc.wait_http(ready_path, timeout)
    except BaseException:
        proc.stop(kill=True)
        raise
    return proc


def redis_process(
    workdir: Path, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
) -> Process:
    """redis-server without persistence (the bank's data dir is the source of truth)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise LaunchError("redis-server is not installed: apt-get install -y redis-server (or `make setup`)")
    port = port or free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    return Process("redis", argv, log_path or workdir / f"redis-{port}.log", port, host, scheme="redis")


def service_process(
    name: str,
    flags: list[str],
    log_path: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Process:
    """``python -m services.NAME FLAGS --host H --port P`` on ``port`` (a free one by default)."""
    port = port or free_port(host)
    argv = [python, "-m", f"services.{name}", *flags, "--host", host, "--port", str(port)]
    return Process(name, argv, log_path, port, host, dict(env or {}))


def bank_process(
    factors: Path,
    data_dir: Path,
    log_path: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    python: str = sys.executable,
) -> Process:
    """``python -m services.bank`` over a factors file and a data dir."""
    flags = ["--factors", str(factors), "--data-dir", str(data_dir), *(args or [])]
    return service_process("bank", flags, log_path, port, host, env, python)


def generator_process(
    model: Path,
    bank_url: str,
    log_path: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Process:
    """``python -m services.generator`` over a model file and a running bank."""
    flags = ["--model", str(model), "--bank-url", bank_url]
    return service_process("generator", flags, log_path, port, host, env, python)


def playground_process(
    bank_url: str,
    generator_url: str,
    log_path: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Process:
    """``python -m services.playground`` over a running bank and generator."""
    flags = ["--bank-url", bank_url, "--generator-url", generator_url]
    return service_process("playground", flags, log_path, port, host, env, python)
