"""The playground in a real browser: each view driven through the element ids of CONTRACT.md section 8,
against real bank, generator and playground processes. Images are decoded and checked against the model's
resolution; generations are compared byte for byte with the generator's own answer for the same request.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, expect

from gmem.stack import LocalStack
from tests.services.playground.conftest import STEPS, TOKEN, Tab
from training.data import load_dataset

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The suite shares 2 CPU cores: give the page time to render what the services return.
expect.set_options(timeout=60_000)


@pytest.fixture(scope="session")
def model(stack: LocalStack) -> dict:
    return httpx.get(stack.generator_url + "/model", timeout=10).json()


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out 7 of mnist-5k as a PNG file: the style image a user drops on the page."""
    ds = load_dataset("mnist-5k:eval")
    k = int(np.flatnonzero(ds.labels == 7)[0])
    path = tmp_path_factory.mktemp("upload") / "seven.png"
    Image.fromarray(ds.images[k][..., 0]).save(path)
    return path


# The rendered width of an <img>, once it has loaded (it may still be decoding when first found).
NATURAL_WIDTH = (
    "i => i.complete && i.naturalWidth ? i.naturalWidth : new Promise(done => "
    "i.addEventListener('load', () => done(i.naturalWidth), {once: true}))"
)


def open_page(tab: Tab, url: str) -> None:
    tab.page.goto(url + "/")
    expect(tab.page.locator("#status .pill").first).to_be_visible()


def png_of(img: Locator) -> Image.Image:
    src = img.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,"), src[:60]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def check_images(imgs: Locator, model: dict, count: int) -> list[Image.Image]:
    """``count`` images that decode, at the model's resolution and channels, and render in the page."""
    expect(imgs).to_have_count(count)
    out = []
    for k in range(count):
        img = imgs.nth(k)
        expect(img).to_be_visible()
        assert img.evaluate(NATURAL_WIDTH) == model["resolution"]
        pil = png_of(img)
        assert pil.size == (model["resolution"], model["resolution"])
        assert pil.mode == ("L" if model["channels"] == 1 else "RGB")
        out.append(pil)
    return out


def snap(tab: Tab, selector: str, path: Path) -> None:
    """Screenshot one view; the sticky header is unstuck first so it does not cover the view."""
    tab.page.add_style_tag(content="header.top { position: static !important; }")
    tab.page.locator(selector).screenshot(path=path)


def png_bytes(img: Locator) -> bytes:
    return base64.b64decode((img.get_attribute("src") or "").split(",", 1)[1])


def test_status_shows_both_services(stack: LocalStack, tab: Tab, model: dict, shots: Path) -> None:
    open_page(tab, stack.playground_url)
    status = tab.page.locator("#status")
    expect(status).to_contain_text("bank ready")
    expect(status).to_contain_text("generator ready")
    expect(status).to_contain_text(model["id"])
    expect(status).to_contain_text("4500 base")
    snap(tab, "header", shots / "status.png")
    assert tab.console_errors == []


def test_generate_grid(stack: LocalStack, tab: Tab, model: dict, shots: Path) -> None:
    open_page(tab, stack.playground_url)
    page = tab.page
    expect(page.locator("#status")).to_have_attribute("data-provenance", "true")
    page.fill("#seed", "11")
    page.fill("#n", "4")
    page.fill("#steps", str(STEPS))
    page.click("#generate")
    imgs = page.locator("#gallery img.sample")
    check_images(imgs, model, 4)
    # Each image says its own seed (image k of seed s uses s + k) and the snippet the bank picked for it.
    seeds = [int(imgs.nth(k).get_attribute("data-seed") or -1) for k in range(4)]
    assert seeds == [11, 12, 13, 14]
    ids = [int(imgs.nth(k).get_attribute("data-snippet-id") or -1) for k in range(4)]
    direct = httpx.post(
        stack.generator_url + "/generate", json={"n": 4, "seed": 11, "steps": STEPS}, timeout=120
    ).json()
    assert ids == direct["indices"]
    assert [png_bytes(imgs.nth(k)) for k in range(4)] == [base64.b64decode(s) for s in direct["images"]]
    expect(page.locator("#gallery")).to_contain_text(f"bank v{direct['bank_version']}")
    # Every tile offers its PNG for download, named after its seed and snippet.
    link = page.locator("#gallery a[download]").first
    assert re.fullmatch(r"gmem-seed11-snippet\d+\.png", link.get_attribute("download") or "")
    # Provenance: the training image behind each picked base snippet sits beside the sample.
    sources = page.locator("#gallery .src[data-source]")
    expect(sources).to_have_count(4)
    assert [sources.nth(k).get_attribute("data-source") for k in range(4)] == [
        f"/api/sources/{i}.png" for i in ids
    ]
    expect(page.locator("#gallery img")).to_have_count(4)  # the results only
    snap(tab, "#generate-view", shots / "generate.png")
    assert tab.console_errors == []


def test_insert_style(stack: LocalStack, tab: Tab, model: dict, digit_png: Path, shots: Path) -> None:
    open_page(tab, stack.playground_url)
    page = tab.page
    page.fill("#insert-n", "3")
    page.fill("#seed", "5")
    page.fill("#steps", str(STEPS))  # the insert previews use the Generate form's seed and steps
    page.set_input_files("#upload", str(digit_png))
    result = page.locator("#insert-result")
    expect(result).to_contain_text("Inserted snippet")
    new_id = int(page.locator("#inserted-id").inner_text())
    snippet = httpx.get(f"{stack.bank_url}/bank/snippets/{new_id}", timeout=10).json()
    assert snippet["kind"] == "inserted" and new_id >= 4500
    expect(result).to_contain_text(str(new_id))
    expect(result).to_contain_text("residual")
    # Nearest snippets: rows with ids and source images, nearest first, not the query itself.
    hits = page.locator("#search-results figure[data-snippet-id]")
    expect(hits.first).to_be_visible()
    bank_hits = httpx.post(f"{stack.bank_url}/bank/search", json={"id": new_id, "k": 9}, timeout=10).json()
    want = [h["id"] for h in bank_hits["neighbors"] if h["id"] != new_id]
    assert [int(hits.nth(k).get_attribute("data-snippet-id") or -1) for k in range(hits.count())] == want
    # Generations from the new snippet: pinned to its id, and the generator's own bytes for that request.
    imgs = page.locator("#insert-gallery img.sample")
    check_images(imgs, model, 3)
    assert {imgs.nth(k).get_attribute("data-snippet-id") for k in range(3)} == {str(new_id)}
    direct = httpx.post(
        stack.generator_url + "/generate",
        json={"n": 3, "seed": 5, "steps": STEPS, "snippet_ids": [new_id]},
        timeout=120,
    ).json()
    assert [png_bytes(imgs.nth(k)) for k in range(3)] == [base64.b64decode(s) for s in direct["images"]]
    snap(tab, "#insert-view", shots / "insert.png")
    assert tab.console_errors == []


def test_interpolation_strip(stack: LocalStack, tab: Tab, model: dict, shots: Path) -> None:
    size_before = httpx.get(stack.bank_url + "/bank", timeout=10).json()["size"]
    open_page(tab, stack.playground_url)
    page = tab.page
    page.fill("#steps", str(STEPS))
    page.fill("#interp-a", "10")
    page.fill("#interp-b", "4000")
    page.fill("#interp-points", "5")
    page.select_option("#interp-method", "slerp")
    page.click("#interpolate")
    strip = check_images(page.locator("#strip img.sample"), model, 5)
    for k, alpha in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        expect(page.locator("#strip figure").nth(k)).to_contain_text(f"α {alpha:.2f}")
    # Same noise, moving memory: the ends differ, and every image used the same seed.
    assert np.abs(np.asarray(strip[0], float) - np.asarray(strip[-1], float)).mean() > 1.0
    assert {page.locator("#strip img.sample").nth(k).get_attribute("data-seed") for k in range(5)} == {"0"}
    # The slider re-renders one alpha.
    page.locator("#interp-alpha").fill("0.3")
    check_images(page.locator("#interp-single img.sample"), model, 1)
    expect(page.locator("#interp-single")).to_contain_text("α 0.30")
    # Without "keep", the temporary interpolated snippets are removed again.
    assert httpx.get(stack.bank_url + "/bank", timeout=10).json()["size"] == size_before
    snap(tab, "#interp-view", shots / "interpolate.png")
    assert tab.console_errors == []


def test_browse_provenance_and_delete(stack: LocalStack, tab: Tab, shots: Path) -> None:
    open_page(tab, stack.playground_url)
    page = tab.page
    tiles = page.locator("#browse figure[data-snippet-id]")
    expect(tiles).to_have_count(24)
    expect(tiles.first).to_contain_text("#0")
    expect(tiles.first).to_contain_text("base")
    # The source image behind base row 0 is image 0 of the bank's source dataset (mnist-5k:train).
    src = tiles.first.locator("img.src")
    expect(src).to_have_attribute("src", "/api/sources/0.png")
    assert src.evaluate(NATURAL_WIDTH) == 32
    served = np.asarray(
        Image.open(io.BytesIO(httpx.get(stack.playground_url + "/api/sources/0.png").content))
    )
    assert np.array_equal(served, load_dataset("mnist-5k:train").images[0][..., 0])
    label = httpx.get(stack.bank_url + "/bank/snippets/0", timeout=10).json()["label"]
    expect(tiles.first).to_contain_text(f"label {label}")
    snap(tab, "#bank-view", shots / "bank.png")
    # A run-time snippet appears in the user pool and can be deleted from the page.
    made = httpx.post(
        stack.bank_url + "/bank/interpolate",
        json={"i": 3, "j": 9, "alpha": 0.5, "name": "to delete"},
        headers=AUTH,
        timeout=10,
    ).json()
    page.select_option("#browse-pool", "user")
    tile = page.locator(f"#browse figure[data-snippet-id='{made['id']}']")
    expect(tile).to_contain_text("interpolated")
    expect(tile).to_contain_text("parents 3, 9")
    tile.get_by_role("button", name="del").click()
    expect(tile).to_have_count(0)
    assert httpx.get(f"{stack.bank_url}/bank/snippets/{made['id']}", timeout=10).status_code == 404
    assert tab.console_errors == []


# ---------------------------------------------------------------- bad paths


def test_non_image_upload(stack: LocalStack, tab: Tab, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n")
    open_page(tab, stack.playground_url)
    version = httpx.get(stack.bank_url + "/bank", timeout=10).json()["version"]
    tab.page.set_input_files("#upload", str(text))
    expect(tab.page.locator("#insert-message")).to_contain_text("not an image")
    expect(tab.page.locator("#insert-result")).not_to_contain_text("Inserted")
    resp = httpx.post(
        stack.playground_url + "/api/snippets", files={"image": ("notes.txt", b"hello", "text/plain")}
    )
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "not_an_image"
    assert httpx.get(stack.bank_url + "/bank", timeout=10).json()["version"] == version  # nothing stored


def test_unknown_snippet_id(stack: LocalStack, tab: Tab) -> None:
    open_page(tab, stack.playground_url)
    page = tab.page
    page.fill("#interp-a", "99999999")
    page.fill("#interp-b", "1")
    page.click("#interpolate")
    expect(page.locator("#interp-message")).to_contain_text("99999999")
    expect(page.locator("#interp-message")).to_contain_text("HTTP 404")
    page.fill("#gen-snippet", "88888888")
    page.click("#generate")
    expect(page.locator("#gen-message")).to_contain_text("88888888")
    for resp in (
        httpx.get(stack.playground_url + "/api/snippets/99999999"),
        httpx.post(stack.playground_url + "/api/search", json={"id": 99999999}),
        httpx.post(stack.playground_url + "/api/generate", json={"snippet_ids": [99999999], "steps": 2}),
    ):
        assert resp.status_code == 404, resp.text
        assert set(resp.json()["error"]) == {"code", "message"}


def test_bank_down(playground_without_bank, tab: Tab, digit_png: Path, shots: Path) -> None:
    url = playground_without_bank.url
    open_page(tab, url)
    page = tab.page
    expect(page.locator("#status")).to_contain_text("bank down")
    expect(page.locator("#browse-message")).to_contain_text("unreachable")
    page.set_input_files("#upload", str(digit_png))
    expect(page.locator("#insert-message")).to_contain_text("bank")
    expect(page.locator("#insert-message")).to_contain_text("HTTP 503")
    snap(tab, "main", shots / "bank-down.png")
    for resp in (
        httpx.get(url + "/api/snippets/1"),
        httpx.get(url + "/api/snippets?pool=base"),
        httpx.post(
            url + "/api/snippets", files={"image": ("seven.png", digit_png.read_bytes(), "image/png")}
        ),
    ):
        assert resp.status_code == 503, resp.text
        assert "unreachable" in resp.json()["error"]["message"]
    status = httpx.get(url + "/api/status").json()
    assert status["bank"]["ok"] is False and status["generator"]["ok"] is True


def test_narrow_screen_has_no_sideways_scroll(stack: LocalStack, browser, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto(stack.playground_url + "/")
        expect(page.locator("#browse figure").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=shots / "narrow.png")
    finally:
        context.close()
