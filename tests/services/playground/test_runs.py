"""Generation runs over the playground's own API: progress events then ``done``, through whichever path the
running generator offers (its jobs API when /openapi.json lists /jobs, else POST /generate), and errors as
the JSON envelope with a 4xx.
"""

from __future__ import annotations

import base64

import httpx

from gmem.stack import LocalStack
from tests.services.playground.conftest import STEPS
from tests.support.sse import read_events


def events_of(url: str) -> list[tuple[str, dict]]:
    """The whole text/event-stream of a run, parsed here (not with the playground's own parser)."""
    return read_events(url)


def generator_has_jobs(stack: LocalStack) -> bool:
    return "/jobs" in httpx.get(stack.generator_url + "/openapi.json", timeout=10).json()["paths"]


def test_run_streams_progress_then_the_generators_images(stack: LocalStack) -> None:
    body = {"n": 3, "seed": 21, "steps": STEPS}
    start = httpx.post(stack.playground_url + "/api/runs", json=body, timeout=30)
    assert start.status_code == 202, start.text
    run = start.json()
    jobs = generator_has_jobs(stack)
    assert run["mode"] == ("jobs" if jobs else "direct")
    events = events_of(stack.playground_url + run["events"])
    names = [e for e, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and "progress" in names
    progress = [d for e, d in events if e == "progress"]
    if jobs:  # step by step, ending at the last step
        steps = [p["step"] for p in progress]
        assert steps == sorted(steps) and steps[-1] == STEPS
    else:  # no step count to report: one indeterminate event
        assert [p["step"] for p in progress] == [None]
    done = events[-1][1]
    assert done["status"] == "succeeded"
    result = done["result"]
    assert [im["seed"] for im in result["images"]] == [21, 22, 23]
    direct = httpx.post(stack.generator_url + "/generate", json=body, timeout=120).json()
    assert [base64.b64decode(im["png"]) for im in result["images"]] == [
        base64.b64decode(s) for s in direct["images"]
    ]
    assert [im["snippet_id"] for im in result["images"]] == direct["indices"]
    # A page that reconnects gets the same events again, from the start.
    assert events_of(stack.playground_url + run["events"]) == events


def test_failed_run_says_why(stack: LocalStack) -> None:
    run = httpx.post(
        stack.playground_url + "/api/runs", json={"n": 1, "steps": 2, "snippet_ids": [77777777]}, timeout=30
    ).json()
    done = events_of(stack.playground_url + run["events"])[-1]
    assert done[0] == "done" and done[1]["status"] == "failed"
    assert done[1]["http_status"] == 404 and "77777777" in done[1]["error"]["message"]


def test_bad_requests_get_the_envelope(stack: LocalStack) -> None:
    pg = stack.playground_url
    for resp, status in [
        (httpx.get(pg + "/api/runs/nope/events"), 404),
        (httpx.post(pg + "/api/runs", json={"n": 0}), 422),
        (
            httpx.post(pg + "/api/runs", content=b"{not json", headers={"content-type": "application/json"}),
            422,
        ),
        (httpx.post(pg + "/api/generate", json={"n": 2, "sampler": "magic"}), 422),
        (httpx.post(pg + "/api/interpolate", json={"a": 1, "b": 2, "alphas": [1.5]}), 422),
        (httpx.post(pg + "/api/interpolate", json={"a": 1, "b": 2, "points": 40}), 422),
        (httpx.delete(pg + "/api/snippets/0"), 409),  # a base row cannot be deleted
        (httpx.get(pg + "/api/sources/99999999.png"), 404),
        (httpx.get(pg + "/api/no-such-route"), 404),
        (httpx.post(pg + "/api/snippets", files={"image": ("empty.png", b"", "image/png")}), 422),
    ]:
        assert resp.status_code == status, (resp.request.url, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"code", "message"} and err["message"]
