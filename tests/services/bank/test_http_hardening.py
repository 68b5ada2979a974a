"""The bank's HTTP layer against hostile or odd clients, on real sockets.

Slow clients and connection limits, the token checked before a body is read, the request id on
every response (the 500 included), error conformance with the generator, weak or missing tokens.

Slow clients are bounded: a handful of connections on loopback, timeouts of one or two seconds.
"""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gmem.launch import Process
from services.bank.app import create_app
from services.bank.settings import BankSettings
from shared.http.middleware import JsonFormatter
from tests.support.banks import D, SyntheticBank
from tests.support.inprocess import serve_in_thread
from tests.support.rawhttp import closed_by_peer, connect, read_response
from tests.support.services import AUTH, DEFAULT_BANK, ROOT, TOKEN, settings_for

Factory = Callable[..., Process]


def envelope_code(body: bytes) -> str:
    err = json.loads(body)["error"]
    assert set(err) == {"code", "message"} and err["message"]
    return str(err["code"])


# -- item 4: slow clients and connection limits ---------------------------------------------------
def test_slow_headers_are_cut_off_and_slow_bodies_get_408(
    bank: SyntheticBank, service_factory: Factory, tmp_path: Path
) -> None:
    svc = service_factory(
        bank.path, tmp_path / "d", env={"GMEM_BANK_HEADER_TIMEOUT_S": "1", "GMEM_BANK_BODY_TIMEOUT_S": "1"}
    )
    slow = [connect(svc.port) for _ in range(3)]
    for s in slow:
        s.sendall(b"GET /bank HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    assert all(closed_by_peer(s, within_s=4.0) for s in slow), "a slow-header connection was kept open"
    with connect(svc.port) as s:
        s.sendall(
            b"POST /bank/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"indices": '
        )
        r = read_response(s)
    assert r.status == 408 and envelope_code(r.body) == "request_timeout" and r.headers["x-request-id"]
    assert httpx.get(f"{svc.url}/bank", timeout=5).status_code == 200  # still serving


def test_connections_over_the_limit_get_a_503_envelope(
    bank: SyntheticBank, service_factory: Factory, tmp_path: Path
) -> None:
    svc = service_factory(
        bank.path, tmp_path / "d", env={"GMEM_BANK_MAX_CONNECTIONS": "3", "GMEM_BANK_HEADER_TIMEOUT_S": "2"}
    )
    held = [connect(svc.port) for _ in range(3)]
    time.sleep(0.2)
    with connect(svc.port) as s:
        s.sendall(b"GET /bank HTTP/1.1\r\nHost: x\r\n\r\n")
        r = read_response(s)
    assert r.status == 503 and envelope_code(r.body) == "too_many_connections" and r.headers["retry-after"]
    for s in held:
        s.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{svc.url}/bank", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the bank did not serve again after the held connections closed"
        time.sleep(0.1)


# -- item 5: the token before the body --------------------------------------------------------------
def test_a_mutation_without_token_is_refused_before_its_body_is_read(
    bank: SyntheticBank, service_factory: Factory, tmp_path: Path
) -> None:
    svc = service_factory(bank.path, tmp_path / "d")
    with connect(svc.port, timeout=3.0) as s:
        # 60 MiB announced, not one byte sent: an answer can only come from a check before the body.
        s.sendall(
            b"POST /bank/snippets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 62914560\r\n\r\n"
        )
        r = read_response(s)
    assert r.status == 401 and envelope_code(r.body) == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer") and r.headers["connection"] == "close"
    with connect(svc.port, timeout=3.0) as s:
        s.sendall(
            b"POST /bank/snippets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer wrong-token-0123456789\r\nContent-Length: 62914560\r\n\r\n"
        )
        assert read_response(s).status == 401
    ok = httpx.post(f"{svc.url}/bank/snippets", json={"feature": [1.0] * D}, headers=AUTH, timeout=10)
    assert ok.status_code == 201  # with the token, the body is read as before


# -- item 7: every response carries the request id, the 500 included --------------------------------
class _Lines(logging.Handler):
    """Formats each record at emit time, while the request's context (its id) is current."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture()
def log_lines() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("gmem")
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(before)


def test_an_unexpected_error_is_a_500_envelope_with_request_id_on_a_kept_connection(
    bank: SyntheticBank, tmp_path: Path, log_lines: _Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings_for(bank, tmp_path / "d"))
    store = app.state.bank.store

    def broken_view() -> None:
        raise RuntimeError("injected fault")

    try:
        with serve_in_thread(app) as url:
            port = int(url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            monkeypatch.setattr(store, "view", broken_view)
            conn.request("GET", "/bank", headers={"X-Request-ID": "boom-1"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 500 and envelope_code(body) == "internal_error"
            assert (
                r.getheader("x-request-id") == "boom-1" and "boom-1" in json.loads(body)["error"]["message"]
            )
            monkeypatch.undo()
            conn.request("GET", "/bank")  # the same connection: not reset after the 500
            again = conn.getresponse()
            again.read()
            assert again.status == 200
            conn.close()
    finally:
        app.state.close()
    tracebacks = [line for line in log_lines.lines if "exc" in line]
    assert tracebacks and all(line["request_id"] == "boom-1" for line in tracebacks)
    assert "injected fault" in tracebacks[0]["exc"]


# -- item 13: conformance ---------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"indices": [1'])
def test_unreadable_json_is_422_invalid_request(client: TestClient, body: bytes) -> None:
    r = client.post("/bank/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/bank/snippets/3")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "DELETE, GET"
    assert client.patch("/bank").headers["allow"] == "GET"
    assert client.head("/bank").status_code == 405  # so HEAD is rightly absent from Allow


def test_unknown_method_gets_the_envelope_from_the_server(bank: SyntheticBank, tmp_path: Path) -> None:
    app = create_app(settings_for(bank, tmp_path / "d"))
    try:
        with serve_in_thread(app) as url:
            with connect(int(url.rsplit(":", 1)[1])) as s:
                s.sendall(b"BREW /bank HTTP/1.1\r\nHost: x\r\n\r\n")
                r = read_response(s)
            assert r.status == 405 and envelope_code(r.body) == "method_not_allowed" and r.headers["allow"]
            with connect(int(url.rsplit(":", 1)[1])) as s:
                s.sendall(b"GET /bank HTTP/1.1\r\nHost x\r\n\r\n")  # not HTTP: answered by the server itself
                r = read_response(s)
            assert r.status == 400 and envelope_code(r.body) == "bad_request"
    finally:
        app.state.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/bank/interpolate", {"i": 0, "j": 1, "alpha": False}),
        ("/bank/interpolate", {"i": "0", "j": 1, "alpha": 0.5}),
        ("/bank/search", {"id": 1, "k": "3"}),
        ("/bank/search", {"id": True, "k": 3}),
        ("/bank/retrieve", {"indices": ["1"]}),
        ("/bank/retrieve", {"z": [True, 0.5]}),
        ("/bank/project", {"feature": ["0.5"] * D}),
    ],
)
def test_no_lax_coercions(client: TestClient, path: str, body: dict) -> None:
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert client.get("/bank").json()["version"] == 0


def test_openapi_request_examples_are_valid_for_the_embedded_bank(tmp_path: Path) -> None:
    app = create_app(BankSettings(factors=DEFAULT_BANK, data_dir=tmp_path / "d", token=TOKEN))
    try:
        with TestClient(app) as client:
            spec = client.get("/openapi.json").json()
            components = spec["components"]["schemas"]
            feature_body = spec["paths"]["/bank/project"]["post"]["requestBody"]["content"][
                "application/json"
            ]
            schemas = {**components, "FeatureInput": feature_body["schema"]}  # inline: JSON or multipart
            tried = 0
            for path, name in [
                ("/bank/project", "FeatureInput"),
                ("/bank/search", "SearchRequest"),
                ("/bank/retrieve", "RetrieveRequest"),
                ("/bank/snippets", "FeatureInput"),
            ]:
                for example in schemas[name]["examples"]:
                    r = client.post(path, json=example, headers=AUTH)
                    assert r.status_code in (200, 201), (path, example, r.text)
                    tried += 1
            assert tried >= 6
    finally:
        app.state.close()


def test_trailing_slash_is_a_404_envelope_without_a_host_derived_location(client: TestClient) -> None:
    r = client.get("/bank/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "location" not in r.headers and "evil.example" not in r.text


# -- item 14: weak or missing tokens ----------------------------------------------------------------
def test_short_tokens_are_refused_and_a_missing_token_is_warned_about(
    bank: SyntheticBank, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        BankSettings(factors=bank.path, data_dir=tmp_path / "a", token="short-secret")
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "GMEM_BANK_TOKEN": "123456789012345",
        "COLUMNS": "400",
        "NO_COLOR": "1",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.bank",
            "--factors",
            str(bank.path),
            "--data-dir",
            str(tmp_path / "b"),
            "--port",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "15 characters" in run.stderr and "at least 16" in run.stderr, run.stderr
    assert not (tmp_path / "b").exists()  # refused before touching the data dir


def test_a_bank_without_token_warns_at_start(
    bank: SyntheticBank, service_factory: Factory, tmp_path: Path
) -> None:
    svc = service_factory(bank.path, tmp_path / "d", env={"GMEM_BANK_TOKEN": ""})
    warnings = [json.loads(line) for line in svc.logs().splitlines() if line.startswith("{")]
    assert any(w["level"] == "warning" and "GMEM_BANK_TOKEN is not set" in w["msg"] for w in warnings)
