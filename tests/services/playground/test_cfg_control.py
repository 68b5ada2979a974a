"""The page's cfg control follows GET /model ``trained_null``: real bank, two tiny generators (p_uncond 0 and
0.1), a playground over each, and chromium. The generator's 422 ``cfg_unsupported`` reaches the page's API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from gmem.launch import Process, free_port, playground_process, started
from tests.services.playground.conftest import Tab
from tests.support.model_fixtures import make_bank_model
from tests.support.services import start_bank, start_generator
from tests.support.sse import read_events

expect.set_options(timeout=60_000)


@pytest.fixture(scope="module")
def playgrounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Playground URL over a generator whose model has no trained null (``untrained``) or has one."""
    tmp: Path = tmp_path_factory.mktemp("cfg-control")
    procs: list[Process] = []
    try:
        procs.append(start_bank(tmp))
        urls = {}
        for name, p_uncond in (("untrained", 0.0), ("trained", 0.1)):
            model = make_bank_model(tmp / f"{name}.safetensors", p_uncond, f"tiny-{name}-null")
            procs.append(start_generator(tmp, procs[0].url, model=model))
            port = free_port()
            pg = playground_process(procs[0].url, procs[-1].url, tmp / f"playground-{name}.log", port)
            procs.append(started(pg, "/readyz"))
            urls[name] = pg.url
        yield urls
    finally:
        for p in reversed(procs):
            p.stop()


def run_events(url: str, body: dict) -> list[tuple[str, dict]]:
    r = httpx.post(url + "/api/runs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return read_events(url + r.json()["events"], timeout=60)


def test_status_reports_the_trained_null(playgrounds):
    for name, want in (("untrained", False), ("trained", True)):
        status = httpx.get(playgrounds[name] + "/api/status", timeout=30).json()
        assert status["generator"]["model"]["trained_null"] is want, status


def test_cfg_is_disabled_at_1_without_a_trained_null_and_generation_still_works(playgrounds, tab: Tab):
    page = tab.page
    page.goto(playgrounds["untrained"] + "/")
    expect(page.locator("#status")).to_have_attribute("data-generator", "ready")
    cfg = page.locator("#cfg")
    expect(cfg).to_be_disabled()
    expect(cfg).to_have_value("1")
    assert "p_uncond 0" in (cfg.get_attribute("title") or "")
    page.fill("#n", "2")
    page.click("#generate")
    expect(page.locator("#gallery img.sample")).to_have_count(2)
    expect(page.locator("#gen-message")).to_be_empty()
    assert tab.console_errors == []


def test_cfg_is_enabled_with_a_trained_null(playgrounds, tab: Tab):
    page = tab.page
    page.goto(playgrounds["trained"] + "/")
    expect(page.locator("#status")).to_have_attribute("data-generator", "ready")
    expect(page.locator("#cfg")).to_be_enabled()
    page.fill("#cfg", "2.5")
    page.fill("#n", "2")
    page.click("#generate")
    expect(page.locator("#gallery img.sample")).to_have_count(2)
    assert tab.console_errors == []


def test_the_generators_refusal_reaches_the_pages_api(playgrounds):
    body = {"n": 1, "seed": 3, "steps": 2, "cfg_scale": 2.0}
    r = httpx.post(playgrounds["untrained"] + "/api/generate", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "cfg_unsupported"
    assert "cfg_scale 2 is refused" in r.json()["error"]["message"]
    kind, done = run_events(playgrounds["untrained"], body)[-1]
    assert kind == "done" and done["status"] == "failed" and done["http_status"] == 422
    assert done["error"]["code"] == "cfg_unsupported"
    ok = httpx.post(playgrounds["trained"] + "/api/generate", json=body, timeout=60)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["images"]) == 1
