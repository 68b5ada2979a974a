"""The local stack as real processes: redis-server, the bank service and the generator.

Used by `make demo` (scripts/demo.py) and by the end-to-end tests, so both exercise
exactly the same start-up path a user gets. Each process runs in its own session
(so a Ctrl-C in the terminal reaches only the demo, which then stops the services
in order: generator, bank, redis) and logs to ``<out>/logs/<name>.log``.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gmem.launch import (
    REPO_ROOT,
    LaunchError,
    Process,
    bank_process,
    free_port,
    generator_process,
    pick_port,
    playground_process,
    port_is_free,
    redis_process,
)

__all__ = [
    "ARTIFACTS",
    "REPO_ROOT",
    "LocalStack",
    "StackConfig",
    "StackError",
    "free_port",
    "pick_port",
    "port_is_free",
    "with_overrides",
]
ARTIFACTS = REPO_ROOT / "artifacts" / "mnist-5k"
DEFAULT_BANK_PORT = 8001
DEFAULT_GENERATOR_PORT = 8002
DEFAULT_REDIS_PORT = 6379
DEFAULT_PLAYGROUND_PORT = 8003


class StackError(LaunchError):
    """A service of the local stack failed to start or to become ready."""


@dataclass(frozen=True)
class StackConfig:
    """What to run and where. Ports of ``None`` mean: the default if free, else any free port."""

    out_dir: Path
    factors: Path = ARTIFACTS / "bank.safetensors"
    model: Path = ARTIFACTS / "model.safetensors"
    encoder: str | None = "gmem/mnist-ssl"
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


class LocalStack:
    """Starts, health-checks and stops the three processes; a context manager.

    ``with LocalStack(cfg) as stack:`` starts everything and waits for /readyz;
    leaving the block stops everything, also on exceptions and KeyboardInterrupt.
    """

    def __init__(self, config: StackConfig, on_status: Callable[[str], None] | None = None) -> None:
        # The services run with the repository as their working directory, so relative
        # paths given from elsewhere are resolved against the caller's directory here.
        self.config = config = replace(
            config,
            out_dir=Path(config.out_dir).resolve(),
            factors=Path(config.factors).resolve(),
            model=Path(config.model).resolve(),
            encoder_weights=Path(config.encoder_weights).resolve() if config.encoder_weights else None,
        )
        self._say = on_status or (lambda _msg: None)
        self.services: dict[str, Process] = {}
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
                "missing artifact file(s): "
                + ", ".join(missing)
                + ". The embedded default lives in artifacts/mnist-5k/ (see artifacts/mnist-5k/REBUILD.md "
                "to rebuild it), or pass other files with --factors/--model."
            )

    # ------------------------------------------------------------------ processes
    def _run(self, proc: Process, ready_path: str | None) -> Process:
        proc.new_session = True
        self.services[proc.name] = proc
        proc.start()
        try:
            if ready_path is None:
                proc.wait_port(20.0)
            else:
                proc.wait_http(ready_path, self.config.ready_timeout_s)
        except LaunchError as exc:
            raise StackError(f"the {proc.name} service did not start: {exc}") from exc
        self._say(f"{proc.name} ready")
        return proc

    def start_redis(self) -> None:
        if shutil.which("redis-server") is None:
            self._say(
                "redis-server not found: running without the bank's event stream "
                "(install it with `apt-get install redis-server`, or run `make setup`)"
            )
            return
        port = pick_port(self.config.redis_port, self.config.host)
        while port in (self.bank_port, self.generator_port):
            port = free_port(self.config.host)
        self._say(f"starting redis-server on port {port}")
        proc = redis_process(
            self.config.out_dir / "redis", port, self.config.host, log_path=self.config.log_dir / "redis.log"
        )
        self._run(proc, None)
        self.redis_url = f"redis://{self.config.host}:{port}/0"

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
        c = self.config
        self._say(f"starting the bank service on {self.bank_url}")
        self._run(
            bank_process(
                c.factors,
                c.data_dir,
                c.log_dir / "bank.log",
                self.bank_port,
                c.host,
                self.bank_environment(),
                python=c.python,
            ),
            "/readyz",
        )

    def start_generator(self) -> None:
        c = self.config
        self._say(f"starting the generator on {self.generator_url}")
        env = {"GMEM_REDIS_URL": self.redis_url} if self.redis_url else {}
        env.update(c.generator_env)
        self._run(
            generator_process(
                c.model,
                self.bank_url,
                c.log_dir / "generator.log",
                self.generator_port,
                c.host,
                env,
                python=c.python,
            ),
            "/readyz",
        )

    def start_playground(self) -> None:
        """The playground page over the running bank and generator; it holds the bank token."""
        c = self.config
        self.playground_port = pick_port(c.playground_port, c.host)
        while self.playground_port in (self.bank_port, self.generator_port):
            self.playground_port = free_port(c.host)
        self._say(f"starting the playground on {self.playground_url}")
        env = {"GMEM_BANK_TOKEN": c.token, **c.playground_env}
        self._run(
            playground_process(
                self.bank_url,
                self.generator_url,
                c.log_dir / "playground.log",
                self.playground_port,
                c.host,
                env,
                python=c.python,
            ),
            "/readyz",
        )

    def stop_service(self, name: str, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``."""
        proc = self.services.pop(name, None)
        if proc is None or not proc.running:
            return
        self._say(f"stopping {name}")
        proc.stop(timeout=timeout_s)

    def kill_service(self, name: str) -> None:
        """SIGKILL without warning: what a crash looks like to the data dir."""
        self.services.pop(name).kill()

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
