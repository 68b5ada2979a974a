"""Generation jobs over real processes: events, cancel, overload, vanished clients, joins, controls."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gmem.launch import Process as Proc
from tests.support.services import Stack, start_generator
from tests.support.sse import read_events


@pytest.fixture(scope="module")
def jobs_gen(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A generator with room for 250-step jobs, a batch cap of 4 images and a short queue."""
    tmp = tmp_path_factory.mktemp("jobs")
    proc = start_generator(
        tmp,
        stack.bank.url,
        GMEM_GENERATOR_MAX_STEPS="250",
        GMEM_GENERATOR_MAX_BATCH_SIZE="4",
        GMEM_GENERATOR_MAX_QUEUE_JOBS="3",
        GMEM_GENERATOR_MAX_WORK="2000",
        GMEM_GENERATOR_JOB_TTL_S="10",
    )
    yield proc
    proc.stop()


def _submit(url: str, body: dict) -> str:
    r = httpx.post(url + "/jobs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and set(created) == {"id", "status", "position"}
    assert r.headers["location"] == f"/jobs/{created['id']}"
    return created["id"]


def _get(url: str, job_id: str) -> dict:
    r = httpx.get(f"{url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = _get(url, job_id)
        if info["status"] in ("succeeded", "failed", "cancelled"):
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info['status']} at step {info['step']}"
        time.sleep(0.02)


def _events(url: str, job_id: str) -> list[tuple[str, dict]]:
    return read_events(f"{url}/jobs/{job_id}/events", timeout=60)


def _generate(url: str, body: dict) -> dict:
    r = httpx.post(url + "/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_progress_events_arrive_in_order_and_end_with_done(jobs_gen: Proc):
    body = {"n": 2, "seed": 3, "steps": 60, "sampler": "euler"}
    job = _submit(jobs_gen.url, {**body, "preview_every": 10})
    events = _events(jobs_gen.url, job)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and set(kinds[:-1]) <= {"progress"}
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == sorted(set(steps)) and steps and steps[-1] == 60
    assert all(d["steps"] == 60 for k, d in events if k == "progress")
    previews = [d for k, d in events if k == "progress" and "preview" in d]
    assert previews and all(d["step"] % 10 == 0 for d in previews)
    assert base64.b64decode(previews[0]["preview"]).startswith(b"\x89PNG")
    done = events[-1][1]
    assert done["status"] == "succeeded" and done["id"] == job and done["step"] == 60
    assert done == _get(jobs_gen.url, job)
    # The result is exactly POST /generate's answer for the same body (bytes included).
    direct = _generate(jobs_gen.url, body)
    assert done["result"]["images"] == direct["images"] and done["result"]["indices"] == direct["indices"]
    assert set(done["result"]) == set(direct)


def test_cancel_stops_a_250_step_job_within_a_few_steps_and_spares_its_batch_mates(jobs_gen: Proc):
    long_job = _submit(jobs_gen.url, {"n": 1, "seed": 5, "steps": 250, "sampler": "heun"})
    mate_body = {"n": 1, "seed": 8, "steps": 40, "sampler": "sde"}
    mate = _submit(jobs_gen.url, mate_body)
    while _get(jobs_gen.url, long_job)["step"] < 5:
        time.sleep(0.01)
    before = _get(jobs_gen.url, long_job)["step"]
    r = httpx.delete(f"{jobs_gen.url}/jobs/{long_job}")
    assert r.status_code == 202 and r.json()["id"] == long_job
    final = _wait(jobs_gen.url, long_job)
    assert final["status"] == "cancelled" and final["result"] is None
    assert final["step"] - before <= 20 and final["step"] < 250
    # A finished job keeps its status; the batch mate was unaffected.
    assert httpx.delete(f"{jobs_gen.url}/jobs/{long_job}").json()["status"] == "cancelled"
    done = _wait(jobs_gen.url, mate)
    assert done["status"] == "succeeded"
    assert done["result"]["images"] == _generate(jobs_gen.url, mate_body)["images"]


def test_unknown_and_expired_jobs_are_404(jobs_gen: Proc):
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{jobs_gen.url}/jobs/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_job"
    assert httpx.get(f"{jobs_gen.url}/jobs/nope/events").status_code == 404
    job = _submit(jobs_gen.url, {"n": 1, "seed": 1, "steps": 2})
    assert _wait(jobs_gen.url, job)["status"] == "succeeded"
    time.sleep(10.5)  # GMEM_GENERATOR_JOB_TTL_S=10
    assert httpx.get(f"{jobs_gen.url}/jobs/{job}").status_code == 404


def test_a_full_queue_gets_429_with_retry_after_before_any_work(jobs_gen: Proc):
    bank_calls = _metric(jobs_gen.url, "gmem_generator_bank_calls_total")
    hog = _submit(jobs_gen.url, {"n": 4, "seed": 1, "steps": 250, "sampler": "euler"})  # fills the batch cap
    queued = [_submit(jobs_gen.url, {"n": 1, "seed": i, "steps": 250, "sampler": "euler"}) for i in range(3)]
    assert [_get(jobs_gen.url, j)["position"] for j in queued] == [0, 1, 2]
    calls = _metric(jobs_gen.url, "gmem_generator_bank_calls_total")
    for path, body in (("/jobs", {"n": 1, "seed": 9}), ("/generate", {"n": 1, "seed": 9})):
        r = httpx.post(jobs_gen.url + path, json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
    assert _metric(jobs_gen.url, "gmem_generator_bank_calls_total") == calls  # rejected before the bank call
    assert calls == bank_calls + 4
    for j in [hog, *queued]:
        httpx.delete(f"{jobs_gen.url}/jobs/{j}")
    assert all(_wait(jobs_gen.url, j)["status"] == "cancelled" for j in [hog, *queued])


def test_work_over_the_bound_is_422(jobs_gen: Proc):
    # GMEM_GENERATOR_MAX_WORK=2000: 8 x 250 fits, with CFG it is twice that.
    r = httpx.post(jobs_gen.url + "/generate", json={"n": 8, "steps": 250, "cfg_scale": 2.0})
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_exceeded"
    assert "GMEM_GENERATOR_MAX_WORK" in r.json()["error"]["message"]


def _wait_idle(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _metric(url, "gmem_generator_queue_size") or _metric(url, "gmem_generator_running_jobs"):
        assert time.monotonic() < deadline, "the scheduler kept work nobody waits for"
        time.sleep(0.05)


def test_a_disconnecting_sync_client_cancels_and_vanished_clients_leave_the_queue_drained(jobs_gen: Proc):
    cancelled = _metric(jobs_gen.url, 'gmem_generator_jobs_total{status="cancelled"}')

    def abandon(seed: int) -> None:
        try:
            httpx.post(
                jobs_gen.url + "/generate",
                json={"n": 2, "seed": seed, "steps": 250, "sampler": "heun"},
                timeout=0.5,
            )
        except httpx.TimeoutException:
            return
        raise AssertionError("a 250-step heun request should outlive a 0.5 s client timeout")

    threads = [threading.Thread(target=abandon, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait_idle(jobs_gen.url)
    assert _metric(jobs_gen.url, 'gmem_generator_jobs_total{status="cancelled"}') == cancelled + 3
    # The next request is served at once (nothing left computing for the vanished clients).
    assert _generate(jobs_gen.url, {"n": 1, "seed": 1, "steps": 4})["steps"] == 4


def test_images_are_identical_alone_and_joining_a_running_batch_at_any_step(jobs_gen: Proc):
    bodies = [
        {"n": 2, "seed": 21, "steps": 40, "sampler": "heun"},
        # CFG rows in the shared forward; a real null, since the embedded model may have no trained zero null
        {"n": 1, "seed": 7, "steps": 20, "sampler": "euler", "cfg_scale": 1.5, "negative_snippet_id": 40},
        {"n": 1, "seed": 4, "steps": 30, "sampler": "sde", "snippet_ids": [12]},
    ]
    jobs = []
    for body in bodies:
        jobs.append(_submit(jobs_gen.url, body))
        time.sleep(0.15)  # later jobs join while the first is mid-way
    results = [_wait(jobs_gen.url, j) for j in reversed(jobs)][::-1]
    assert all(r["status"] == "succeeded" for r in results)
    assert results[0]["started_at"] < results[2]["started_at"] < results[0]["finished_at"]  # joined mid-way
    for body, res in zip(bodies, results, strict=True):
        _wait_idle(jobs_gen.url)
        assert res["result"]["images"] == _generate(jobs_gen.url, body)["images"]  # alone now


def test_blend_negative_snippet_and_guidance_interval(jobs_gen: Proc, stack: Stack):
    url = jobs_gen.url
    base = {"n": 2, "seed": 2, "steps": 10, "sampler": "euler"}
    blend = _generate(url, {**base, "snippets": [{"id": 3, "weight": 0.7}, {"id": 40, "weight": 0.3}]})
    assert blend["indices"] == [None, None] and blend["bank_version"] is not None
    assert blend["images"] != _generate(url, {**base, "snippet_ids": [3]})["images"]
    assert (
        _generate(url, {**base, "snippets": [{"id": 3, "weight": 1.0}]})["images"]
        == _generate(url, {**base, "snippets": [{"id": 3, "weight": 5.0}]})["images"]
    )  # re-normalised weights
    for bad in (
        {"snippets": [{"id": 3, "weight": 1.0}, {"id": 4, "weight": -1.0}]},
        {"snippets": [{"id": 3, "weight": 1.0}], "snippet_ids": [3]},
        {"snippet": [1.0] * 128, "label": 1},
        {"label": 99},  # mnist-5k has labels 0..9
        {"negative_snippet_id": 3, "negative_snippet": [1.0] * 128},
        {"guidance_interval": [0.8, 0.2]},
        {"guidance_interval": [0.0, 1.5]},
    ):
        r = httpx.post(url + "/generate", json={**base, **bad})
        assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
    assert (
        httpx.post(url + "/generate", json={**base, "snippets": [{"id": 10**7, "weight": 1}]}).status_code
        == 404
    )
    # Against a real null: the embedded model may record no trained zero null (test_cfg_null.py covers the
    # zero null, and its refusal, on tiny models).
    guided = {**base, "snippet_ids": [5], "cfg_scale": 2.0, "negative_snippet_id": 40}
    plain = _generate(url, guided)
    assert plain["forwards_saved"] == 0
    assert _generate(url, {**guided, "negative_snippet_id": 41})["images"] != plain["images"]
    assert _generate(url, {**guided, "cfg_scale": 1.0})["images"] != plain["images"]
    assert _generate(url, {**guided, "guidance_interval": [0.0, 1.0]})["images"] == plain["images"]
    saved_before = _metric(url, "gmem_generator_saved_forwards_total")
    half = _generate(url, {**guided, "guidance_interval": [0.5, 1.0]})
    # Euler at 10 steps evaluates t = 0, 0.1, ..., 0.9: five are below 0.5, for each of 2 images.
    assert half["forwards_saved"] == 10 and half["images"] != plain["images"]
    assert _metric(url, "gmem_generator_saved_forwards_total") == saved_before + 10


def test_python_client_submit_wait_events_cancel_sync_and_async(jobs_gen: Proc):
    import asyncio

    from shared.client import AsyncGeneratorClient, GeneratorClient, NotFound

    with GeneratorClient(jobs_gen.url) as gen:
        created = gen.submit(n=1, seed=6, steps=30, sampler="euler", preview_every=10)
        seen: list[int] = []
        info = gen.wait(created.id, on_progress=lambda ev: seen.append(ev.data["step"]))
        assert info.status == "succeeded" and seen == sorted(seen) and seen[-1] == 30
        assert info.result["images"] == gen.job(created.id).result["images"]
        assert [ev.event for ev in gen.events(created.id)] == ["done"]
        long_job = gen.submit(n=1, seed=6, steps=250, sampler="heun")
        assert gen.cancel(long_job.id).id == long_job.id
        assert gen.wait(long_job.id).status == "cancelled"
        try:
            gen.job("missing")
            raise AssertionError("an unknown job must raise NotFound")
        except NotFound:
            pass

    async def run() -> None:
        async with AsyncGeneratorClient(jobs_gen.url) as agen:
            created = await agen.submit(n=1, seed=6, steps=30, sampler="euler")
            steps: list[int] = []
            done = await agen.wait(created.id, on_progress=lambda ev: steps.append(ev.data["step"]))
            assert done.status == "succeeded" and steps and steps[-1] == 30
            assert done.result["images"] == info.result["images"]  # same body, same bytes

    asyncio.run(run())


def test_cli_submit_wait_cancel_events(jobs_gen: Proc, tmp_path):
    import subprocess
    import sys

    from tests.support.services import ROOT

    def gmem(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gmem", "--generator-url", jobs_gen.url, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    sub = gmem("--json", "submit", "-n", "2", "--seed", "4", "--steps", "20", "--sampler", "euler")
    assert sub.returncode == 0, sub.stderr
    job_id = json.loads(sub.stdout)["id"]
    lines = [json.loads(x) for x in gmem("events", job_id).stdout.splitlines() if x.strip()]
    assert lines[-1]["event"] == "done" and lines[-1]["data"]["status"] == "succeeded"
    assert [x["data"]["step"] for x in lines[:-1]] == sorted({x["data"]["step"] for x in lines[:-1]})
    done = gmem("--json", "wait", job_id, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == "succeeded" and len(body["images"]) == 2
    assert all((tmp_path / Path(p).name).read_bytes().startswith(b"\x89PNG") for p in body["images"])
    long_job = json.loads(gmem("--json", "submit", "--steps", "250", "--sampler", "heun").stdout)["id"]
    assert gmem("cancel", long_job).returncode == 0
    assert gmem("wait", long_job, "--out", str(tmp_path)).returncode == 1  # cancelled is not success
