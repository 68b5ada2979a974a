"""The storage-by-rank table: cosines from one factorisation equal direct reconstructions."""

from __future__ import annotations

import numpy as np
import pytest

from training.bank.storage import (
    COSINE_SAMPLE,
    RankRow,
    StorageReport,
    cosine_by_rank,
    format_report,
    human_bytes,
    report_ranks,
    sample_rows,
)


def direct_cosines(T, mu, B, c, k):
    recon = mu + c[:, :k] @ B[:, :k].T
    return (recon * T).sum(1) / np.linalg.norm(recon, axis=1) / np.linalg.norm(T, axis=1)


@pytest.mark.parametrize("orthogonal", [True, False])
def test_cumulative_cosines_equal_reconstructing_at_each_rank(orthogonal: bool):
    rng = np.random.default_rng(3)
    d, r, s = 12, 9, 40
    B = rng.normal(size=(d, r))
    if orthogonal:
        B = np.linalg.qr(B)[0]
    mu = rng.normal(size=d)
    T = rng.normal(size=(s, d)) + mu
    c = rng.normal(size=(s, r))
    ranks = [1, 4, 9]
    mean, low = cosine_by_rank(T, mu, B, c, ranks)
    for i, k in enumerate(ranks):
        want = direct_cosines(T, mu, B, c, k)
        assert mean[i] == pytest.approx(want.mean(), abs=1e-12) and low[i] == pytest.approx(
            want.min(), abs=1e-12
        )


def test_full_orthonormal_basis_reconstructs_exactly():
    rng = np.random.default_rng(4)
    V = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    T = rng.normal(size=(10, 6))
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    mu = T.mean(0)
    mean, low = cosine_by_rank(T, mu, V, (T - mu) @ V, [6])
    assert mean[0] == pytest.approx(1.0, abs=1e-12) and low[0] == pytest.approx(1.0, abs=1e-12)


def test_ranks_are_standard_clipped_plus_max_and_written():
    assert report_ranks(768, 768) == [64, 128, 256, 512, 768]
    assert report_ranks(768, 8) == [8, 64, 128, 256, 512, 768]
    assert report_ranks(200, 200) == [64, 128, 200]
    assert report_ranks(32, 32) == [8, 16, 32]  # a small bank: a quarter and a half of it
    assert report_ranks(1, 1) == [1]


def test_sample_is_bounded_fixed_and_sorted():
    assert list(sample_rows(5)) == [0, 1, 2, 3, 4]
    ids = sample_rows(100_000)
    assert len(ids) == COSINE_SAMPLE == len(set(ids)) and np.all(np.diff(ids) > 0)
    assert np.array_equal(ids, sample_rows(100_000))


def test_human_bytes():
    assert [human_bytes(b) for b in (999, 1000, 43_264, 999_999, 3_935_944_704)] == [
        "999 B",
        "1.00 kB",
        "43.3 kB",
        "1.00 MB",
        "3.94 GB",
    ]


def test_table_marks_the_written_rank():
    rows = (RankRow(8, 1000, 0.25, 0.5, 0.9, 0.8, False), RankRow(32, 4000, 1.0, 1.0, 1.0, 1.0, True))
    text = format_report(StorageReport(10, 32, rows, 10, "energy", "snippets", 1.0, 1.0, 0.0), "default")
    lines = text.splitlines()
    assert lines[1].split() == [
        "rank",
        "file",
        "bytes",
        "size",
        "/",
        "dense",
        "explained",
        "mean",
        "cos",
        "min",
        "cos",
    ]
    assert lines[2].split()[0] == "8" and "written" not in lines[2]
    assert lines[3].split()[0] == "32" and lines[3].endswith("<- written (default)")
    assert "N = 10 rows, d = 32" in lines[0] and "1,280 bytes" in lines[0]
