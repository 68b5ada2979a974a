"""build-bank: the streaming factorisation against numpy's exact SVD, and refusal of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import (
    BankFileError,
    DimensionMismatch,
    InvalidInput,
    InvalidRank,
    NonFiniteValue,
    ZeroVector,
)
from shared.factors import load_factors
from training.bank.build import factorise, run_build

ROOT = Path(__file__).resolve().parents[2]


def features(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    """Raw features with a decaying spectrum and a large common offset (like real CLS tokens)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.linspace(3.0, 0.2, d) + 2.0
    return X.astype(np.float32)


def exact_factors(X: np.ndarray, r: int):
    """The contract's definitions via numpy's SVD of the normalised rows, with our sign convention."""
    M = X.astype(np.float64)
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    mu = M.mean(0)
    U, S, Vt = np.linalg.svd(M - mu, full_matrices=False)
    V = Vt[:r].T
    sign = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(r)])
    V, U = V * sign, U[:, :r] * sign
    root = np.sqrt(S[:r])
    return mu, V * root, S[:r], U * root, float((S[:r] ** 2).sum() / (S**2).sum())


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "build-bank", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_features_path_matches_numpy_svd(tmp_path: Path):
    X = features()
    np.save(tmp_path / "f.npy", X)
    labels = np.arange(len(X)) % 7
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "bank.safetensors"
    proc = run_cli(
        "--features",
        str(tmp_path / "f.npy"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--out",
        str(out),
        env={"GMEM_BANK_RANK": "5"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "explained variance" in proc.stdout
    bank = load_factors(out)
    mu, B, S, C, explained = exact_factors(X, 5)
    np.testing.assert_allclose(bank.mu, mu, atol=1e-6)
    np.testing.assert_allclose(bank.S, S, rtol=1e-5)
    np.testing.assert_allclose(bank.B, B, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bank.C), C, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(bank.labels), labels)
    assert bank.meta.explained_variance == pytest.approx(explained, rel=1e-6)
    assert bank.meta.normalized is True and bank.meta.source == "f.npy" and bank.meta.rank == 5


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(2, 12), st.integers(0, 2**31), st.data())
def test_factorisation_properties(n, d, seed, data):
    X = features(n, d, seed)
    r = data.draw(st.integers(1, min(n - 1, d)))
    fac = factorise(X, r, chunk_rows=data.draw(st.integers(1, n)), progress=False)
    mu, B, S, C, explained = exact_factors(X, r)
    np.testing.assert_allclose(fac.B.T.astype(np.float64) @ fac.B, np.diag(fac.S), atol=1e-5 * max(1, S[0]))
    np.testing.assert_allclose(fac.S, S, rtol=1e-4, atol=1e-6)
    # Reconstruction error equals the best rank-r approximation's (Eckart-Young), whatever the chunking.
    M = X / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    err = np.linalg.norm(fac.C.astype(np.float64) @ fac.B.T + fac.mu - M)
    assert err == pytest.approx(np.linalg.norm(C @ B.T + mu - M), abs=1e-4)
    assert fac.explained_variance == pytest.approx(explained, abs=1e-6)


def test_streaming_equals_in_memory_and_memmap(tmp_path: Path):
    X = features(1000, 24, seed=3)
    whole = factorise(X, 8, chunk_rows=len(X), progress=False)
    chunked = factorise(X, 8, chunk_rows=37, progress=False)
    np.save(tmp_path / "f.npy", X)
    mapped = factorise(np.load(tmp_path / "f.npy", mmap_mode="r"), 8, chunk_rows=100, progress=False)
    for other in (chunked, mapped):
        np.testing.assert_allclose(other.mu, whole.mu, atol=1e-7)
        np.testing.assert_allclose(other.B, whole.B, atol=1e-6)
        np.testing.assert_allclose(other.C, whole.C, atol=1e-5)
        assert other.explained_variance == pytest.approx(whole.explained_variance, rel=1e-9)


def test_signs_are_deterministic():
    X = features(200, 10, seed=5)
    a = factorise(X, 4, progress=False)
    b = factorise(X[::-1].copy(), 4, progress=False)  # same rows, other order: same basis
    np.testing.assert_allclose(a.B, b.B, atol=1e-6)
    assert np.all(a.B[np.argmax(np.abs(a.B), axis=0), np.arange(4)] > 0)


def test_fp16_coefficients(tmp_path: Path):
    X = features()
    np.save(tmp_path / "f.npy", X)
    run_build(
        tmp_path / "h.safetensors", 6, tmp_path / "f.npy", None, None, None, None, None, c_dtype="float16"
    )
    bank = load_factors(tmp_path / "h.safetensors")
    assert bank.C.dtype == np.float16
    exact = exact_factors(X, 6)[3]
    np.testing.assert_allclose(np.asarray(bank.C, dtype=np.float32), exact, atol=2e-3)


def _bad(tmp_path: Path, X: np.ndarray) -> Path:
    path = tmp_path / "bad.npy"
    np.save(path, X)
    return path


@pytest.mark.parametrize(
    ("make", "rank", "error", "words"),
    [
        (
            lambda p: _bad(p, np.where(np.arange(40)[:, None] == 17, np.nan, features(40, 6))),
            3,
            NonFiniteValue,
            "row 17",
        ),
        (
            lambda p: _bad(p, np.where(np.arange(40)[:, None] == 3, np.inf, features(40, 6))),
            3,
            NonFiniteValue,
            "row 3",
        ),
        (
            lambda p: _bad(p, np.where(np.arange(40)[:, None] == 39, 0.0, features(40, 6))),
            3,
            ZeroVector,
            "row 39",
        ),
        (lambda p: _bad(p, features(40, 6)[0]), 1, DimensionMismatch, "2-D"),
        (lambda p: _bad(p, np.zeros((2, 3, 4))), 1, DimensionMismatch, "2-D"),
        (lambda p: _bad(p, np.zeros((0, 4))), 1, DimensionMismatch, "empty"),
        (lambda p: _bad(p, features(40, 6)), 7, InvalidRank, "1 <= rank <= 6"),
        (lambda p: _bad(p, features(40, 6)), 0, InvalidRank, "1 <= rank <= 6"),
        (lambda p: _bad(p, features(3, 6)), 3, InvalidRank, "vary"),  # 3 rows span only 2 directions
        (lambda p: _bad(p, np.array([["a", "b"]])), 1, InvalidInput, "dtype"),
        (lambda p: _bad(p, np.array([[{}, {}]], dtype=object)), 1, BankFileError, "readable"),
        (
            lambda p: (p / "junk.npy").write_bytes(b"not an array") and p / "junk.npy",
            1,
            BankFileError,
            "readable",
        ),
        (lambda p: p / "missing.npy", 1, BankFileError, "no such"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(tmp_path: Path, make, rank, error, words):
    src = make(tmp_path)
    out = tmp_path / "out" / "bank.safetensors"
    with pytest.raises(error, match=words):
        run_build(out, rank, src, None, None, None, None, None)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_exactly_one_source_is_required(tmp_path: Path):
    with pytest.raises(InvalidInput, match="exactly one source"):
        run_build(tmp_path / "b.safetensors", 2, None, None, None, None, None, None)
    with pytest.raises(InvalidInput, match="exactly one source"):
        run_build(tmp_path / "b.safetensors", 2, tmp_path / "f.npy", "mnist-5k", None, None, None, None)


def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path: Path):
    X = features(40, 6)
    X[5, 2] = np.nan
    np.save(tmp_path / "f.npy", X)
    out = tmp_path / "bank.safetensors"
    proc = run_cli("--features", str(tmp_path / "f.npy"), "--rank", "2", "--out", str(out))
    assert proc.returncode == 2
    assert "row 5" in proc.stderr and "NaN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "f.npy"]
