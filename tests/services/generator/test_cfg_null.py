"""CFG needs a null the network saw: real generator processes on two tiny models over the session bank.

One model file records p_uncond 0 (no training step ever zeroed a whole snippet, so the zero null of CFG is
an input it never saw), the other p_uncond 0.1. Every route that takes ``cfg_scale`` refuses CFG against
the zero null on the first with 422 ``cfg_unsupported``, before any work; a negative snippet (a real
snippet as the null) or ``cfg_scale`` 1 stays allowed; the second model guides as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from gmem.launch import Process as Proc
from tests.support.model_fixtures import make_bank_model
from tests.support.services import ROOT, Stack, start_generator

T2S_FILE = ROOT / "artifacts" / "mnist-5k" / "t2s.safetensors"  # fits any dimension-128 gmem/mnist-ssl model
BASE = {"n": 2, "seed": 5, "steps": 3, "sampler": "euler", "snippet_ids": [12]}
PROMPT = {"prompt": "a handwritten seven", "n": 1, "seed": 5, "steps": 3, "sampler": "euler"}
CONTRACT_MODEL_FIELDS = {
    "id",
    "parameters",
    "resolution",
    "channels",
    "feature_dim",
    "default_steps",
    "samplers",
}


@pytest.fixture(scope="module")
def gens(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    """``untrained``: p_uncond 0; ``trained``: p_uncond 0.1; both with the embedded T2S adapter."""
    tmp = tmp_path_factory.mktemp("cfgnull")
    procs: dict[str, Proc] = {}
    try:
        for name, p_uncond in (("untrained", 0.0), ("trained", 0.1)):
            model = make_bank_model(tmp / f"{name}.safetensors", p_uncond, f"tiny-{name}-null")
            procs[name] = start_generator(tmp, stack.bank.url, model=model, GMEM_GENERATOR_T2S=str(T2S_FILE))
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def generate(url: str, body: dict) -> dict:
    r = post(url, "/generate", body)
    assert r.status_code == 200, r.text
    return r.json()


def run_job(url: str, body: dict) -> dict:
    r = post(url, "/jobs", body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        info = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if info["status"] in ("succeeded", "failed", "cancelled"):
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info['status']}"
        time.sleep(0.02)


def metric(url: str, name: str) -> float:
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith((name + " ", name + "{")))


def assert_cfg_unsupported(r: httpx.Response, scale: str) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "cfg_unsupported"
    message: str = body["error"]["message"]
    assert f"cfg_scale {scale} is refused" in message and "tiny-untrained-null" in message
    assert "p_uncond 0" in message and "send cfg_scale 1" in message
    return message


def test_get_model_says_whether_the_null_was_trained_and_keeps_the_contract_fields(gens):
    for name, want in (("untrained", False), ("trained", True)):
        info = httpx.get(gens[name].url + "/model", timeout=10).json()
        assert CONTRACT_MODEL_FIELDS <= set(info) and info["feature_dim"] == 128
        assert info["trained_null"] is want, (name, info)


def test_cfg_against_an_untrained_null_is_422_on_every_route_before_any_work(gens):
    url = gens["untrained"].url
    calls, jobs = metric(url, "gmem_generator_bank_calls_total"), metric(url, "gmem_generator_jobs_total")
    for scale, text in ((2.0, "2"), (0.0, "0"), (1.5, "1.5")):
        message = assert_cfg_unsupported(post(url, "/generate", {**BASE, "cfg_scale": scale}), text)
        assert "negative_snippet_id or negative_snippet" in message
    assert_cfg_unsupported(post(url, "/jobs", {**BASE, "cfg_scale": 2.0, "preview_every": 1}), "2")
    assert_cfg_unsupported(post(url, "/generate", {**PROMPT, "cfg_scale": 3.0}), "3")
    # The OpenAI route takes no negative snippet, so it names the route that does.
    message = assert_cfg_unsupported(post(url, "/v1/images/generations", {**PROMPT, "cfg_scale": 3.0}), "3")
    assert "POST /generate with the prompt and negative_snippet_id" in message
    assert metric(url, "gmem_generator_bank_calls_total") == calls  # refused before the bank was asked
    assert metric(url, "gmem_generator_jobs_total") == jobs  # and before any job ran


def test_cfg_scale_1_is_unchanged_on_the_untrained_null(gens):
    url = gens["untrained"].url
    plain = generate(url, BASE)
    assert generate(url, {**BASE, "cfg_scale": 1.0})["images"] == plain["images"]
    assert run_job(url, {**BASE, "cfg_scale": 1.0})["result"]["images"] == plain["images"]
    r = post(url, "/v1/images/generations", {**PROMPT, "cfg_scale": 1.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1


def test_a_negative_snippet_replaces_the_untrained_null_and_guides(gens, stack: Stack):
    url = gens["untrained"].url
    plain = generate(url, BASE)
    by_id = generate(url, {**BASE, "cfg_scale": 2.0, "negative_snippet_id": 40})
    assert by_id["images"] != plain["images"]  # guidance ran, against snippet 40
    raw = httpx.post(stack.bank.url + "/bank/retrieve", json={"indices": [40], "pool": "all"}, timeout=10)
    assert raw.status_code == 200, raw.text
    vector = raw.json()["snippets"][0]
    by_vector = generate(url, {**BASE, "cfg_scale": 2.0, "negative_snippet": vector})
    # The same null as a raw vector (re-normalised by the generator, so equal up to the last bits).
    assert by_vector["images"] != plain["images"] and by_vector["indices"] == by_id["indices"]
    job = run_job(url, {**BASE, "cfg_scale": 2.0, "negative_snippet_id": 40})
    assert job["status"] == "succeeded" and job["result"]["images"] == by_id["images"]
    prompted = generate(url, {**PROMPT, "cfg_scale": 3.0, "negative_snippet_id": 40})
    assert len(prompted["images"]) == 1


def test_a_trained_null_guides_against_zero_on_every_route(gens):
    url = gens["trained"].url
    plain = generate(url, BASE)
    guided = generate(url, {**BASE, "cfg_scale": 2.0})
    assert guided["images"] != plain["images"]
    assert generate(url, {**BASE, "cfg_scale": 2.0, "negative_snippet_id": 40})["images"] != guided["images"]
    job = run_job(url, {**BASE, "cfg_scale": 2.0})
    assert job["status"] == "succeeded" and job["result"]["images"] == guided["images"]
    r = post(url, "/v1/images/generations", {**PROMPT, "cfg_scale": 3.0})
    assert r.status_code == 200, r.text
    unguided = post(url, "/v1/images/generations", PROMPT).json()
    assert r.json()["data"][0]["b64_json"] != unguided["data"][0]["b64_json"]
