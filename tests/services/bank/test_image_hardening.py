"""Hostile and unusual images (issue: adversarial pass, items 1, 7 and 11).

Regressions, each failing on the code before this change:
- an extreme-aspect strip was resized by its short side (a 1,048-byte 1,000,000 x 1 PNG took the
  bank from 0.6 to 3.1 GB); now it is refused, and ``center_crop`` crops before it resizes;
- a LAB-mode TIFF gave a 500 (any PIL format was decoded); now only PNG, JPEG and WebP are, and every
  mode they decode to is converted, or refused with a 4xx;
- alpha was dropped, so a digit drawn only in the alpha channel projected like an all-white image;
  now it is composited onto the encoder's background (black for one-channel, MNIST-style encoders).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.bank.app import create_app
from services.bank.images import BLACK, WHITE, decode_image
from tests.services.bank.test_images import GreyPatchEncoder
from tests.support.banks import SyntheticBank
from tests.support.services import AUTH, settings_for


class OneChannelEncoder(GreyPatchEncoder):
    """The grey-patch encoder, declaring one channel like the embedded MNIST encoder does."""

    channels = 1


def encoded(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def digit() -> np.ndarray:
    """A white '1'-like stroke on black, 28 x 28 (MNIST's look)."""
    a = np.zeros((28, 28), dtype=np.uint8)
    a[4:24, 12:16] = 255
    a[20:24, 8:20] = 200
    return a


@pytest.fixture()
def grey_client(bank: SyntheticBank, tmp_path: Path):
    app = create_app(settings_for(bank, tmp_path / "d"), encoder=OneChannelEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    app.state.close()


def project(client: TestClient, data: bytes):
    return client.post("/bank/project", files={"image": ("x.png", data, "application/octet-stream")})


def test_extreme_aspect_strip_is_refused_before_any_resize(grey_client: TestClient) -> None:
    strip = encoded(Image.new("L", (1_000_000, 1), 255))
    assert len(strip) < 4000  # the 1,048-byte attack, give or take zlib's version
    r = project(grey_client, strip)
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "invalid_image" and "GMEM_BANK_MAX_IMAGE_ASPECT" in body["message"]
    ok = project(grey_client, encoded(Image.new("L", (80, 10), 255)))  # 8:1 is still allowed
    assert ok.status_code == 200, ok.text


def test_center_crop_never_resizes_the_long_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoders' crop: no intermediate image larger than the crop square (a spy on resize)."""
    from training.encoders.registry import center_crop

    sizes: list[tuple[int, int]] = []
    real = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *a: object, **kw: object) -> Image.Image:
        sizes.append(tuple(size))
        return real(self, size, *a, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = center_crop(Image.new("L", (20_000, 3), 7), 28)
    assert out.size == (28, 28)
    assert max(w * h for w, h in sizes) <= 28 * 28, sizes  # before: (186667, 28)
    # the middle is what is kept
    arr = np.zeros((10, 50), dtype=np.uint8)
    arr[:, 20:30] = 255
    mid = np.asarray(center_crop(Image.fromarray(arr), 10))
    assert mid.min() == 255


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "ICO", "PPM", "TGA"])
def test_formats_other_than_png_jpeg_webp_are_422(grey_client: TestClient, fmt: str) -> None:
    data = encoded(Image.fromarray(digit()).convert("RGB"), fmt)
    r = project(grey_client, data)
    assert r.status_code == 422, r.text
    assert "PNG, JPEG or WebP" in r.json()["error"]["message"]


def test_lab_tiff_is_a_clear_422_not_a_500(grey_client: TestClient) -> None:
    lab = Image.fromarray(np.stack([digit()] * 3, axis=-1), "RGB").convert("LAB")
    r = project(grey_client, encoded(lab, "TIFF"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_image"


def _mode_images() -> list[tuple[str, str, bytes]]:
    """Every mode PIL can write to the three formats, from the same picture."""
    base = Image.fromarray(np.stack([digit(), digit() // 2, 255 - digit()], axis=-1), "RGB")
    out = []
    for mode in (
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "I",
        "I;16",
        "I;16B",
        "F",
        "RGB",
        "RGBA",
        "RGBa",
        "La",
        "CMYK",
        "YCbCr",
        "HSV",
        "LAB",
    ):
        try:
            im = base.convert(mode) if mode not in ("I;16", "I;16B", "F") else base.convert("L").convert(mode)
        except (ValueError, OSError):
            continue
        for fmt in ("PNG", "JPEG", "WEBP"):
            try:
                out.append((mode, fmt, encoded(im, fmt)))
            except (OSError, ValueError, KeyError):
                continue
    return out


MODE_IMAGES = _mode_images()


@pytest.mark.parametrize(("mode", "fmt", "data"), MODE_IMAGES, ids=[f"{m}-{f}" for m, f, _ in MODE_IMAGES])
def test_every_mode_decodes_to_grey_or_rgb(mode: str, fmt: str, data: bytes) -> None:
    image = decode_image(data, 10**6, 8.0, BLACK)
    assert image.mode in ("L", "RGB") and image.size == (28, 28)


@pytest.mark.parametrize(("mode", "fmt", "data"), MODE_IMAGES, ids=[f"{m}-{f}" for m, f, _ in MODE_IMAGES])
def test_every_mode_gets_an_answer_not_a_500(
    grey_client: TestClient, mode: str, fmt: str, data: bytes
) -> None:
    r = project(grey_client, data)
    assert r.status_code == 200, (mode, fmt, r.status_code, r.text)


def test_16_bit_grey_is_scaled_to_8_bits(grey_client: TestClient) -> None:
    png16 = encoded(Image.fromarray(digit().astype(np.uint16) * 257))
    assert (
        project(grey_client, png16).json() == project(grey_client, encoded(Image.fromarray(digit()))).json()
    )


def test_digit_drawn_in_the_alpha_channel_projects_like_the_digit(grey_client: TestClient) -> None:
    """Canvas-style RGBA: white everywhere, the strokes only in alpha. Before: like an all-white image."""
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = digit()
    by_alpha = project(grey_client, encoded(Image.fromarray(rgba, "RGBA"))).json()
    plain = project(grey_client, encoded(Image.fromarray(digit()))).json()
    white = project(grey_client, encoded(Image.new("L", (28, 28), 255))).json()
    np.testing.assert_allclose(by_alpha["coefficients"], plain["coefficients"], rtol=1e-12, atol=1e-12)
    assert not np.allclose(by_alpha["coefficients"], white["coefficients"])
    la = np.stack([np.full((28, 28), 255, np.uint8), digit()], axis=-1)
    by_la = project(grey_client, encoded(Image.fromarray(la, "LA"))).json()
    np.testing.assert_allclose(by_la["coefficients"], plain["coefficients"], rtol=1e-12, atol=1e-12)


def test_a_drawing_invisible_on_the_background_is_refused(grey_client: TestClient) -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)  # black strokes in alpha, onto a black background
    rgba[..., 3] = digit()
    r = project(grey_client, encoded(Image.fromarray(rgba, "RGBA")))
    assert r.status_code == 422 and "alpha" in r.json()["error"]["message"], r.text


def test_rgb_encoders_composite_onto_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = np.asarray(decode_image(encoded(Image.fromarray(rgba, "RGBA")), 100, 8.0, WHITE))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)


def test_image_requests_leave_the_bank_unchanged(grey_client: TestClient) -> None:
    for data in (encoded(Image.new("L", (1_000_000, 1))), b"GIF89a" + b"\0" * 20):
        r = grey_client.post("/bank/snippets", files={"image": ("x.png", data, "image/png")}, headers=AUTH)
        assert r.status_code == 422
    assert grey_client.get("/bank").json()["version"] == 0
