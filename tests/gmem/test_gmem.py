"""Unit tests of the CLI package's helpers: PNG grids, service settings, the GMEM_* catalogue, ports."""

from __future__ import annotations

import base64
import io
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gmem.envvars import BEGIN, END, from_settings, markdown_table, write_into
from gmem.images import decode_png, grid, save_images
from gmem.settings import ClientSettings
from gmem.stack import free_port, pick_port, port_is_free
from shared.errors import InvalidImage

ROOT = Path(__file__).resolve().parents[2]


def png_bytes(value: int, size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), pad=st.integers(0, 3))
def test_grid_places_cell_k_row_major_in_ceil_sqrt_columns(n, pad):
    cells = [Image.fromarray(np.full((3, 5), k + 1, np.uint8)) for k in range(n)]  # 5 wide, 3 high
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.asarray(grid(cells, pad=pad, background=0))
    assert out.shape == (rows * (3 + pad) + pad, cols * (5 + pad) + pad)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = pad + r * (3 + pad), pad + c * (5 + pad)
        assert (out[y : y + 3, x : x + 5] == k + 1).all()
    # Everything outside the cells is padding.
    assert out.sum() == sum((k + 1) * 15 for k in range(n))


def test_decode_png_accepts_bytes_and_base64_and_rejects_garbage():
    raw = png_bytes(200)
    assert np.asarray(decode_png(raw)).max() == 200
    assert np.asarray(decode_png(base64.b64encode(raw).decode())).max() == 200
    with pytest.raises(InvalidImage, match="base64"):
        decode_png("not base64 !!")
    with pytest.raises(InvalidImage, match="PNG"):
        decode_png(b"\x89PNG but not really")


def test_save_images_writes_each_image_scaled_and_a_grid(tmp_path):
    paths, grid_path = save_images([png_bytes(10), png_bytes(20), png_bytes(30)], tmp_path, "s", scale=3)
    assert [p.name for p in paths] == ["s-00.png", "s-01.png", "s-02.png"]
    assert Image.open(paths[1]).size == (12, 12) and np.asarray(Image.open(paths[1])).max() == 20
    assert Image.open(grid_path).size == (2 * 14 + 2, 2 * 14 + 2)


def test_client_settings_read_gmem_variables(monkeypatch):
    monkeypatch.setenv("GMEM_BANK_URL", "http://bank.example:9001")
    monkeypatch.setenv("GMEM_BANK_TOKEN", "s3cret")
    s = ClientSettings()
    assert (s.bank_url, s.bank_token, s.generator_url) == (
        "http://bank.example:9001",
        "s3cret",
        "http://127.0.0.1:8002",
    )
    assert ClientSettings(bank_url="http://other").bank_url == "http://other"  # flags override


def test_envvar_catalogue_names_follow_each_class_prefix_and_aliases():
    names = {v.name for v in from_settings()}
    # prefix + field name, and an alias choice (the bank reads the shared GMEM_REDIS_URL)
    assert {
        "GMEM_BANK_FACTORS",
        "GMEM_BANK_TOKEN",
        "GMEM_REDIS_URL",
        "GMEM_GENERATOR_MODEL",
        "GMEM_GENERATOR_DEVICE",
        "GMEM_BANK_URL",
        "GMEM_GENERATOR_URL",
    } <= names
    assert all(n.startswith("GMEM_") and n == n.upper() for n in names)
    # the services never read the training commands' unprefixed names
    assert not {"GMEM_MODEL", "GMEM_DEVICE", "GMEM_MAX_N", "GMEM_PORT", "GMEM_HOST"} & names


def test_generator_settings_use_their_prefix_and_the_shared_urls(monkeypatch):
    from services.generator.settings import GeneratorSettings

    for k in [k for k in os.environ if k.startswith("GMEM_")]:
        monkeypatch.delenv(k)
    # the training commands' variables (and a shared env file's) leave the generator alone
    monkeypatch.setenv("GMEM_DEVICE", "cuda")
    monkeypatch.setenv("GMEM_MODEL", "training-model.safetensors")
    monkeypatch.setenv("GMEM_MAX_N", "3")
    monkeypatch.setenv("GMEM_GENERATOR_DEVICE", "cpu")
    monkeypatch.setenv("GMEM_GENERATOR_MAX_N", "5")
    monkeypatch.setenv("GMEM_BANK_URL", "http://bank.example:9001")
    monkeypatch.setenv("GMEM_REDIS_URL", "redis://redis.example:6379/0")
    s = GeneratorSettings()
    assert (s.device, s.max_n, s.model) == ("cpu", 5, "artifacts/mnist-5k/model.safetensors")
    assert (s.bank_url, s.redis_url) == ("http://bank.example:9001", "redis://redis.example:6379/0")
    # fields given by name (the CLI's flags) override the variables, aliased ones included
    s = GeneratorSettings(bank_url="http://other:1", redis_url=None, port=9)
    assert (s.bank_url, s.redis_url, s.port) == ("http://other:1", None, 9)


def test_markdown_table_is_written_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    table = markdown_table(from_settings())
    write_into(readme, table)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert table in text
    write_into(readme, table)  # idempotent
    assert readme.read_text() == text


def test_pick_port_falls_back_when_the_preferred_port_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert not port_is_free(taken)
        other = pick_port(taken)
        assert other != taken and port_is_free(other)
    assert pick_port(None) > 0


def _gmem(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
    return subprocess.run(
        [sys.executable, "-m", "gmem", *args],
        cwd=ROOT,
        env={**base, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_without_services_says_so_in_one_line():
    port = free_port()  # nothing listens there
    r = _gmem(
        "--bank-url",
        f"http://127.0.0.1:{port}",
        "--generator-url",
        f"http://127.0.0.1:{port}",
        "generate",
        "-n",
        "1",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unreachable" in r.stderr and "Is the stack running?" in r.stderr


def test_cli_rejects_bad_settings_and_conflicting_options_without_a_traceback():
    r = _gmem("info", GMEM_CLIENT_TIMEOUT_S="soon")
    assert r.returncode == 2 and "client_timeout_s" in r.stderr and "Traceback" not in r.stderr
    r = _gmem("insert")
    assert r.returncode == 2 and "exactly one of --image" in r.stderr
    r = _gmem("interpolate", "1", "2", "--alpha", "1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
