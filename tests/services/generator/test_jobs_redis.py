"""Jobs in Redis: two real generator replicas, a real redis-server, and a replica killed with kill -9."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from gmem.launch import Process as Proc
from tests.services.generator.test_jobs import _events, _generate, _get, _submit, _wait
from tests.support.services import Stack, start_generator, start_redis


@pytest.fixture(scope="module")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, list[Proc]]]:
    """Two replicas sharing one Redis; the kill test runs last (it leaves one replica)."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    red = start_redis(tmp_path)
    url = f"redis://127.0.0.1:{red.port}/0"
    env = {"GMEM_REDIS_URL": url, "GMEM_GENERATOR_MAX_STEPS": "250", "GMEM_GENERATOR_JOB_CLAIM_IDLE_S": "2"}
    procs: list[Proc] = []
    try:
        procs = [start_generator(tmp_path, stack.bank.url, **env) for _ in range(2)]
        yield red, procs
    finally:
        for p in procs:
            p.stop()
        red.stop()


def _owner(a: Proc, b: Proc, job: str) -> tuple[Proc, Proc]:
    """(owner, other): the owner's /metrics count the job as running."""

    def running(p: Proc) -> float:
        for line in httpx.get(p.url + "/metrics").text.splitlines():
            if line.startswith("gmem_generator_running_jobs "):
                return float(line.split()[1])
        return 0.0

    ra, rb = running(a), running(b)
    assert (ra, rb) in ((1.0, 0.0), (0.0, 1.0)), (ra, rb)
    return (a, b) if ra else (b, a)


def test_events_and_cancel_through_another_replica(replicas):
    _, (a, b) = replicas
    job = _submit(a.url, {"n": 1, "seed": 3, "steps": 30, "sampler": "heun", "preview_every": 10})
    events = _events(b.url, job)
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    long_job = _submit(b.url, {"n": 1, "seed": 4, "steps": 250, "sampler": "heun"})
    while _get(a.url, long_job)["step"] < 3:
        time.sleep(0.02)
    assert httpx.delete(f"{a.url}/jobs/{long_job}").status_code == 202
    final = _wait(b.url, long_job)
    assert final["status"] == "cancelled" and final["step"] < 250
    assert httpx.get(f"{a.url}/jobs/unknown").status_code == 404


def test_any_replica_answers_and_a_killed_replicas_job_completes_elsewhere_with_the_same_bytes(replicas):
    red, (a, b) = replicas
    body = {"n": 2, "seed": 17, "steps": 250, "sampler": "euler"}
    job = _submit(a.url, body)
    deadline = time.monotonic() + 30
    while not (_get(b.url, job)["status"] == "running" and _get(b.url, job)["step"] >= 3):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    victim, survivor = _owner(a, b, job)
    victim.stop(kill=True)
    info = _wait(survivor.url, job, timeout=120)
    assert info["status"] == "succeeded", info
    assert (
        "running it again from the start" in survivor.log_path.read_text()
    )  # it was re-run, not finished by the victim
    assert info["result"]["images"] == _generate(survivor.url, body)["images"]
