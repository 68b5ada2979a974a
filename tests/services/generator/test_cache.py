"""The Redis-fed pinned-snippet cache: hits, eviction on delete, and Redis down = cache off."""

from __future__ import annotations

import time

import httpx
import numpy as np

from shared.client import BankClient
from tests.support.services import TOKEN, start_redis


def metric(url: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def generate(url: str, ids: list[int]) -> httpx.Response:
    return httpx.post(url + "/generate", json={"n": 1, "seed": 1, "steps": 1, "snippet_ids": ids}, timeout=30)


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_pinned_ids_are_cached_and_a_deleted_snippet_is_never_served(stack):
    gen = stack.generator.url
    with BankClient(stack.bank.url, token=TOKEN) as bank:
        feature = np.random.default_rng(5).normal(size=128)
        created = bank.insert_feature(feature, name="cache-test")
        first = generate(gen, [created.id])
        assert first.status_code == 200, first.text
        hits = metric(gen, "gmem_generator_snippet_cache_total", 'event="hit"')
        second = generate(gen, [created.id])
        assert second.json()["images"] == first.json()["images"]
        assert metric(gen, "gmem_generator_snippet_cache_total", 'event="hit"') == hits + 1

        evicted = metric(gen, "gmem_generator_snippet_cache_total", 'event="evicted"')
        bank.delete(created.id)
        # The bank publishes the delete to gmem:bank:events right after acknowledging it;
        # once it is on the stream the generator must answer 404, never the cached snippet.
        wait_for(lambda: generate(gen, [created.id]).status_code == 404, what="404 after delete")
        assert metric(gen, "gmem_generator_snippet_cache_total", 'event="evicted"') == evicted + 1
        for _ in range(3):
            assert generate(gen, [created.id]).status_code == 404


def test_redis_down_disables_the_cache_and_generation_goes_on(stack, tmp_path):
    gen = stack.generator.url
    assert generate(gen, [11]).status_code == 200
    assert metric(gen, "gmem_generator_snippet_cache_enabled") == 1
    stack.redis.stop(kill=True)
    try:
        wait_for(lambda: metric(gen, "gmem_generator_snippet_cache_enabled") == 0, what="cache disabled")
        misses = metric(gen, "gmem_generator_snippet_cache_total", 'event="hit"')
        r = generate(gen, [11])
        assert r.status_code == 200
        assert (
            metric(gen, "gmem_generator_snippet_cache_total", 'event="hit"') == misses
        )  # served by the bank
        assert "disabled" in httpx.get(gen + "/readyz").json()["detail"]["cache"]
    finally:
        stack.redis = start_redis(tmp_path, port=stack.redis.port)
    wait_for(lambda: metric(gen, "gmem_generator_snippet_cache_enabled") == 1, what="cache re-enabled")
    assert generate(gen, [11]).status_code == 200
