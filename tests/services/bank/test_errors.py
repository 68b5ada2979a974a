"""Every bad input of the contract gets the right 4xx in the error envelope, never a 5xx."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.bank.app import create_app
from shared.errors import IncompatibleArtifacts
from tests.support.banks import N0, D, SyntheticBank
from tests.support.services import AUTH, settings_for

JSON = {"content-type": "application/json"}


def assert_error(r, status: int, code: str, says: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert says.lower() in body["error"]["message"].lower()


@pytest.mark.parametrize(
    "path, body, code",
    [
        ("/bank/snippets", {"feature": [0.1] * (D - 1)}, "dimension_mismatch"),
        ("/bank/project", {"feature": [0.1] * (D + 1)}, "dimension_mismatch"),
        ("/bank/search", {"feature": [0.1] * 3, "k": 2}, "dimension_mismatch"),
        ("/bank/search", {"snippet": [0.1] * 3, "k": 2}, "dimension_mismatch"),
        ("/bank/snippets", {"feature": [0.0] * D}, "zero_vector"),
        ("/bank/interpolate", {"i": 0, "j": 1, "alpha": 1.5}, "invalid_request"),
        ("/bank/interpolate", {"i": 0, "j": 1, "alpha": -0.01}, "invalid_request"),
        ("/bank/interpolate", {"i": 0, "j": 1, "alpha": 0.5, "method": "cubic"}, "invalid_request"),
        ("/bank/search", {"id": 1, "k": 0}, "invalid_request"),
        ("/bank/search", {"id": 1, "k": 1001}, "invalid_request"),
        ("/bank/search", {"id": 1, "feature": [0.1] * D, "k": 3}, "invalid_request"),
        ("/bank/search", {"k": 3}, "invalid_request"),
        ("/bank/retrieve", {}, "invalid_request"),
        ("/bank/retrieve", {"z": [1.0], "indices": [1]}, "invalid_request"),
        ("/bank/retrieve", {"z": []}, "invalid_request"),
        ("/bank/retrieve", {"indices": [-1]}, "invalid_request"),
        ("/bank/retrieve", {"indices": [1], "pool": "mine"}, "invalid_request"),
        ("/bank/retrieve", {"indices": [1], "encoding": "npy"}, "invalid_request"),
        ("/bank/retrieve", {"indices": [1], "extra": 1}, "invalid_request"),
    ],
)
def test_bad_json_values_are_422(client: TestClient, path: str, body: dict, code: str) -> None:
    assert_error(client.post(path, json=body, headers=AUTH), 422, code)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    "path, template",
    [
        ("/bank/retrieve", '{"z": [0.5, %s]}'),
        ("/bank/retrieve", '{"z": [[0.5], [%s]]}'),
        ("/bank/snippets", '{"feature": [%s' + ", 0.5" * (D - 1) + "]}"),
        ("/bank/project", '{"feature": [%s' + ", 0.5" * (D - 1) + "]}"),
        ("/bank/search", '{"snippet": [%s' + ", 0.5" * (D - 1) + '], "k": 3}'),
        ("/bank/interpolate", '{"i": 0, "j": 1, "alpha": %s}'),
    ],
)
def test_non_finite_numbers_are_rejected(client: TestClient, path: str, template: str, token: str) -> None:
    r = client.post(path, content=(template % token).encode(), headers={**AUTH, **JSON})
    assert r.status_code == 422, r.text
    assert "finite" in r.json()["error"]["message"] or "less than" in r.json()["error"]["message"]


def test_huge_but_finite_feature_is_normalised_not_overflowed(client: TestClient) -> None:
    small = client.post("/bank/project", json={"feature": [1.0] * D}).json()
    huge = client.post("/bank/project", json={"feature": [1e308] * D}).json()
    np.testing.assert_allclose(huge["coefficients"], small["coefficients"], rtol=1e-9)


def test_malformed_json_and_wrong_content_type(client: TestClient) -> None:
    assert_error(client.post("/bank/retrieve", content=b'{"z": [1,', headers=JSON), 422, "invalid_request")
    assert_error(
        client.post("/bank/snippets", content=b'{"feature": ', headers={**AUTH, **JSON}),
        422,
        "invalid_request",
    )
    assert_error(
        client.post("/bank/snippets", content=b"feature=1", headers={**AUTH, "content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "application/json",
    )
    assert_error(client.post("/bank/retrieve", content=b"[1, 2]", headers=JSON), 422, "invalid_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/bank/retrieve", b'{"z": [0.5]}'),
        ("/bank/search", b'{"id": 0}'),
        ("/bank/interpolate", b'{"i": 0, "j": 1, "alpha": 0.5}'),
    ],
)
def test_json_routes_say_when_the_body_is_not_sent_as_json(
    client: TestClient, path: str, body: bytes
) -> None:
    # Regression: `curl -d` (form-urlencoded) got 422 "Input should be a valid dictionary", not what to do.
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert_error(
        client.post(path, content=body, headers={**AUTH, **form}),
        415,
        "unsupported_media_type",
        "application/json",
    )
    assert client.post(path, content=body, headers={**AUTH, **JSON}).status_code in (200, 201)


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert_error(client.get(f"/bank/snippets/{N0}"), 404, "unknown_snippet", f"snippet id {N0}")
    assert_error(client.post("/bank/retrieve", json={"indices": [0, N0 + 5]}), 404, "unknown_snippet")
    assert_error(client.post("/bank/search", json={"id": 10**9, "k": 3}), 404, "unknown_snippet")
    assert_error(
        client.post("/bank/interpolate", json={"i": 0, "j": N0, "alpha": 0.5}, headers=AUTH),
        404,
        "unknown_snippet",
    )
    assert_error(client.delete(f"/bank/snippets/{N0 + 3}", headers=AUTH), 404, "unknown_snippet")
    assert_error(client.get("/bank/snippets/-1"), 422, "invalid_request")
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.put("/bank"), 405, "method_not_allowed")


def test_base_delete_is_409(client: TestClient) -> None:
    assert_error(client.delete("/bank/snippets/3", headers=AUTH), 409, "base_snippet_immutable", "immutable")
    assert client.get("/bank").json()["version"] == 0


def test_auth_missing_wrong_and_unconfigured(client: TestClient, bank: SyntheticBank, tmp_path: Path) -> None:
    body = {"feature": [0.1] * D}
    r = client.post("/bank/snippets", json=body)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_error(
        client.post("/bank/snippets", json=body, headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    assert_error(
        client.delete("/bank/snippets/3", headers={"Authorization": "Basic eDp5"}), 401, "unauthorized"
    )
    settings = settings_for(bank, tmp_path / "open").model_copy(update={"token": None})
    with TestClient(create_app(settings)) as open_client:
        assert_error(
            open_client.post("/bank/snippets", json=body, headers=AUTH),
            403,
            "mutations_disabled",
            "GMEM_BANK_TOKEN",
        )
        assert_error(
            open_client.post("/bank/interpolate", json={"i": 0, "j": 1, "alpha": 0.5}),
            403,
            "mutations_disabled",
        )
        assert open_client.post("/bank/retrieve", json={"indices": [1]}).status_code == 200  # reads stay open


def test_oversized_bodies_are_413(bank: SyntheticBank, tmp_path: Path) -> None:
    app = create_app(settings_for(bank, tmp_path / "d", max_body_bytes=8192, max_image_bytes=2048))
    with TestClient(app) as client:
        big = {"z": [0.25] * 3000}
        assert_error(client.post("/bank/retrieve", json=big), 413, "payload_too_large", "8192")

        def chunks():  # no Content-Length: the streamed size is checked too
            for _ in range(20):
                yield b" " * 1000

        r = client.post("/bank/retrieve", content=chunks(), headers=JSON)
        assert_error(r, 413, "payload_too_large")
        png = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            png, "PNG"
        )
        assert len(png.getvalue()) > 2048
        r = client.post(
            "/bank/snippets", files={"image": ("x.png", png.getvalue(), "image/png")}, headers=AUTH
        )
        assert_error(r, 413, "payload_too_large", "GMEM_BANK_MAX_IMAGE_BYTES")
        assert client.post("/bank/retrieve", json={"z": [0.25] * 10}).status_code == 200


def test_image_without_encoder_is_422_and_says_how_to_configure(client: TestClient) -> None:
    png = io.BytesIO()
    Image.new("L", (8, 8), 128).save(png, "PNG")
    r = client.post("/bank/snippets", files={"image": ("x.png", png.getvalue(), "image/png")}, headers=AUTH)
    assert_error(r, 422, "encoder_unavailable", "GMEM_BANK_ENCODER")
    assert client.post("/bank/snippets", json={"feature": [0.3] * D}, headers=AUTH).status_code == 201


def test_encoder_that_does_not_match_the_bank_is_refused_at_start(
    bank: SyntheticBank, tmp_path: Path
) -> None:
    with pytest.raises(IncompatibleArtifacts) as info:
        create_app(settings_for(bank, tmp_path / "e", encoder="gmem/mnist-cnn"))
    assert "gmem/mnist-cnn" in str(info.value) and "test/grey-4x6" in str(info.value)
