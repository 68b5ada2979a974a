"""The services and redis-server as real processes for tests, through the one launcher (gmem.launch).

The session stack of the generator tests serves the embedded default artifacts (artifacts/mnist-5k)
with a Redis event stream, small maxima and a short batching window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gmem.launch import REPO_ROOT, Process, bank_process, free_port, generator_process, redis_process, started
from services.bank.settings import BankSettings
from tests.support.banks import SyntheticBank

ROOT = REPO_ROOT
DEFAULT_MODEL = ROOT / "artifacts" / "mnist-5k" / "model.safetensors"
DEFAULT_BANK = ROOT / "artifacts" / "mnist-5k" / "bank.safetensors"
# Long enough for the bank's start-up check (services/bank/settings.py: MIN_TOKEN_CHARS).
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Settings every test generator shares: small limits keep schemathesis and batching fast.
GENERATOR_ENV = {
    "GMEM_GENERATOR_MAX_N": "8",
    "GMEM_GENERATOR_MAX_STEPS": "32",
    "GMEM_GENERATOR_MAX_BATCH_SIZE": "8",
    "GMEM_GENERATOR_TORCH_THREADS": "1",
    "GMEM_GENERATOR_BANK_TIMEOUT_S": "2",
    "GMEM_GENERATOR_BANK_START_WAIT_S": "5",
    "GMEM_GENERATOR_READY_CACHE_S": "0",
}

__all__ = [
    "AUTH",
    "DEFAULT_BANK",
    "DEFAULT_MODEL",
    "GENERATOR_ENV",
    "ROOT",
    "TOKEN",
    "Process",
    "Stack",
    "free_port",
    "settings_for",
    "start_bank",
    "start_generator",
    "start_redis",
    "start_service",
]


def settings_for(bank: SyntheticBank, data_dir: Path, **kw: object) -> BankSettings:
    """Bank settings for the app in-process: this bank, a data dir, the test token."""
    return BankSettings(factors=bank.path, data_dir=data_dir, token=TOKEN, **kw)  # type: ignore[arg-type]


def start_redis(tmp: Path, port: int | None = None) -> Process:
    return started(redis_process(tmp, port), None)


def start_service(
    factors: Path,
    data_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    wait: bool = True,
) -> Process:
    """``python -m services.bank`` with the test token and none of the caller's GMEM_* variables."""
    proc = bank_process(factors, data_dir, log_path, env={"GMEM_BANK_TOKEN": TOKEN, **(env or {})}, args=args)
    proc.clean_env = True
    if not wait:
        return proc.start()
    return started(proc, "/readyz", timeout=30.0)


def start_bank(
    tmp: Path,
    factors: Path = DEFAULT_BANK,
    redis_url: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    encoder: str | None = None,
) -> Process:
    port = port or free_port()
    env = {"GMEM_BANK_TOKEN": TOKEN}
    if redis_url:
        env["GMEM_REDIS_URL"] = redis_url
    if encoder:
        env["GMEM_BANK_ENCODER"] = encoder
    proc = bank_process(
        factors, data_dir or tmp / f"bank-data-{port}", tmp / f"bank-{port}.log", port, env=env
    )
    return started(proc, "/readyz")


def start_generator(
    tmp: Path, bank_url: str, model: Path = DEFAULT_MODEL, wait_ready: bool = True, **env: str
) -> Process:
    port = free_port()
    proc = generator_process(
        model, bank_url, tmp / f"generator-{port}.log", port, env={**GENERATOR_ENV, **env}
    )
    return started(proc, "/readyz" if wait_ready else "/healthz")


@dataclass
class Stack:
    redis: Process
    bank: Process
    generator: Process


def start_stack(tmp: Path) -> Stack:
    """redis + bank + generator on the embedded default artifacts, sharing one event stream."""
    redis = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        bank = start_bank(tmp, redis_url=redis_url, encoder="gmem/mnist-ssl")
        try:
            gen = start_generator(tmp, bank.url, GMEM_REDIS_URL=redis_url)
        except BaseException:
            bank.stop()
            raise
    except BaseException:
        redis.stop()
        raise
    return Stack(redis, bank, gen)
