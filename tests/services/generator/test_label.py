"""`"label"` on POST /generate, through real bank and generator processes, on a bank reduced per label."""

from __future__ import annotations

import math

import httpx
import numpy as np
import torch
from typer.testing import CliRunner

from shared.factors import load_factors, save_factors
from tests.support.services import DEFAULT_BANK, start_bank, start_generator
from training.cli import build_app


def _cdf_index(z: torch.Tensor, n: int) -> int:
    zeta = float(z.double().sum()) / math.sqrt(z.numel())
    return min(int(math.floor(0.5 * (1.0 + math.erf(zeta / math.sqrt(2.0))) * n)), n - 1)


def test_label_draws_snippets_of_that_label_from_a_reduced_bank(tmp_path):
    reduced = tmp_path / "reduced.safetensors"
    res = CliRunner().invoke(
        build_app(),
        [
            "reduce-bank",
            "--bank",
            str(DEFAULT_BANK),
            "--method",
            "random@k",
            "--k",
            "3",
            "--out",
            str(reduced),
        ],
    )
    assert res.exit_code == 0, res.output
    labels = np.asarray(load_factors(reduced).labels)
    bank = start_bank(tmp_path, factors=reduced)
    try:
        gen = start_generator(tmp_path, bank.url)
        try:
            assert httpx.get(bank.url + "/bank", timeout=10).json()["labels"] is True
            r = httpx.post(
                gen.url + "/generate", json={"n": 3, "seed": 11, "steps": 4, "label": 7}, timeout=120
            )
            assert r.status_code == 200, r.text
            mixed = httpx.post(
                gen.url + "/generate", json={"n": 1, "label": 7, "snippet_ids": [0]}, timeout=30
            )
            missing = httpx.post(gen.url + "/generate", json={"n": 1, "steps": 2, "label": 12}, timeout=30)
        finally:
            gen.stop()
    finally:
        bank.stop()
    body = r.json()
    rows = np.flatnonzero(labels == 7)
    # Image k's noise is the first draw of seed 11 + k (CONTRACT.md section 6); the index is taken within
    # label 7.
    want = [
        int(rows[_cdf_index(torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(11 + k)), 3)])
        for k in range(3)
    ]
    assert body["indices"] == want and all(labels[i] == 7 for i in body["indices"])
    assert len(body["images"]) == 3
    assert mixed.status_code == 422 and "give at most one of" in mixed.json()["error"]["message"]
    assert missing.status_code == 422 and "label 12" in missing.json()["error"]["message"]


def test_label_on_an_unlabelled_bank_is_422(tmp_path):
    f = load_factors(DEFAULT_BANK)
    plain = tmp_path / "plain.safetensors"
    save_factors(plain, f.mu, f.B, f.S, np.asarray(f.C), f.meta)
    bank = start_bank(tmp_path, factors=plain)
    try:
        gen = start_generator(tmp_path, bank.url)
        try:
            r = httpx.post(
                gen.url + "/generate", json={"n": 1, "seed": 1, "steps": 2, "label": 3}, timeout=60
            )
            ok = httpx.post(gen.url + "/generate", json={"n": 1, "seed": 1, "steps": 2}, timeout=60)
        finally:
            gen.stop()
    finally:
        bank.stop()
    assert r.status_code == 422 and "no labels" in r.json()["error"]["message"]
    assert ok.status_code == 200
