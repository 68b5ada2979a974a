"""The generator's HTTP layer agrees with the bank's: 500 envelope with request id, error conformance.

The app runs without its lifespan, so the model never loads and the bank is never called: what is
checked here is decided before either matters.
"""

from __future__ import annotations

import http.client
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.generator.app import create_app
from services.generator.runtime import read_model_facts
from services.generator.settings import GeneratorSettings
from tests.support.inprocess import serve_in_thread
from tests.support.rawhttp import connect, read_response
from tests.support.services import DEFAULT_MODEL


@pytest.fixture()
def app() -> FastAPI:
    settings = GeneratorSettings(model=str(DEFAULT_MODEL), bank_url="http://127.0.0.1:9")
    return create_app(settings, read_model_facts(DEFAULT_MODEL))


@pytest.fixture()
def client(app: FastAPI) -> TestClient:
    return TestClient(app)  # not entered: no lifespan, so no model load


def code_of(r) -> str:  # type: ignore[no-untyped-def]
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    return str(err["code"])


def test_an_unexpected_error_is_a_500_envelope_with_request_id_on_a_kept_connection(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(app.state.generator, "generate", broken)
    with serve_in_thread(app) as url:
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
        conn.request(
            "POST",
            "/generate",
            body=b'{"n": 1, "steps": 1}',
            headers={"Content-Type": "application/json", "X-Request-ID": "gen-boom-1"},
        )
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 500 and body["error"]["code"] == "internal_error"
        assert r.getheader("content-type") == "application/json"
        assert r.getheader("x-request-id") == "gen-boom-1" and "gen-boom-1" in body["error"]["message"]
        conn.request("GET", "/healthz")  # the same connection: not reset after the 500
        again = conn.getresponse()
        again.read()
        assert again.status == 200 and again.getheader("x-request-id")
        conn.close()


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"n": 1'])
def test_unreadable_json_is_422_invalid_request_like_the_bank(client: TestClient, body: bytes) -> None:
    r = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and code_of(r) == "invalid_request", r.text


def test_405_carries_allow_and_unknown_methods_get_the_envelope(client: TestClient, app: FastAPI) -> None:
    r = client.get("/generate")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and code_of(r) == "method_not_allowed"
    with serve_in_thread(app) as url, connect(int(url.rsplit(":", 1)[1])) as s:
        s.sendall(b"BREW /model HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_response(s)
    assert raw.status == 405 and raw.headers["allow"] == "GET" and raw.headers["x-request-id"]
    assert json.loads(raw.body)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "body",
    [
        {"n": "1"},
        {"n": True},
        {"seed": "7"},
        {"steps": 1.0},
        {"cfg_scale": False},
        {"snippet_ids": ["1"]},
        {"snippet": [True] * 128},
    ],
)
def test_no_lax_coercions(client: TestClient, body: dict) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 422 and code_of(r) == "invalid_request", r.text


def test_413_has_the_same_code_as_the_bank(client: TestClient) -> None:
    r = client.post("/generate", content=b" " * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and code_of(r) == "payload_too_large"


def test_openapi_examples_pass_validation(client: TestClient) -> None:
    examples = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["examples"]
    for example in examples:
        r = client.post("/generate", json=example)
        assert r.status_code == 503 and code_of(r) == "not_ready", (
            example,
            r.text,
        )  # valid; model not loaded


def test_trailing_slash_is_a_404_envelope_without_a_host_derived_location(client: TestClient) -> None:
    r = client.post("/generate/", json={}, headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404 and code_of(r) == "not_found"
    assert "location" not in r.headers
