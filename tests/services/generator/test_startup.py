"""CONTRACT.md section 5: the generator refuses, at start, a bank of another snippet dimension or encoder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from shared.factors import BankMeta, save_factors
from tests.support.services import DEFAULT_MODEL, GENERATOR_ENV, ROOT, free_port, start_bank


def _bank_file(path, d: int, encoder: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, d))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    mu = rows.mean(0)
    u, s, vt = np.linalg.svd(rows - mu, full_matrices=False)
    r = 8
    save_factors(
        path,
        mu,
        vt[:r].T * np.sqrt(s[:r]),
        s[:r],
        (u[:, :r] * np.sqrt(s[:r])).astype(np.float32),
        BankMeta(encoder=encoder, feature_dim=d, rank=r, source="test", explained_variance=0.5),
    )


def _run_generator(bank_url: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), **GENERATOR_ENV, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.generator",
            "--model",
            str(DEFAULT_MODEL),
            "--bank-url",
            bank_url,
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wrong_snippet_dimension_refuses_to_start_naming_both(tmp_path):
    _bank_file(tmp_path / "d16.safetensors", 16, "gmem/mnist-ssl")
    bank = start_bank(tmp_path, factors=tmp_path / "d16.safetensors")
    try:
        done = _run_generator(bank.url)
    finally:
        bank.stop()
    assert done.returncode != 0
    err = done.stderr
    assert "dimension 128" in err and "dimension 16" in err and bank.url in err


def test_wrong_encoder_refuses_to_start_naming_both(tmp_path):
    _bank_file(tmp_path / "other.safetensors", 128, "timm/some-other-encoder")
    bank = start_bank(tmp_path, factors=tmp_path / "other.safetensors")
    try:
        done = _run_generator(bank.url)
    finally:
        bank.stop()
    assert done.returncode != 0
    assert "gmem/mnist-ssl" in done.stderr and "timm/some-other-encoder" in done.stderr


def test_a_file_that_is_not_a_model_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    env = {"PYTHONPATH": str(ROOT), **GENERATOR_ENV, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.generator",
            "--model",
            str(bad),
            "--bank-url",
            "http://127.0.0.1:9",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and str(bad) in done.stderr
    assert "Traceback" not in done.stderr
