"""POST /bank/retrieve with `label`: the noise-CDF index within that label's base rows; /bank says labels
exist."""

from __future__ import annotations

import math

import numpy as np
from fastapi.testclient import TestClient

from services.bank.app import create_app
from tests.support.banks import N0, SyntheticBank, bank_labels, make_bank
from tests.support.services import settings_for


def _cdf_index(z: np.ndarray, n: int) -> int:
    # Written from CONTRACT.md section 2, independently of shared.bankmath.
    zeta = float(z.sum()) / math.sqrt(z.size)
    return min(int(math.floor(0.5 * (1.0 + math.erf(zeta / math.sqrt(2.0))) * n)), n - 1)


def test_label_draws_within_that_label_by_the_cdf_index(client: TestClient, bank: SyntheticBank) -> None:
    assert client.get("/bank").json()["labels"] is True
    rng = np.random.default_rng(3)
    zs = rng.normal(size=(12, 20))
    rows = np.flatnonzero(bank_labels(N0) == 4)
    r = client.post("/bank/retrieve", json={"z": zs.tolist(), "label": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pool_size"] == rows.size
    assert body["indices"] == [int(rows[_cdf_index(z, rows.size)]) for z in zs]
    assert all(bank_labels(N0)[i] == 4 for i in body["indices"])
    got = np.asarray(body["snippets"])
    want = bank.C[body["indices"]] @ bank.B.T + bank.mu
    assert np.allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    # pool "all" is the same set: run-time snippets carry no label.
    same = client.post("/bank/retrieve", json={"z": zs.tolist(), "label": 4, "pool": "all"}).json()
    assert same["indices"] == body["indices"]


def test_label_errors_are_422_with_the_envelope(client: TestClient) -> None:
    cases = [
        ({"z": [0.1, 0.2], "label": 11}, "labels are 0, 1"),
        ({"z": [0.1, 0.2], "label": 3, "pool": "user"}, "carry no label"),
        ({"indices": [1], "label": 3}, "give it with z"),
        ({"z": [0.1], "label": -1}, "label"),
    ]
    for body, words in cases:
        r = client.post("/bank/retrieve", json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert set(err) >= {"code", "message"} and words in err["message"], (body, err)


def test_unlabelled_bank_refuses_label(tmp_path) -> None:
    plain = make_bank(tmp_path / "plain.safetensors", labels=False)
    app = create_app(settings_for(plain, tmp_path / "data"))
    with TestClient(app) as c:
        assert c.get("/bank").json()["labels"] is False
        r = c.post("/bank/retrieve", json={"z": [0.5, 0.1], "label": 0})
        assert r.status_code == 422 and "no labels" in r.json()["error"]["message"]
        assert c.get("/bank").json()["version"] == 0
    app.state.close()
