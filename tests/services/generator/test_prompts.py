"""Prompts through real processes: the T2S adapter on POST /generate and the OpenAI-compatible route."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from gmem.launch import Process as Proc
from shared.factors import load_factors
from tests.support.services import DEFAULT_BANK, GENERATOR_ENV, ROOT, start_bank, start_generator
from training.t2s.adapter import Adapter, load_t2s, save_t2s

from .test_steering import classify

T2S_FILE = ROOT / "artifacts" / "mnist-5k" / "t2s.safetensors"
STEPS = 20


@pytest.fixture(scope="module")
def t2s_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("t2s")
    bank = start_bank(tmp)
    procs: list[Proc] = [bank]
    try:
        procs.append(
            start_generator(tmp, bank.url, GMEM_GENERATOR_T2S=str(T2S_FILE), GMEM_GENERATOR_T2S_NEAREST_K="8")
        )
        yield procs[-1].url
    finally:
        for p in reversed(procs):
            p.stop()


def post(url: str, body: dict, path: str = "/generate") -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def test_prompt_draws_the_named_digit_and_repeats_bytes(t2s_url: str):
    body = {"n": 8, "seed": 11, "steps": STEPS, "prompt": "a handwritten seven"}
    first, second = post(t2s_url, body), post(t2s_url, body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["images"] == second.json()["images"]
    assert out["indices"] == [None] * 8 and out["bank_version"] is None
    assert out["prompt"] == {
        "text_encoder": "gmem/mnist-text",
        "tokens": 3,
        "max_tokens": 16,
        "truncated": False,
        "read": "a handwritten seven",
        "mode": "adapter",
    }
    hits = int((classify(out["images"]) == 7).sum())
    assert hits >= 6, hits
    other = post(t2s_url, {**body, "prompt": "a handwritten zero"}).json()
    assert other["images"] != out["images"]
    assert int((classify(other["images"]) == 0).sum()) >= 6


def test_a_prompt_job_gives_the_bytes_of_generate(t2s_url: str):
    body = {"prompt": "a handwritten three", "n": 2, "seed": 21, "steps": 8}
    sync = post(t2s_url, body)
    assert sync.status_code == 200, sync.text
    made = post(t2s_url, body, "/jobs")
    assert made.status_code == 202, made.text
    job = made.json()
    for _ in range(600):
        job = httpx.get(f"{t2s_url}/jobs/{job['id']}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["result"]["images"] == sync.json()["images"]
    assert job["result"]["prompt"] == sync.json()["prompt"]


def test_nearest_mode_draws_bank_snippets_of_the_digit(t2s_url: str):
    body = {"n": 6, "seed": 3, "steps": STEPS, "prompt": "the digit 3", "prompt_mode": "nearest"}
    r = post(t2s_url, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["prompt"]["mode"] == "nearest" and isinstance(out["bank_version"], int)
    labels = np.asarray(load_factors(DEFAULT_BANK).labels)
    assert all(isinstance(i, int) for i in out["indices"])
    assert (labels[out["indices"]] == 3).all(), out["indices"]
    # Each image's noise picks its neighbour: a 6-image request spreads over several of the 8.
    assert len(set(out["indices"])) >= 2
    again = post(t2s_url, body).json()
    assert again["images"] == out["images"] and again["indices"] == out["indices"]


def test_prompt_over_the_token_limit_is_truncated_and_reported(t2s_url: str):
    words = ["seven"] + ["very"] * 60 + ["zero"]
    r = post(t2s_url, {"n": 1, "seed": 0, "steps": 2, "prompt": " ".join(words)})
    assert r.status_code == 200, r.text
    info = r.json()["prompt"]
    assert info["truncated"] is True and info["tokens"] == 62 and info["max_tokens"] == 16
    assert info["read"].split() == words[:16]


def test_a_prompt_without_known_words_still_draws(t2s_url: str):
    r = post(t2s_url, {"n": 1, "seed": 0, "steps": 2, "prompt": "七 🙂 \u0000"})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"]["tokens"] == 0 and r.json()["prompt"]["truncated"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": "a seven", "snippet_ids": [1]},
        {"prompt": "a seven", "prompt_mode": "closest"},
        {"prompt": 7},
    ],
)
def test_bad_prompt_requests_are_422(t2s_url: str, body: dict):
    r = post(t2s_url, {"n": 1, "steps": 2, **body})
    assert r.status_code == 422, r.text
    assert set(r.json()["error"]) == {"code", "message"}


def test_prompt_without_an_adapter_is_422(gen_url: str):
    for path, body in (
        ("/generate", {"prompt": "a seven", "steps": 2}),
        ("/v1/images/generations", {"prompt": "a seven", "steps": 2}),
    ):
        r = post(gen_url, body, path)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "prompt_unavailable" and "GMEM_GENERATOR_T2S" in err["message"]


def test_openai_client_gets_the_same_images_as_generate(t2s_url: str):
    client = openai.OpenAI(base_url=t2s_url + "/v1", api_key="unused-locally", max_retries=0, timeout=120)
    res = client.images.generate(
        prompt="a handwritten four",
        n=2,
        size="32x32",
        response_format="b64_json",
        extra_body={"seed": 5, "steps": STEPS},
    )
    assert len(res.data) == 2 and res.created > 0
    pngs = [base64.b64decode(d.b64_json) for d in res.data]
    assert all(Image.open(io.BytesIO(p)).size == (32, 32) for p in pngs)
    assert res.data[0].revised_prompt == "a handwritten four"
    direct = post(t2s_url, {"n": 2, "seed": 5, "steps": STEPS, "prompt": "a handwritten four"}).json()
    assert [d.b64_json for d in res.data] == direct["images"]


def test_openai_client_sees_clear_errors_for_unserved_options(t2s_url: str):
    client = openai.OpenAI(base_url=t2s_url + "/v1", api_key="unused-locally", max_retries=0, timeout=60)
    with pytest.raises(openai.UnprocessableEntityError) as size_err:
        client.images.generate(prompt="a four", size="1024x1024", extra_body={"steps": 2})
    assert "32x32" in str(size_err.value)
    with pytest.raises(openai.UnprocessableEntityError) as url_err:
        client.images.generate(prompt="a four", response_format="url", extra_body={"steps": 2})
    assert "b64_json" in str(url_err.value)
    r = post(t2s_url, {"prompt": "a four", "size": "64x64"}, "/v1/images/generations")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_size"
    r = post(t2s_url, {"prompt": "a four", "response_format": "url"}, "/v1/images/generations")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_response_format"


def test_openai_shapes_without_the_client(t2s_url: str):
    r = post(
        t2s_url,
        {
            "prompt": "a " + "long " * 40 + "nine",
            "n": 1,
            "size": "auto",
            "seed": 2,
            "steps": 2,
            "model": "dall-e-2",
        },
        "/v1/images/generations",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"created", "data"} and isinstance(body["created"], int)
    assert set(body["data"][0]) >= {"b64_json"} and len(body["data"][0]["revised_prompt"].split()) == 16


def test_cli_generate_with_a_prompt(t2s_url: str, tmp_path: Path):
    argv = [
        sys.executable,
        "-m",
        "gmem",
        "--generator-url",
        t2s_url,
        "--json",
        "generate",
        "--n",
        "2",
        "--seed",
        "4",
        "--steps",
        "2",
        "--prompt",
        "a handwritten two",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["prompt"]["read"] == "a handwritten two" and len(data["images"]) == 2
    assert all(Path(p).is_file() for p in data["images"])


def test_an_adapter_for_another_snippet_space_is_refused_at_start(stack, tmp_path: Path):
    wrong = tmp_path / "t2s-64.safetensors"
    t2s = load_t2s(T2S_FILE)
    save_t2s(wrong, Adapter(t2s.meta.text_dim, 64), t2s.text, "gmem/mnist-cnn", {})
    argv = [sys.executable, "-m", "services.generator", "--bank-url", stack.bank.url, "--port", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **GENERATOR_ENV, "GMEM_GENERATOR_T2S": str(wrong)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "dimension 64" in done.stderr and "dimension 128" in done.stderr and "train-t2s" in done.stderr
    env["GMEM_GENERATOR_T2S"] = str(tmp_path / "missing.safetensors")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "missing.safetensors: no such file" in done.stderr
