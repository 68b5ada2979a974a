"""The bank process stopped: 503 bank_unavailable with Retry-After, not ready; back when it returns."""

from __future__ import annotations

import time

import httpx

from shared.client import GeneratorClient, RetryPolicy, Unavailable
from tests.support.services import free_port, start_bank, start_generator


def test_bank_down_gives_503_with_retry_after_then_recovers(tmp_path):
    bank = start_bank(tmp_path)
    gen = start_generator(tmp_path, bank.url)
    try:
        ok = httpx.post(gen.url + "/generate", json={"n": 1, "seed": 3, "steps": 2}, timeout=30).json()
        # A fresh data dir has no run-time snippets: the user pool is empty.
        empty = httpx.post(gen.url + "/generate", json={"n": 1, "steps": 2, "pool": "user"}, timeout=30)
        assert empty.status_code == 409 and empty.json()["error"]["code"] == "empty_pool"
        bank.stop()
        for body in ({"n": 1, "seed": 3, "steps": 2}, {"n": 1, "seed": 3, "steps": 2, "snippet_ids": [4]}):
            r = httpx.post(gen.url + "/generate", json=body, timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "bank_unavailable"
            assert int(r.headers["retry-after"]) >= 1
        ready = httpx.get(gen.url + "/readyz")
        assert ready.status_code == 503 and "bank unreachable" in ready.json()["detail"]["bank"]
        # A raw snippet needs no bank: still served.
        r = httpx.post(gen.url + "/generate", json={"n": 1, "seed": 3, "steps": 2, "snippet": [1.0] * 128})
        assert r.status_code == 200

        # The typed client retries a 503 (idempotent call) and then raises Unavailable.
        before = _count_503(gen.url)
        with GeneratorClient(
            gen.url, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
        ) as client:
            try:
                client.generate(n=1, seed=3, steps=2)
                raise AssertionError("expected Unavailable")
            except Unavailable as exc:
                assert exc.status == 503 and exc.code == "bank_unavailable" and exc.retry_after >= 1
        assert _count_503(gen.url) - before == 3

        bank = start_bank(tmp_path, port=bank.port, data_dir=tmp_path / f"bank-data-{bank.port}")
        deadline = time.monotonic() + 20
        while httpx.get(gen.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "generator never became ready after the bank returned"
            time.sleep(0.2)
        again = httpx.post(gen.url + "/generate", json={"n": 1, "seed": 3, "steps": 2}, timeout=30).json()
        assert again["images"] == ok["images"]
    finally:
        gen.stop()
        bank.stop()


def _count_503(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if (
            line.startswith("gmem_generator_requests_total")
            and 'route="/generate"' in line
            and '"503"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_generator_starts_not_ready_without_a_bank_and_becomes_ready_when_it_appears(tmp_path):
    port = free_port()
    gen = start_generator(
        tmp_path, f"http://127.0.0.1:{port}", wait_ready=False, GMEM_GENERATOR_BANK_START_WAIT_S="0"
    )
    bank = None
    try:
        r = httpx.get(gen.url + "/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        bank = start_bank(tmp_path, port=port)
        gen.wait_http("/readyz", timeout=30)
    finally:
        gen.stop()
        if bank:
            bank.stop()


def test_a_bank_that_accepts_but_never_answers_gives_503_after_the_timeout(tmp_path):
    """A hung bank (TCP accepted, no HTTP answer) is reported like a dead one, within the bank timeout."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    gen = start_generator(
        tmp_path,
        url,
        wait_ready=False,
        GMEM_GENERATOR_BANK_START_WAIT_S="0",
        GMEM_GENERATOR_BANK_TIMEOUT_S="1",
        GMEM_GENERATOR_BANK_RETRIES="1",
    )
    try:
        deadline = time.monotonic() + 60
        while "loading" in httpx.get(gen.url + "/readyz", timeout=10).json()["detail"]["model"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        t0 = time.monotonic()
        r = httpx.post(gen.url + "/generate", json={"n": 1, "seed": 1, "steps": 1}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "bank_unavailable", r.text
        assert "timed out" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert time.monotonic() - t0 < 10
    finally:
        gen.stop()
        stop.set()
        for s in held:
            s.close()
        listener.close()
