"""Contract details found in an audit: clear messages for malformed input, /model before load, CLI help.

The app runs in-process without its lifespan (TestClient not entered), so the model never loads
and the bank is never called: what is checked here is decided before either matters.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from services.generator.app import create_app
from services.generator.runtime import read_model_facts
from services.generator.settings import GeneratorSettings
from tests.support.services import DEFAULT_MODEL, ROOT


@pytest.fixture()
def client() -> TestClient:
    settings = GeneratorSettings(model=str(DEFAULT_MODEL), bank_url="http://127.0.0.1:9")
    app = create_app(settings, read_model_facts(DEFAULT_MODEL))
    return TestClient(app)  # not entered: no lifespan, so no model load


def error_of(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    return r.json()["error"]["message"]


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_cfg_scale_is_422_saying_finite(client, raw):
    r = client.post(
        "/generate", content=b'{"cfg_scale": ' + raw + b"}", headers={"content-type": "application/json"}
    )
    assert "finite" in error_of(r, 422, "invalid_request")


def test_malformed_json_is_422_saying_so(client):
    r = client.post("/generate", content=b'{"n": 1,', headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(r, 422, "invalid_request")


def test_unknown_path_and_method_name_what_exists(client):
    msg = error_of(client.get("/nope"), 404, "not_found")
    assert "/nope" in msg and "POST /generate" in msg
    msg = error_of(client.get("/generate"), 405, "method_not_allowed")
    assert "GET" in msg and "POST /generate" in msg


def test_model_info_before_the_weights_load_is_503_not_zero_parameters(client):
    r = client.get("/model")
    assert "loading" in error_of(r, 503, "not_ready")
    assert r.headers["retry-after"]


def test_cli_help_names_the_environment_variables():
    out = subprocess.run(
        [sys.executable, "-m", "services.generator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    for name in (
        "GMEM_GENERATOR_MODEL",
        "GMEM_BANK_URL",
        "GMEM_GENERATOR_HOST",
        "GMEM_GENERATOR_PORT",
        "8002",
    ):
        assert name in out.stdout


@pytest.mark.parametrize(
    ("body", "says"),
    [({"n": 10_000}, "GMEM_GENERATOR_MAX_N"), ({"steps": 10_000}, "GMEM_GENERATOR_MAX_STEPS")],
)
def test_over_the_maxima_is_422_even_while_the_model_loads(client, body, says):
    # CONTRACT.md section 6: n, steps over the configured maxima: 422 (not a 503 "retry shortly").
    r = client.post("/generate", json=body)
    assert says in error_of(r, 422, "limit_exceeded")


def test_a_valid_request_while_the_model_loads_is_503_with_retry_after(client):
    r = client.post("/generate", json={"n": 1, "steps": 1})
    assert "loading" in error_of(r, 503, "not_ready")
    assert r.headers["retry-after"]


def test_readyz_against_a_hanging_bank_answers_within_one_bank_timeout():
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []  # accepted and never answered: the bank "times out"
    threading.Thread(target=lambda: held.extend(iter(lambda: server.accept()[0], None)), daemon=True).start()
    try:
        settings = GeneratorSettings(
            model=str(DEFAULT_MODEL),
            bank_url=f"http://127.0.0.1:{server.getsockname()[1]}",
            bank_timeout_s=0.5,
            bank_retries=4,
            ready_cache_s=0,
        )
        with TestClient(create_app(settings, read_model_facts(DEFAULT_MODEL))) as client:
            t0 = time.monotonic()
            r = client.get("/readyz")
            took = time.monotonic() - t0
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "did not answer" in r.json()["detail"]["bank"]
        assert took < 1.5, took  # not 4 attempts x 0.5 s
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_the_shipped_model_file_config_has_every_section_5_item():
    from training.files.modelfile import read_model_meta

    cfg = read_model_meta(DEFAULT_MODEL)
    for key in (
        "name",
        "depth",
        "hidden_size",
        "patch_size",
        "input_size",
        "in_channels",
        "snippet_dim",
        "encoder",
        "space",
        "normalization",
        "default_sampler",
        "default_steps",
    ):
        assert key in cfg, key
    assert cfg["normalization"]["space"] == cfg["space"] == "pixel"
