"""The release's memory banks (full tensor and SVD dict) become factors files the services read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.factors import load_factors
from tests.training.official import fixtures as fx
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
