"""Bad requests get a typed 4xx envelope that says what was wrong; never a 5xx."""

from __future__ import annotations

import httpx
import pytest


def post(url: str, body, **kw) -> httpx.Response:
    return httpx.post(url + "/generate", json=body, timeout=30.0, **kw)


def assert_error(r: httpx.Response, status: int, code: str | None = None, says: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    if code:
        assert err["code"] == code
    if says:
        assert says in err["message"]
    return err


def test_unknown_snippet_id_is_404(gen_url: str):
    assert_error(post(gen_url, {"n": 1, "steps": 1, "snippet_ids": [10_000_000]}), 404, "unknown_snippet")


def test_n_over_the_configured_maximum_is_422(gen_url: str):
    assert_error(post(gen_url, {"n": 9, "steps": 1}), 422, "limit_exceeded", "GMEM_GENERATOR_MAX_N")


def test_steps_over_the_configured_maximum_is_422(gen_url: str):
    assert_error(post(gen_url, {"n": 1, "steps": 33}), 422, "limit_exceeded", "GMEM_GENERATOR_MAX_STEPS")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"snippet": [1.0, 2.0]}, "dimension_mismatch"),
        ({"snippet": [0.0] * 128}, "zero_vector"),
        ({"n": 0}, "invalid_request"),
        ({"n": 2, "snippet_ids": [1, 2, 3]}, "invalid_request"),
        ({"snippet_ids": [1], "snippet": [1.0] * 128}, "invalid_request"),
        ({"sampler": "ddim"}, "invalid_request"),
        ({"pool": "nope"}, "invalid_request"),
        ({"seed": -1}, "invalid_request"),
        ({"cfg_scale": 1e9}, "invalid_request"),
        ({"snippet_ids": [-3]}, "invalid_request"),
        ({"unknown_field": 1}, "invalid_request"),
    ],
)
def test_invalid_bodies_are_422_with_a_message(gen_url: str, body: dict, code: str):
    assert_error(post(gen_url, {"steps": 1, **body}), 422, code)


def test_nan_in_a_snippet_is_422(gen_url: str):
    r = httpx.post(
        gen_url + "/generate",
        content=b'{"steps": 1, "snippet": [NaN' + b", 1.0" * 127 + b"]}",
        headers={"content-type": "application/json"},
    )
    assert_error(r, 422)


def test_malformed_json_is_422(gen_url: str):
    r = httpx.post(gen_url + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request")


def test_oversized_body_is_413(gen_url: str):
    big = {"snippet": [0.5] * 400_000}
    assert_error(post(gen_url, big), 413, "payload_too_large")


def test_unknown_route_is_a_404_envelope(gen_url: str):
    assert_error(httpx.get(gen_url + "/nope"), 404, "not_found")
