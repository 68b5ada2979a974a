"""`reduce-bank`: k representatives per label (random@k keeps rows exactly, average@k re-projects group
means)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InvalidInput
from shared.factors import load_factors, save_factors
from training.latent.reduce import parse_method

from .conftest import BANK, run_cli


def test_random_at_k_keeps_k_real_rows_per_label(tmp_path):
    out = tmp_path / "r.safetensors"
    res = run_cli("reduce-bank", "--bank", str(BANK), "--method", "random@k", "--k", "4", "--out", str(out))
    assert res.exit_code == 0, res.output
    src, red = load_factors(BANK), load_factors(out)
    labels = np.asarray(red.labels)
    assert red.size == 40 and np.array_equal(np.bincount(labels), [4] * 10)
    assert (red.meta.encoder, red.meta.feature_dim, red.meta.rank) == (
        src.meta.encoder,
        src.meta.feature_dim,
        src.meta.rank,
    )
    assert red.meta.extra["reduction"] == "random@4"
    src_c, src_l = np.asarray(src.C), np.asarray(src.labels)
    for row, label in zip(np.asarray(red.C), labels, strict=True):
        hits = np.flatnonzero((src_c == row).all(axis=1))
        assert hits.size == 1 and src_l[hits[0]] == label  # a real row of that label, copied exactly
    again = tmp_path / "again.safetensors"
    run_cli("reduce-bank", "--bank", str(BANK), "--method", "random@4", "--out", str(again))
    assert np.array_equal(np.asarray(load_factors(again).C), np.asarray(red.C))  # seeded


def test_average_at_k_representatives_sit_near_their_class(tmp_path):
    out = tmp_path / "a.safetensors"
    res = run_cli("reduce-bank", "--bank", str(BANK), "--method", "average@k", "--k", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    src, red = load_factors(BANK), load_factors(out)
    labels, src_l = np.asarray(red.labels), np.asarray(src.labels)
    reps = red.snippets(np.arange(red.size))
    assert np.allclose(np.linalg.norm(reps, axis=1), 1.0, atol=1e-5)
    means = np.stack([src.snippets(np.flatnonzero(src_l == k)).mean(0) for k in range(10)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    # Each representative is closest to its own class mean among the ten.
    assert np.array_equal(np.argmax(reps @ means.T, axis=1), labels)


def test_unlabelled_bank_and_bad_methods_are_refused(tmp_path):
    f = load_factors(BANK)
    plain = tmp_path / "plain.safetensors"
    save_factors(plain, f.mu, f.B, f.S, np.asarray(f.C), f.meta)
    res = run_cli(
        "reduce-bank",
        "--bank",
        str(plain),
        "--method",
        "random@k",
        "--k",
        "2",
        "--out",
        str(tmp_path / "x.safetensors"),
    )
    assert res.exit_code == 2 and "no labels" in res.output and not (tmp_path / "x.safetensors").exists()
    assert parse_method("average@7", None) == ("average", 7)
    for method, k in (("median@k", 2), ("random@k", None), ("random@3", 4), ("random@k", 0)):
        with pytest.raises(InvalidInput):
            parse_method(method, k)
