"""POST /generate through the real bank and generator processes (CONTRACT.md section 6)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from shared.bankmath import cdf_index
from tests.support.services import DEFAULT_MODEL
from training.files.modelfile import config_from_json, read_model_meta
from training.flow.generate import initial_noise
from training.network.config import GMemConfig


def post(url: str, body: dict, timeout: float = 60.0) -> httpx.Response:
    return httpx.post(url + "/generate", json=body, timeout=timeout)


def model_config() -> GMemConfig:
    return config_from_json(read_model_meta(DEFAULT_MODEL))


def test_images_are_pngs_of_the_models_resolution_and_channels(gen_url: str):
    info = httpx.get(gen_url + "/model").json()
    r = post(gen_url, {"n": 3, "seed": 11, "steps": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 3 and body["seed"] == 11 and body["steps"] == 2
    assert body["model"] == info["id"] and body["sampler"] == info["default_sampler"]
    assert isinstance(body["bank_version"], int) and body["elapsed_ms"] > 0
    for b64 in body["images"]:
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(raw))
        img.load()
        assert img.size == (info["resolution"], info["resolution"])
        assert len(img.getbands()) == info["channels"]


def test_cdf_index_of_each_seeds_noise_picks_the_snippet(stack, gen_url: str):
    """Without snippets, image k's index is cdf_index(initial_noise(seed + k), pool size) (paper 4.3)."""
    bank = httpx.get(stack.bank.url + "/bank").json()
    cfg = model_config()
    body = post(gen_url, {"n": 4, "seed": 1234, "steps": 1}).json()
    expected = [cdf_index(initial_noise(cfg, 1234 + k).numpy(), bank["base_size"]) for k in range(4)]
    assert body["indices"] == expected


def test_same_request_same_png_bytes(gen_url: str):
    req = {"n": 2, "seed": 77, "steps": 3, "sampler": "euler"}
    a, b = post(gen_url, req).json(), post(gen_url, req).json()
    assert a["images"] == b["images"] and a["indices"] == b["indices"]
    other = post(gen_url, {**req, "seed": 78}).json()
    assert other["images"][0] == a["images"][1]  # image k uses seed + k
    assert other["images"][0] != a["images"][0]


def test_a_request_batched_with_concurrent_others_gives_the_same_bytes_as_alone(gen_url: str):
    alone = post(gen_url, {"n": 1, "seed": 500, "steps": 2, "sampler": "euler"}).json()
    pinned_alone = post(
        gen_url, {"n": 3, "seed": 9, "steps": 2, "sampler": "euler", "snippet_ids": [5]}
    ).json()
    reqs = [
        {"n": n, "seed": 600 + 10 * i, "steps": 2, "sampler": "euler"} for i, n in enumerate([2, 1, 3, 1, 2])
    ]
    reqs.insert(2, {"n": 1, "seed": 500, "steps": 2, "sampler": "euler"})
    reqs.insert(4, {"n": 3, "seed": 9, "steps": 2, "sampler": "euler", "snippet_ids": [5]})

    def shared_forwards() -> float:
        # Forwards that ran the rows of more than one job (the histogram's count minus its le=1 bucket).
        single = _metric(gen_url, 'gmem_generator_batch_jobs_bucket{le="1.0"}')
        return _metric(gen_url, "gmem_generator_batch_jobs_count") - single

    before = shared_forwards()
    with ThreadPoolExecutor(len(reqs)) as pool:
        out = list(pool.map(lambda r: post(gen_url, r).json(), reqs))
    assert shared_forwards() > before, "concurrent requests never shared a forward"
    assert out[2]["images"] == alone["images"]
    assert out[4]["images"] == pinned_alone["images"]


def test_pinned_snippet_ids_one_for_all_or_one_per_image(gen_url: str):
    one = post(gen_url, {"n": 3, "seed": 3, "steps": 2, "snippet_ids": [42]}).json()
    assert one["indices"] == [42, 42, 42]
    each = post(gen_url, {"n": 3, "seed": 3, "steps": 2, "snippet_ids": [42, 7, 42]}).json()
    assert each["indices"] == [42, 7, 42]
    assert each["images"][0] == one["images"][0] and each["images"][2] == one["images"][2]
    assert each["images"][1] != one["images"][1]


def test_raw_snippet_is_normalised_and_steers(stack, gen_url: str):
    row = np.array(httpx.get(stack.bank.url + "/bank/snippets/42").json()["snippet"], dtype=np.float64)
    a = post(gen_url, {"n": 1, "seed": 4, "steps": 2, "snippet": row.tolist()}).json()
    b = post(gen_url, {"n": 1, "seed": 4, "steps": 2, "snippet": (3.0 * row).tolist()}).json()
    assert a["indices"] == [None] and a["bank_version"] is None
    assert a["images"] == b["images"]
    other = post(gen_url, {"n": 1, "seed": 4, "steps": 2, "snippet": (-row).tolist()}).json()
    assert other["images"] != a["images"]


def test_seed_is_drawn_and_returned_when_absent(gen_url: str):
    first = post(gen_url, {"n": 1, "steps": 2}).json()
    again = post(gen_url, {"n": 1, "steps": 2, "seed": first["seed"]}).json()
    assert again["images"] == first["images"]


def test_model_endpoint_describes_the_network(gen_url: str):
    info = httpx.get(gen_url + "/model").json()
    cfg = model_config()
    assert info["feature_dim"] == cfg.snippet_dim and info["channels"] == cfg.in_channels
    assert info["resolution"] == cfg.input_size and info["default_steps"] == cfg.sampling.steps
    assert set(info["samplers"]) == {"sde", "euler", "heun"} and info["parameters"] > 0


def test_health_ready_and_metrics(gen_url: str):
    assert httpx.get(gen_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gen_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    post(gen_url, {"n": 2, "seed": 1, "steps": 2})
    text = httpx.get(gen_url + "/metrics").text
    for name in (
        "gmem_generator_requests_total",
        "gmem_generator_images_total",
        "gmem_generator_request_seconds",
        "gmem_generator_batch_size",
        "gmem_generator_queue_size",
        "gmem_generator_forward_seconds_per_nfe_count",
    ):
        assert name in text
    assert _metric(gen_url, "gmem_generator_forward_seconds_per_nfe_count") >= 2


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_leaves_while_queued_costs_no_compute(gen_url: str):
    """A request whose client disconnected is dropped before its forward (metric dropped_requests)."""
    import threading
    import time

    dropped = _metric(gen_url, "gmem_generator_dropped_requests_total")
    started = _metric(gen_url, "gmem_generator_inference_duration_seconds_count")
    cancelled = _metric(gen_url, 'gmem_generator_jobs_total{status="cancelled"}')
    busy = threading.Thread(target=post, args=(gen_url, {"n": 8, "seed": 1, "steps": 32, "sampler": "heun"}))
    busy.start()
    time.sleep(0.3)  # the busy job fills the batch cap (8 images); the next request queues behind it
    try:
        post(gen_url, {"n": 3, "seed": 2, "steps": 31, "sampler": "heun"}, timeout=0.2)
        raise AssertionError("the request should have outlived its 0.2 s client timeout")
    except httpx.TimeoutException:
        pass
    busy.join()
    deadline = time.monotonic() + 10
    while _metric(gen_url, "gmem_generator_dropped_requests_total") == dropped:
        assert time.monotonic() < deadline, "the abandoned request was never dropped"
        time.sleep(0.05)
    # Only the busy job ever started; the abandoned one ended cancelled without a step.
    assert _metric(gen_url, "gmem_generator_inference_duration_seconds_count") == started + 1
    assert _metric(gen_url, 'gmem_generator_jobs_total{status="cancelled"}') == cancelled + 1
