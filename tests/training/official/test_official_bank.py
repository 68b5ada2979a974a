"""The release's memory banks (full tensor and SVD dict) become factors files the services read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shared.factors import load_factors
from tests.training.official import fixtures as fx
from training.cli import build_app
from training.official.importer import import_bank


@pytest.fixture(scope="module")
def raw_features() -> torch.Tensor:
    return fx.raw_cls_features(600, seed=5)


def test_full_bank_is_normalised_then_factorised(raw_features, tmp_path):
    path = fx.save_full_bank(raw_features, tmp_path / "in1k256_Kfull_dim768_init_seed0.pth.pth")
    report = import_bank(path, tmp_path, rank=24)
    bank = load_factors(tmp_path / "bank.safetensors")
    unit = torch.nn.functional.normalize(raw_features.double(), dim=1).numpy()
    assert bank.meta.normalized and bank.size == 600 and bank.rank == 24
    assert bank.meta.encoder == "timm/vit_base_patch14_dinov2" and bank.feature_dim == 768
    # mu is the mean of unit snippets (what the network saw), not of the raw CLS tokens.
    assert np.allclose(bank.mu, unit.mean(0), atol=1e-5)
    assert not np.allclose(bank.mu, raw_features.numpy().mean(0), atol=1e-2)
    # The fixture is rank ~16 plus small noise: rank-24 snippets point where the originals do.
    cos = (bank.snippets(np.arange(600)) * unit).sum(1)
    assert cos.min() > 0.97
    assert "normalized=true" in report.notes and any("explained variance 0." in n for n in report.notes)


def test_svd_dict_imports_unchanged_with_normalized_false(raw_features, tmp_path):
    path = tmp_path / "dmd_bank.pth"
    dmd = fx.save_svd_bank(raw_features, path, latent_dim=32)
    import_bank(path, tmp_path, rank=None)
    bank = load_factors(tmp_path / "bank.safetensors")
    assert not bank.meta.normalized and bank.rank == 32
    assert np.array_equal(bank.C, dmd["C"].numpy()) and np.array_equal(bank.B, dmd["M"].numpy())
    assert np.array_equal(bank.S, dmd["S"].numpy()) and np.array_equal(bank.mu, dmd["mean"].numpy())
    # Snippet i is what the release feeds its network: F.normalize(C[i] M^T + mean).
    i = 17
    official = torch.nn.functional.normalize(dmd["C"][i] @ dmd["M"].T + dmd["mean"], dim=0).numpy()
    assert np.allclose(bank.snippets([i])[0], official, atol=1e-5)


def test_default_import_is_lossless_at_rank_768_and_prints_the_storage_table(tmp_path):
    # More rows than dimensions, so full rank d = 768 is possible; no --rank given.
    raw = fx.raw_cls_features(1000, seed=11)
    path = fx.save_full_bank(raw, tmp_path / "in1k256_Kfull_dim768_init_seed0.pth.pth")
    res = CliRunner().invoke(
        build_app(),
        ["import-official", "--bank", str(path), "--out", str(tmp_path / "out")],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    bank = load_factors(tmp_path / "out" / "bank.safetensors")
    assert bank.rank == bank.feature_dim == 768
    unit = torch.nn.functional.normalize(raw.double(), dim=1).numpy()
    assert (bank.snippets(np.arange(1000)).astype(np.float64) * unit).sum(1).min() > 0.9999
    assert "default: full rank d, lossless" in res.output
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "file"])
    rows = {int(line.split()[0]): line for line in lines[head + 1 : head + 6]}
    assert sorted(rows) == [64, 128, 256, 512, 768]
    assert rows[768].endswith("<- written (default: full rank d, lossless)")
    on_disk = (tmp_path / "out" / "bank.safetensors").stat().st_size
    assert int(rows[768].split()[1].replace(",", "")) == on_disk
    assert f"N = 1,000 rows, d = 768; dense N x d float32 snippets = {4 * 1000 * 768:,} bytes" in res.output


def test_fewer_rows_than_768_keep_every_direction_they_span(tmp_path):
    # N < d here (600 rows span 599 centred directions): the default keeps all of them and says so.
    report = import_bank(
        fx.save_full_bank(fx.raw_cls_features(600, seed=5), tmp_path / "b.pth"), tmp_path, None
    )
    assert report.bank is not None and report.bank.meta.rank == 599
    assert report.notes[0] == "rank 599 of d = 768 (default: every direction with variance, 599 < d = 768)"
    assert report.bank.storage.file_min_cosine > 0.9999
