"""The local stack as real processes: redis-server, the bank service and the generator.

Used by `make demo` (scripts/demo.py) and by the end-to-end tests, so both exercise
exactly the same start-up path a user gets. Each process runs in its own session
(so a Ctrl-C in the terminal reaches only the demo, which then stops the services
in order: generator, bank, redis) and logs to ``<out>/logs/<name>.log``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts" / "mnist-5k"
DEFAULT_BANK_PORT = 8001
DEFAULT_GENERATOR_PORT = 8002
DEFAULT_REDIS_PORT = 6379
DEFAULT_PLAYGROUND_PORT = 8003


class StackError(RuntimeError):
    """A service of the local stack failed to start or to become ready."""


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


@dataclass(frozen=True)
class StackConfig:
    """What to run and where. Ports of ``None`` mean: the default if free, else any free port."""

    out_dir: Path
    factors: Path = ARTIFACTS / "bank.safetensors"
    model: Path = ARTIFACTS / "model.safetensors"
    encoder: str | None = "gmem/mnist-cnn"
    encoder_weights: Path | None = ARTIFACTS / "encoder.safetensors"
    host: str = "127.0.0.1"
    bank_port: int | None = DEFAULT_BANK_PORT
    generator_port: int | None = DEFAULT_GENERATOR_PORT
    redis_port: int | None = DEFAULT_REDIS_PORT
    playground_port: int | None = DEFAULT_PLAYGROUND_PORT
    use_redis: bool = True
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    python: str = sys.executable
    ready_timeout_s: float = 180.0
    # Extra GMEM_* settings for the services (e.g. small maxima in tests); strings only.
    bank_env: dict[str, str] = field(default_factory=dict)
    generator_env: dict[str, str] = field(default_factory=dict)
    playground_env: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out_dir / "bank-data"

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "logs"


@dataclass
class Service:
    """One running process of the stack."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalStack:
    """Starts, health-checks and stops the three processes; a context manager.

    ``with LocalStack(cfg) as stack:`` starts everything and waits for /readyz;
    leaving the block stops everything, also on exceptions and KeyboardInterrupt.
    """

    def __init__(self, config: StackConfig, on_status: Callable[[str], None] | None = None) -> None:
        # The services run with the repository as their working directory, so relative
        # paths given from elsewhere are resolved against the caller's directory here.
        self.config = config = replace(
            config, out_dir=Path(config.out_dir).resolve(), factors=Path(config.factors).resolve(),
            model=Path(config.model).resolve(),
            encoder_weights=Path(config.encoder_weights).resolve() if config.encoder_weights else None,
        )
        self._say = on_status or (lambda _msg: None)
        self.services: dict[str, Service] = {}
        host = config.host
        self.bank_port = pick_port(config.bank_port, host)
        self.generator_port = pick_port(config.generator_port, host)
        while self.generator_port == self.bank_port:
            self.generator_port = free_port(host)
        self.redis_url: str | None = None
        self.playground_port: int | None = None  # picked when the playground starts

    # ------------------------------------------------------------------ urls
    @property
    def bank_url(self) -> str:
        return f"http://{self.config.host}:{self.bank_port}"

    @property
    def generator_url(self) -> str:
        return f"http://{self.config.host}:{self.generator_port}"

    @property
    def playground_url(self) -> str:
        return f"http://{self.config.host}:{self.playground_port}"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, generator: bool = True) -> None:
        """Redis (when available), then the bank, then the generator; each waited for."""
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_artifacts(generator)
        if self.config.use_redis:
            self.start_redis()
        self.start_bank()
        if generator:
            self.start_generator()

    def stop(self) -> None:
        """Stop every process, newest first (generator before the bank it calls)."""
        for name in reversed(list(self.services)):
            self.stop_service(name)

    def _check_artifacts(self, generator: bool = True) -> None:
        needed = [self.config.factors] + ([self.config.model] if generator else [])
        if self.config.encoder and self.config.encoder_weights:
            needed.append(self.config.encoder_weights)
        missing = [str(p) for p in needed if not Path(p).is_file()]
        if missing:
            raise StackError(
                "missing artifact file(s): " + ", ".join(missing)
                + ". The embedded default lives in artifacts/mnist-5k/ (see artifacts/mnist-5k/REBUILD.md "
                "to rebuild it), or pass other files with --factors/--model."
            )

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        log_path = self.config.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns the descriptor
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        svc = Service(name=name, proc=proc, log_path=log_path)
        self.services[name] = svc
        return svc

    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            self._say("redis-server not found: running without the bank's event stream "
                      "(install it with `apt-get install redis-server`, or run `make setup`)")
            return
        port = pick_port(self.config.redis_port, self.config.host)
        while port in (self.bank_port, self.generator_port):
            port = free_port(self.config.host)
        redis_dir = self.config.out_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(port), "--bind", self.config.host, "--save", "", "--appendonly", "no",
                "--dir", str(redis_dir)]
        self._say(f"starting redis-server on port {port}")
        svc = self._spawn("redis", argv)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise StackError(f"redis-server exited with {svc.proc.returncode}:\n{svc.log_tail()}")
            if not port_is_free(port, self.config.host):
                break
            time.sleep(0.1)
        self.redis_url = f"redis://{self.config.host}:{port}/0"

    def bank_argv(self) -> list[str]:
        c = self.config
        return [c.python, "-m", "services.bank", "--factors", str(c.factors), "--data-dir", str(c.data_dir),
                "--host", c.host, "--port", str(self.bank_port)]

    def bank_environment(self) -> dict[str, str]:
        c = self.config
        env = {"GMEM_BANK_TOKEN": c.token}
        if self.redis_url:
            env["GMEM_REDIS_URL"] = self.redis_url
        if c.encoder:
            env["GMEM_BANK_ENCODER"] = c.encoder
            if c.encoder_weights:
                env["GMEM_BANK_ENCODER_WEIGHTS"] = str(c.encoder_weights)
        env.update(c.bank_env)
        return env

    def start_bank(self) -> None:
        self._say(f"starting the bank service on {self.bank_url}")
        svc = self._spawn("bank", self.bank_argv(), self.bank_environment())
        svc.url = self.bank_url
        self.wait_ready("bank")

    def generator_argv(self) -> list[str]:
        c = self.config
        return [c.python, "-m", "services.generator", "--model", str(c.model), "--bank-url", self.bank_url,
                "--host", c.host, "--port", str(self.generator_port)]

    def start_generator(self) -> None:
        self._say(f"starting the generator on {self.generator_url}")
        env = {"GMEM_REDIS_URL": self.redis_url} if self.redis_url else {}
        env.update(self.config.generator_env)
        svc = self._spawn("generator", self.generator_argv(), env)
        svc.url = self.generator_url
        self.wait_ready("generator")

    def start_playground(self) -> None:
        """The playground page over the running bank and generator; it holds the bank token."""
        c = self.config
        self.playground_port = pick_port(c.playground_port, c.host)
        while self.playground_port in (self.bank_port, self.generator_port):
            self.playground_port = free_port(c.host)
        self._say(f"starting the playground on {self.playground_url}")
        argv = [c.python, "-m", "services.playground", "--bank-url", self.bank_url, "--generator-url",
                self.generator_url, "--host", c.host, "--port", str(self.playground_port)]
        svc = self._spawn("playground", argv, {"GMEM_BANK_TOKEN": c.token, **c.playground_env})
        svc.url = self.playground_url
        self.wait_ready("playground")

    def wait_ready(self, name: str) -> None:
        """Poll GET /readyz until 200; fail fast, with the log tail, if the process dies."""
        svc = self.services[name]
        deadline = time.monotonic() + self.config.ready_timeout_s
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                code = svc.proc.poll()
                if code is not None:
                    raise StackError(f"the {name} service exited with status {code} before it was ready; "
                                     f"last lines of {svc.log_path}:\n{svc.log_tail()}")
                try:
                    r = http.get(f"{svc.url}/readyz")
                    if r.status_code == 200:
                        self._say(f"{name} ready")
                        return
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.25)
        raise StackError(f"the {name} service was not ready after {self.config.ready_timeout_s:.0f}s "
                         f"({last}); last lines of {svc.log_path}:\n{svc.log_tail()}")

    def stop_service(self, name: str, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``."""
        svc = self.services.pop(name, None)
        if svc is None or svc.proc.poll() is not None:
            return
        self._say(f"stopping {name}")
        try:
            os.killpg(svc.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            svc.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(svc.proc.pid, signal.SIGKILL)
            svc.proc.wait(timeout=5)

    def kill_service(self, name: str) -> None:
        """SIGKILL without warning: what a crash looks like to the data dir."""
        svc = self.services.pop(name)
        os.killpg(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(timeout=10)

    def restart_bank(self, hard: bool = False) -> None:
        """Stop (or kill -9) the bank and start it again on the same data dir and port."""
        if hard:
            self.kill_service("bank")
        else:
            self.stop_service("bank")
        self.start_bank()


def with_overrides(config: StackConfig, **changes: object) -> StackConfig:
    """A copy of ``config`` with some fields replaced (frozen dataclasses do not mutate)."""
    return replace(config, **changes)
