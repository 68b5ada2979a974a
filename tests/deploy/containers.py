"""Helpers for the container test: run scripts/containers.sh, docker and docker-compose, and report.

Every command runs with a timeout and its output is kept, so a failure says what the tool said.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "containers.sh"
BANK_URL = "http://127.0.0.1:8001"
GENERATOR_URL = "http://127.0.0.1:8002"
PLAYGROUND_URL = "http://127.0.0.1:8003"
LOCAL_BASE = "gmem/base:bookworm"
# script name -> image tag: what the test builds; the GPU Dockerfiles are built on the local base to
# prove their steps (its CUDA runtime is only exercised where a GPU is lent).
IMAGES = {
    "bank": "gmem/bank:{tag}",
    "bank-encoder": "gmem/bank:{tag}-encoder",
    "generator": "gmem/generator:{tag}-cpu",
    "generator-gpu": "gmem/generator:{tag}-cuda",
    "train": "gmem/train:{tag}-cuda",
}
SERVICES = ("bank", "bank-encoder", "generator", "generator-gpu")


class CommandFailed(AssertionError):
    pass


def docker_exe() -> str | None:
    # Debian's client matches Debian's engine (scripts/containers.sh makes the same choice).
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")


def run(
    argv: list[str], env: dict[str, str], timeout: float, check: bool = True
) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-3000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-3000:]
        raise CommandFailed(f"`{' '.join(argv)}` ran past {timeout:.0f} s:\n{tail}") from None
    if check and out.returncode != 0:
        raise CommandFailed(
            f"`{' '.join(argv)}` exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
        )
    return out


@dataclass
class Env:
    """One test run's names: image tag, compose project, redis port, dockerd state dir."""

    tag: str
    project: str
    redis_port: int
    state_dir: Path
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def vars(self) -> dict[str, str]:
        return {
            **os.environ,
            "IMAGE_TAG": self.tag,
            "PROJECT": self.project,
            "HOSTNET": "1",
            "OFFLINE": "1",
            "REDIS_PORT": str(self.redis_port),
            "REDIS_IMAGE": LOCAL_BASE,
            "STATE_DIR": str(self.state_dir),
        }

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return run(["bash", str(SCRIPT), *args], self.vars, timeout)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run([docker_exe() or "docker", *args], self.vars, timeout, check)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        files = ["-f", "docker-compose.yml", "-f", "deploy/compose.hostnet.yml"]
        exe = ["docker-compose"] if shutil.which("docker-compose") else [docker_exe() or "docker", "compose"]
        return run([*exe, "-p", self.project, *files, *args], self.vars, timeout)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service} in project {self.project}"
        return cid

    def inspect(self, ref: str, fmt: str) -> str:
        return self.docker("inspect", "-f", fmt, ref).stdout.strip()

    def image(self, name: str) -> str:
        return IMAGES[name].format(tag=self.tag)

    def cleanup_project(self) -> list[str]:
        """Remove whatever is left of this project: containers, then volumes. Returns what was removed."""
        removed = []
        label = f"label=com.docker.compose.project={self.project}"
        ids = self.docker("ps", "-aq", "--filter", label, check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
            removed += ids
        vols = self.docker("volume", "ls", "-q", "--filter", label, check=False).stdout.split()
        if vols:
            self.docker("volume", "rm", "-f", *vols, check=False)
            removed += vols
        return removed


def wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz not 200 within {timeout_s:.0f} s (last: {last})")


def report_lines(figures: dict[str, object]) -> list[str]:
    return ["containers: " + json.dumps(figures, sort_keys=True)]
