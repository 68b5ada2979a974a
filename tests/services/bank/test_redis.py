"""Events to a real redis-server; Redis down or restarted never fails or blocks a mutation or a read."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from tests.support.banks import N0, D, SyntheticBank
from tests.support.services import AUTH, Process, free_port

STREAM = "gmem:bank:events"


def stream_events(server: Process) -> list[tuple[int, str, int]]:
    client = redis.Redis.from_url(server.url, socket_timeout=1)
    try:
        return [(int(f[b"version"]), f[b"op"].decode(), int(f[b"id"])) for _, f in client.xrange(STREAM)]
    finally:
        client.close()


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def test_events_survive_redis_outage_and_restart(
    bank: SyntheticBank, redis_server: Process, service_factory, tmp_path: Path
) -> None:
    svc = service_factory(bank.path, tmp_path / "d", env={"GMEM_REDIS_URL": redis_server.url})
    http = httpx.Client(base_url=svc.url, headers=AUTH, timeout=10)
    wait_for(lambda: http.get("/readyz").json()["detail"]["redis"].startswith("up"), what="redis up")

    def insert(k: int) -> dict:
        r = http.post("/bank/snippets", json={"feature": [float(k + 1)] + [0.5] * (D - 1)})
        assert r.status_code == 201, r.text
        return r.json()

    expected = [(insert(k)["version"], "insert", N0 + k) for k in range(3)]
    wait_for(lambda: stream_events(redis_server) == expected, what="first events")

    redis_server.stop()
    for k in range(3, 8):
        start = time.perf_counter()
        out = insert(k)
        assert time.perf_counter() - start < 1.0, "a mutation waited for Redis"
        expected.append((out["version"], "insert", out["id"]))
    start = time.perf_counter()
    assert http.delete(f"/bank/snippets/{N0 + 1}").status_code == 204
    assert time.perf_counter() - start < 1.0
    expected.append((9, "delete", N0 + 1))
    r = http.post("/bank/interpolate", json={"i": 0, "j": N0, "alpha": 0.5})
    assert r.status_code == 201
    expected.append((10, "interpolate", r.json()["id"]))
    assert http.post("/bank/retrieve", json={"z": [0.1, 0.2], "pool": "user"}).status_code == 200
    detail = wait_for(
        lambda: (
            (d := http.get("/readyz")).status_code == 200
            and d.json()["detail"]["redis"].startswith("down")
            and d.json()["detail"]["redis"]
        ),
        what="readyz to report redis down",
    )
    assert "pending" in detail
    assert metric(svc.url, "gmem_bank_redis_up") == 0.0
    assert metric(svc.url, "gmem_bank_redis_publish_failures_total") >= 1
    assert metric(svc.url, "gmem_bank_redis_pending_events") >= 7

    # a fresh, empty Redis on the same port: the whole history is re-sent, in order
    redis_server.start().wait_port()
    wait_for(lambda: stream_events(redis_server) == expected, what="events after redis restart")
    wait_for(lambda: metric(svc.url, "gmem_bank_redis_up") == 1.0, what="redis_up metric")
    assert metric(svc.url, "gmem_bank_redis_pending_events") == 0
    expected.append((insert(99)["version"], "insert", N0 + 9))
    wait_for(lambda: stream_events(redis_server) == expected, what="events after recovery")
    http.close()


def test_unreachable_redis_from_the_start(bank: SyntheticBank, service_factory, tmp_path: Path) -> None:
    svc = service_factory(
        bank.path, tmp_path / "d", env={"GMEM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    r = httpx.post(f"{svc.url}/bank/snippets", json={"feature": [1.0] * D}, headers=AUTH, timeout=5)
    assert r.status_code == 201
    ready = httpx.get(f"{svc.url}/readyz").json()
    assert ready["status"] == "ready"
    wait_for(
        lambda: httpx.get(f"{svc.url}/readyz").json()["detail"]["redis"].startswith("down"),
        what="redis down in readyz",
    )
