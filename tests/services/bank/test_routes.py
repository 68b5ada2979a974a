"""Routes over ASGI against the paper's definitions (CONTRACT.md sections 2 and 4)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient

from shared import bankmath
from tests.support.banks import ENCODER_ID, N0, D, R, SyntheticBank, bank_labels
from tests.support.services import AUTH


def reconstruct64(bank: SyntheticBank, c: np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.float64) @ bank.B.astype(np.float64).T + bank.mu


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def insert(client: TestClient, feature: np.ndarray, name: str | None = None) -> dict:
    r = client.post("/bank/snippets", json={"feature": feature.tolist(), "name": name}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def test_health_ready_and_bank_info(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"]["redis"] == "disabled"
    info = client.get("/bank").json()
    assert info == {
        "version": 0,
        "size": N0,
        "base_size": N0,
        "feature_dim": D,
        "rank": R,
        "encoder": ENCODER_ID,
        "format_version": "1",
        "labels": True,
        "source": "synthetic",
    }
    assert client.get("/healthz").headers["x-request-id"]
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_retrieve_by_noise_follows_the_cdf_index(client: TestClient, bank: SyntheticBank) -> None:
    rng = np.random.default_rng(1)
    zs = rng.normal(size=(16, 3 * 8 * 8))
    r = client.post("/bank/retrieve", json={"z": zs.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = [bankmath.cdf_index(z, N0) for z in zs]
    assert body["indices"] == expected and body["pool_size"] == N0 and body["version"] == 0
    snippets = np.asarray(body["snippets"], dtype=np.float32)
    assert snippets.shape == (16, D)
    np.testing.assert_allclose(np.linalg.norm(snippets, axis=1), 1.0, atol=1e-6)
    want = unit(reconstruct64(bank, bank.C[expected]))
    np.testing.assert_allclose(snippets, want, atol=1e-5)
    single = client.post("/bank/retrieve", json={"z": zs[3].tolist()}).json()
    assert single["indices"] == [expected[3]] and np.allclose(single["snippets"][0], snippets[3])


def test_b64f32_matches_json(client: TestClient) -> None:
    ids = [0, 5, 299, 5]
    as_json = client.post("/bank/retrieve", json={"indices": ids}).json()
    as_b64 = client.post("/bank/retrieve", json={"indices": ids, "encoding": "b64f32"}).json()
    raw = np.frombuffer(base64.b64decode(as_b64["snippets"]), dtype="<f4").reshape(len(ids), D)
    assert as_b64["indices"] == ids
    np.testing.assert_array_equal(raw, np.asarray(as_json["snippets"], dtype=np.float32))


def test_pools_user_and_all(client: TestClient, bank: SyntheticBank) -> None:
    assert (
        client.post("/bank/retrieve", json={"z": [0.0], "pool": "user"}).json()["error"]["code"]
        == "empty_pool"
    )
    a = insert(client, bank.snippets[10] + 0.1)["id"]
    b = insert(client, bank.snippets[20] - 0.1)["id"]
    assert (a, b) == (N0, N0 + 1)
    # zeta = 0 -> u = 0.5 -> index floor(n/2)
    user = client.post("/bank/retrieve", json={"z": [0.0, 0.0], "pool": "user"}).json()
    assert user["pool_size"] == 2 and user["indices"] == [b] and user["version"] == 2
    big = client.post("/bank/retrieve", json={"z": [50.0], "pool": "all"}).json()  # u ~ 1 -> last of pool
    assert big["pool_size"] == N0 + 2 and big["indices"] == [b]
    assert client.post("/bank/retrieve", json={"indices": [a], "pool": "base"}).status_code == 404
    assert client.post("/bank/retrieve", json={"indices": [0], "pool": "user"}).status_code == 404
    both = client.post("/bank/retrieve", json={"indices": [a, 0], "pool": "all"}).json()
    assert both["indices"] == [a, 0]


def test_insert_projects_per_eq10_and_get_returns_it(client: TestClient, bank: SyntheticBank) -> None:
    f = np.random.default_rng(2).normal(size=D) * 3.0
    out = insert(client, f, name="my style")
    proj = bankmath.project(f, bank.mu, bank.B, bank.S)
    assert out["version"] == 1 and np.isclose(out["residual"], proj.residual[0], rtol=1e-9)
    got = client.get(f"/bank/snippets/{out['id']}").json()
    assert got["kind"] == "inserted" and got["name"] == "my style" and got["parents"] == []
    assert got["alpha"] is None and got["label"] is None and got["created_at"].endswith("Z")
    np.testing.assert_allclose(got["coefficients"], proj.coefficients[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["snippet"], unit(reconstruct64(bank, proj.coefficients[0])), atol=1e-5)
    assert client.get("/bank").json()["size"] == N0 + 1


def test_base_snippet_info(client: TestClient, bank: SyntheticBank) -> None:
    labels = bank_labels(N0)
    for i in (0, 3, 14):
        got = client.get(f"/bank/snippets/{i}").json()
        assert got["kind"] == "base" and got["created_at"] is None
        assert got["label"] == (None if labels[i] < 0 else int(labels[i]))
        np.testing.assert_allclose(got["coefficients"], bank.C[i], rtol=1e-6)


def test_project_follows_eq10_and_stores_nothing(client: TestClient, bank: SyntheticBank) -> None:
    g = unit(reconstruct64(bank, bank.C[7]))
    for f in (g, bank.snippets[7] * 4.0):
        r = client.post("/bank/project", json={"feature": f.tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        want = bankmath.project(f, bank.mu, bank.B, bank.S)
        np.testing.assert_allclose(body["coefficients"], want.coefficients[0], rtol=1e-9, atol=1e-12)
        assert np.isclose(body["residual"], want.residual[0], rtol=1e-9)
        np.testing.assert_allclose(
            body["snippet"], unit(reconstruct64(bank, want.coefficients[0])), atol=1e-5
        )
    # a source row of the bank projects onto its own coefficients (eq. 10 inverts the factorisation)
    np.testing.assert_allclose(body["coefficients"], bank.C[7], rtol=1e-4, atol=1e-5)
    assert client.get("/bank").json()["version"] == 0


def test_interpolate_endpoints_and_midpoint(client: TestClient, bank: SyntheticBank) -> None:
    one = client.post("/bank/interpolate", json={"i": 4, "j": 9, "alpha": 1.0}, headers=AUTH).json()
    zero = client.post(
        "/bank/interpolate", json={"i": 4, "j": 9, "alpha": 0.0, "method": "slerp"}, headers=AUTH
    ).json()
    mid = client.post(
        "/bank/interpolate", json={"i": 4, "j": one["id"], "alpha": 0.25, "name": "q"}, headers=AUTH
    ).json()
    assert [one["version"], zero["version"], mid["version"]] == [1, 2, 3]
    c1 = client.get(f"/bank/snippets/{one['id']}").json()
    c0 = client.get(f"/bank/snippets/{zero['id']}").json()
    cm = client.get(f"/bank/snippets/{mid['id']}").json()
    np.testing.assert_allclose(c1["coefficients"], bank.C[4], rtol=1e-6)
    np.testing.assert_allclose(c0["coefficients"], bank.C[9], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        cm["coefficients"],
        0.25 * bank.C[4].astype(np.float64) + 0.75 * np.asarray(c1["coefficients"]),
        rtol=1e-6,
    )
    assert cm["parents"] == [4, one["id"]] and cm["alpha"] == 0.25 and cm["kind"] == "interpolated"
    np.testing.assert_allclose(c1["snippet"], client.get("/bank/snippets/4").json()["snippet"], atol=1e-6)


def test_search_matches_brute_force_over_reconstructions(client: TestClient, bank: SyntheticBank) -> None:
    new = insert(client, bank.snippets[33] + 0.01)["id"]
    allc = np.vstack([bank.C.astype(np.float64), client.get(f"/bank/snippets/{new}").json()["coefficients"]])
    recon = reconstruct64(bank, allc)
    ids = np.arange(N0 + 1)
    ids[-1] = new
    for query in ({"id": 33}, {"id": new}, {"feature": (bank.snippets[100] * 5).tolist()}):
        r = client.post("/bank/search", json={**query, "k": 6})
        assert r.status_code == 200, r.text
        got = r.json()["neighbors"]
        if "id" in query:
            q = recon[list(ids).index(query["id"])]
        else:
            q = reconstruct64(
                bank, bankmath.project(query["feature"], bank.mu, bank.B, bank.S).coefficients[0]
            )
        dist = np.linalg.norm(recon - q, axis=1)
        order = np.argsort(dist, kind="stable")[:6]
        assert [n["id"] for n in got] == [int(ids[o]) for o in order]
        np.testing.assert_allclose([n["distance"] for n in got], dist[order], atol=1e-3)
        assert [n["distance"] for n in got] == sorted(n["distance"] for n in got)
    user_only = client.post("/bank/search", json={"id": 33, "k": 5, "pool": "user"}).json()["neighbors"]
    assert [n["id"] for n in user_only] == [new]


def test_delete_removes_from_pools_search_and_ids_are_not_reused(
    client: TestClient, bank: SyntheticBank
) -> None:
    a = insert(client, bank.snippets[1])["id"]
    b = insert(client, bank.snippets[2])["id"]
    assert client.delete(f"/bank/snippets/{a}", headers=AUTH).status_code == 204
    assert client.get(f"/bank/snippets/{a}").status_code == 404
    assert client.delete(f"/bank/snippets/{a}", headers=AUTH).status_code == 404
    user = client.post("/bank/retrieve", json={"z": [0.0], "pool": "user"}).json()
    assert user["pool_size"] == 1 and user["indices"] == [b] and user["version"] == 3
    hits = client.post("/bank/search", json={"feature": bank.snippets[1].tolist(), "k": 50}).json()[
        "neighbors"
    ]
    assert a not in [h["id"] for h in hits]
    assert (
        client.post("/bank/interpolate", json={"i": a, "j": 0, "alpha": 0.5}, headers=AUTH).status_code == 404
    )
    c = insert(client, bank.snippets[3])["id"]
    assert c == b + 1
    assert client.get("/bank").json() == {**client.get("/bank").json(), "version": 4, "size": N0 + 2}


def test_metrics_expose_requests_size_version_and_fsync(client: TestClient, bank: SyntheticBank) -> None:
    insert(client, bank.snippets[5])
    client.get("/bank/snippets/999999")
    text = client.get("/metrics").text
    assert 'gmem_bank_size{pool="all"} 301.0' in text and "gmem_bank_version 1.0" in text
    assert 'gmem_bank_requests_total{method="GET",route="/bank/snippets/{id}",status="404"} 1.0' in text
    assert 'gmem_bank_request_seconds_count{method="POST",route="/bank/snippets"} 1.0' in text
    fsync = [line for line in text.splitlines() if line.startswith("gmem_bank_last_fsync_seconds ")]
    assert fsync and float(fsync[0].split()[1]) > 0
    assert "gmem_bank_fsync_seconds_count 1.0" in text


def test_openapi_documents_models_examples_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/bank/retrieve", "/bank/snippets", "/bank/interpolate", "/bank/search", "/bank/project"):
        assert path in paths
    retrieve = paths["/bank/retrieve"]["post"]
    assert "noise-CDF" in retrieve["description"] and "snippet ids" in retrieve["description"]
    assert retrieve["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorEnvelope"
    )
    content = paths["/bank/snippets"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    schemas = spec["components"]["schemas"]
    assert schemas["InterpolateRequest"]["properties"]["alpha"]["maximum"] == 1.0
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 1000
    assert "examples" in schemas["RetrieveRequest"]


def test_concurrent_readers_see_consistent_versions_over_http(
    client: TestClient, bank: SyntheticBank
) -> None:
    """Only inserts happen, so in every response pool_size('user') must equal its version, and
    versions seen by one reader never go back."""
    import threading

    stop = threading.Event()
    problems: list[str] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        last = 0
        while not stop.is_set():
            r = client.post(
                "/bank/retrieve",
                json={"z": rng.normal(size=(2, 8)).tolist(), "pool": "all", "encoding": "b64f32"},
            )
            body = r.json()
            if r.status_code != 200 or body["pool_size"] != N0 + body["version"] or body["version"] < last:
                problems.append(r.text[:200])
            if any(i >= N0 + body["version"] for i in body["indices"]):
                problems.append(f"index beyond version {body['version']}: {body['indices']}")
            last = body["version"]

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    versions = [insert(client, bank.snippets[k % N0] + 0.01 * k)["version"] for k in range(40)]
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert versions == list(range(1, 41))  # strictly increasing, one per mutation
    assert not problems, problems[:3]


def test_a_snippet_is_the_same_bytes_in_every_batch_and_route(
    client: TestClient, bank: SyntheticBank
) -> None:
    """Regression: batched retrieval rounded an id's snippet differently than a single retrieval (BLAS
    kernels differ by batch size), so generators batching requests got different images."""
    rng = np.random.default_rng(5)
    f = rng.standard_normal(D)
    projected = client.post("/bank/project", json={"feature": f.tolist()}).json()["snippet"]
    sid = insert(client, f)["id"]
    ids = [3, sid, 0, *range(10, 40), N0 - 1]
    batch = client.post("/bank/retrieve", json={"indices": ids, "pool": "all"}).json()["snippets"]
    for i, row in zip(ids, batch, strict=True):
        assert (
            row == client.post("/bank/retrieve", json={"indices": [i], "pool": "all"}).json()["snippets"][0]
        )
        assert row == client.get(f"/bank/snippets/{i}").json()["snippet"]
    assert batch[1] == projected  # what /bank/project shows is what the insert stores
    i, j = 3, 11
    for method in ("linear", "slerp"):
        made = client.post(
            "/bank/interpolate", json={"i": i, "j": j, "alpha": 1, "method": method}, headers=AUTH
        )
        assert client.get(f"/bank/snippets/{made.json()['id']}").json()["snippet"] == batch[0]


def test_noise_of_a_256px_rgb_image_is_accepted(client: TestClient) -> None:
    """Regression: z was capped at 65536 entries (the feature limit), so a 3 x 256 x 256 noise tensor got
    422."""
    z = np.random.default_rng(2).standard_normal(3 * 256 * 256)
    r = client.post("/bank/retrieve", json={"z": z.tolist()})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["indices"] == [bankmath.cdf_index(z, N0)]


def test_slerp_route_stores_the_projection_of_the_slerp_of_the_unit_snippets(
    client: TestClient, bank: SyntheticBank
) -> None:
    """CONTRACT.md section 2: slerp runs on s_i, s_j (weight alpha on s_i), then eq. 10 projects it."""
    i, j, alpha = 5, 17, 0.35
    s_i, s_j = (
        np.asarray(client.get(f"/bank/snippets/{k}").json()["snippet"], dtype=np.float64) for k in (i, j)
    )
    theta = np.arccos(np.clip(s_i @ s_j, -1.0, 1.0))
    want = (np.sin(alpha * theta) * s_i + np.sin((1 - alpha) * theta) * s_j) / np.sin(theta)
    projected = client.post("/bank/project", json={"feature": want.tolist()}).json()
    made = client.post(
        "/bank/interpolate", json={"i": i, "j": j, "alpha": alpha, "method": "slerp"}, headers=AUTH
    )
    assert made.status_code == 201, made.text
    got = client.get(f"/bank/snippets/{made.json()['id']}").json()
    # float32 snippets on the wire: agreement to float32 round-off, not bit-equality.
    np.testing.assert_allclose(got["coefficients"], projected["coefficients"], atol=1e-4)
    np.testing.assert_allclose(got["snippet"], projected["snippet"], atol=1e-5)
