"""import-bank: both official layouts, written by the test with torch.save as the authors' code does."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.bankmath import project
from shared.errors import BankFileError, DimensionMismatch, InvalidRank, NonFiniteValue
from shared.factors import load_factors
from training.bank.importer import run_import

ROOT = Path(__file__).resolve().parents[2]


def raw_cls_tokens(n: int = 200, d: int = 32, seed: int = 0) -> torch.Tensor:
    """Stand-in for raw (not normalised) DINOv2 CLS tokens: an offset plus a decaying spectrum."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(4.0, 0.3, d) + 1.5


def official_svd_dict(bank: torch.Tensor, latent_dim: int) -> dict:
    """The authors' DMD bank: mean, then SVD of the centred raw features, truncated (LINs-lab/GMem
    ``utils/svd_utils.py``, DMDMemoryBank)."""
    mean = bank.mean(0)
    U, S, Vh = torch.linalg.svd(bank - mean, full_matrices=False)
    S_d = S[:latent_dim]
    return {
        "C": U[:, :latent_dim] * S_d.sqrt(),
        "M": Vh[:latent_dim].T * S_d.sqrt(),
        "S": S_d,
        "mean": mean,
        "latent_dim": latent_dim,
        "feature_dim": bank.shape[1],
    }


def test_svd_dict_imports_as_is(tmp_path: Path):
    bank = raw_cls_tokens()
    svd = official_svd_dict(bank, 8)
    torch.save(svd, tmp_path / "dmd.pth")
    out = tmp_path / "bank.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "training", "import-bank", str(tmp_path / "dmd.pth"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    ours = load_factors(out)
    assert ours.meta.normalized is False
    assert ours.meta.encoder == "timm/vit_base_patch14_dinov2" and ours.meta.source == "gmem-official"
    assert (ours.size, ours.feature_dim, ours.rank) == (200, 32, 8)
    np.testing.assert_array_equal(ours.B, svd["M"].numpy())
    np.testing.assert_array_equal(ours.mu, svd["mean"].numpy())
    # The authors' get(idx) = C[idx] M^T + mean; our snippet is its normalisation.
    theirs = svd["C"][[0, 7]] @ svd["M"].T + svd["mean"]
    np.testing.assert_allclose(
        ours.snippets([0, 7]), torch.nn.functional.normalize(theirs, dim=1).numpy(), atol=1e-5
    )
    # Their add_exact(f) = ((f - mean) M) / S: our eq. 10 with normalized=false gives the same coefficients.
    f = bank[3].numpy()
    ours_c = project(f, ours.mu, ours.B, ours.S, normalized=ours.meta.normalized).coefficients[0]
    np.testing.assert_allclose(
        ours_c, (((bank[3] - svd["mean"]) @ svd["M"]) / svd["S"]).numpy(), rtol=1e-4, atol=1e-5
    )


def test_svd_dict_truncates_to_a_smaller_rank(tmp_path: Path):
    svd = official_svd_dict(raw_cls_tokens(), 8)
    torch.save(svd, tmp_path / "dmd.pth")
    meta = run_import(
        tmp_path / "dmd.pth", tmp_path / "b.safetensors", rank=3, encoder="timm/other", source="x"
    )
    ours = load_factors(tmp_path / "b.safetensors")
    assert meta.rank == 3 and ours.meta.encoder == "timm/other" and ours.meta.source == "x"
    np.testing.assert_array_equal(ours.S, svd["S"][:3].numpy())
    with pytest.raises(InvalidRank):
        run_import(tmp_path / "dmd.pth", tmp_path / "c.safetensors", rank=9)
    assert not (tmp_path / "c.safetensors").exists()


def test_full_bank_is_normalised_and_factorised(tmp_path: Path):
    bank = raw_cls_tokens(300, 24)
    torch.save(bank, tmp_path / "in1k_Kfull_dim24.pth")
    meta = run_import(tmp_path / "in1k_Kfull_dim24.pth", tmp_path / "b.safetensors", rank=6)
    ours = load_factors(tmp_path / "b.safetensors")
    assert meta.normalized is True and ours.meta.normalized is True and ours.rank == 6
    M = torch.nn.functional.normalize(bank.double(), dim=1).numpy()
    mu = M.mean(0)
    S = np.linalg.svd(M - mu, compute_uv=False)
    np.testing.assert_allclose(ours.mu, mu, atol=1e-6)
    np.testing.assert_allclose(ours.S, S[:6], rtol=1e-5)
    assert ours.meta.explained_variance == pytest.approx((S[:6] ** 2).sum() / (S**2).sum(), rel=1e-6)
    # Default rank for a full bank is 64 (capped by the data here, so it must be refused).
    with pytest.raises(InvalidRank, match="1 <= rank <= 24"):
        run_import(tmp_path / "in1k_Kfull_dim24.pth", tmp_path / "c.safetensors")


def test_fp16_full_bank_is_accepted(tmp_path: Path):
    torch.save(raw_cls_tokens(100, 16).half(), tmp_path / "half.pth")
    meta = run_import(tmp_path / "half.pth", tmp_path / "b.safetensors", rank=4)
    assert meta.rank == 4 and load_factors(tmp_path / "b.safetensors").B.dtype == np.float32


class Payload:
    """An arbitrary pickled object: weights-only loading must refuse to build it."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("write", "error", "words"),
    [
        (lambda p: p.write_bytes(b"\x00garbage"), BankFileError, "weights-only"),
        (lambda p: p.write_bytes(pickle.dumps(Payload(), protocol=2)), BankFileError, "weights-only"),
        (lambda p: torch.save(torch.randn(10, 4)[:, :0].contiguous(), p), DimensionMismatch, "empty"),
        (lambda p: torch.save([1, 2, 3], p), BankFileError, "list"),
        (lambda p: torch.save({"C": torch.ones(3, 2), "M": torch.ones(4, 2)}, p), BankFileError, "lacks"),
        (
            lambda p: torch.save({**official_svd_dict(raw_cls_tokens(), 4), "M": torch.randn(32, 4)}, p),
            BankFileError,
            "diag",
        ),
        (
            lambda p: torch.save({**official_svd_dict(raw_cls_tokens(), 4), "C": torch.randn(200, 5)}, p),
            DimensionMismatch,
            "inconsistent",
        ),
        (
            lambda p: torch.save({**official_svd_dict(raw_cls_tokens(), 4), "latent_dim": 64}, p),
            DimensionMismatch,
            "latent_dim",
        ),
        (lambda p: torch.save(torch.full((5, 4), float("nan")), p), NonFiniteValue, "NaN"),
    ],
)
def test_bad_files_are_refused_and_write_nothing(tmp_path: Path, write, error, words, capsys):
    src = tmp_path / "in.pth"
    write(src)
    with pytest.raises(error, match=words):
        run_import(src, tmp_path / "out.safetensors", rank=2)
    assert not (tmp_path / "out.safetensors").exists()
    assert "this must never run" not in capsys.readouterr().out
