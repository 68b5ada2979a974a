"""import-bank: both official layouts, written by the test with torch.save as the authors' code does."""

from __future__ import annotations

import json
import os
import pickle
import struct
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
    ).meta
    ours = load_factors(tmp_path / "b.safetensors")
    assert meta.rank == 3 and ours.meta.encoder == "timm/other" and ours.meta.source == "x"
    np.testing.assert_array_equal(ours.S, svd["S"][:3].numpy())
    with pytest.raises(InvalidRank):
        run_import(tmp_path / "dmd.pth", tmp_path / "c.safetensors", rank=9)
    assert not (tmp_path / "c.safetensors").exists()


def test_full_bank_is_normalised_and_factorised(tmp_path: Path):
    bank = raw_cls_tokens(300, 24)
    torch.save(bank, tmp_path / "in1k_Kfull_dim24.pth")
    meta = run_import(tmp_path / "in1k_Kfull_dim24.pth", tmp_path / "b.safetensors", rank=6).meta
    ours = load_factors(tmp_path / "b.safetensors")
    assert meta.normalized is True and ours.meta.normalized is True and ours.rank == 6
    M = torch.nn.functional.normalize(bank.double(), dim=1).numpy()
    mu = M.mean(0)
    S = np.linalg.svd(M - mu, compute_uv=False)
    np.testing.assert_allclose(ours.mu, mu, atol=1e-6)
    np.testing.assert_allclose(ours.S, S[:6], rtol=1e-5)
    assert ours.meta.explained_variance == pytest.approx((S[:6] ** 2).sum() / (S**2).sum(), rel=1e-6)
    with pytest.raises(InvalidRank, match="1 <= rank <= 24"):
        run_import(tmp_path / "in1k_Kfull_dim24.pth", tmp_path / "c.safetensors", rank=25)


def test_fp16_full_bank_is_accepted(tmp_path: Path):
    torch.save(raw_cls_tokens(100, 16).half(), tmp_path / "half.pth")
    meta = run_import(tmp_path / "half.pth", tmp_path / "b.safetensors", rank=4).meta
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


# ----------------------------------------------------------------------------- default rank and storage table


def import_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m training import-bank ...`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "training", "import-bank", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def table_rows(stdout: str) -> dict[int, list[str]]:
    """The storage table's lines split into words, by rank: file bytes, size, unit, / dense, explained,
    mean cos, min cos, then "<-", "written", ... on the written rank's line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "file"]) + 1
    rows = {}
    for line in lines[start:]:
        if not line.split() or not line.split()[0].isdigit():
            break
        rank, *rest = line.split()
        rows[int(rank)] = rest
    return rows


def on_disk(path: Path) -> dict[str, int]:
    """Bytes of each tensor according to the file's own safetensors header, plus the whole file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    assert 8 + n + sum(sizes.values()) == len(raw)  # header + tensors is the whole file
    return {**sizes, "file": len(raw)}


def test_default_full_bank_import_is_lossless_at_rank_d(tmp_path: Path):
    bank = raw_cls_tokens(300, 32)
    torch.save(bank, tmp_path / "full.pth")
    out = tmp_path / "bank.safetensors"
    proc = import_cli(str(tmp_path / "full.pth"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    ours = load_factors(out)
    assert (ours.size, ours.feature_dim, ours.rank) == (300, 32, 32)
    assert "rank 32 of feature_dim 32 (default: full rank d, lossless)" in proc.stdout
    # Every snippet comes back as the unit CLS token, to float32 round-off.
    unit = torch.nn.functional.normalize(bank.double(), dim=1).numpy()
    got = ours.snippets(np.arange(300)).astype(np.float64)
    assert (got * unit).sum(1).min() > 0.9999
    assert np.abs(got - unit).max() < 1e-5
    assert ours.meta.explained_variance == pytest.approx(1.0, abs=1e-9)

    rows = table_rows(proc.stdout)
    assert sorted(rows) == [8, 16, 32]  # a quarter, a half and all of d = 32
    assert "written" in rows[32] and all("written" not in rows[k] for k in (8, 16))
    disk = on_disk(out)
    assert int(rows[32][0].replace(",", "")) == disk["file"]
    assert (disk["C"], disk["B"], disk["S"], disk["mu"]) == (300 * 32 * 4, 32 * 32 * 4, 32 * 4, 32 * 4)
    assert float(rows[32][3]) == pytest.approx(disk["file"] / (300 * 32 * 4), abs=5e-4)
    assert float(rows[32][4]) == pytest.approx(1.0, abs=1e-6) and float(rows[32][6]) > 0.9999
    # Fewer ranks keep less: explained variance and cosine grow with the rank.
    assert float(rows[8][4]) < float(rows[16][4]) < 1.0 and float(rows[8][5]) < float(rows[16][5]) < 1.0
    assert "written file read back" in proc.stdout

    # The other rows say what the file at that rank would be: the real --rank 8 file agrees, to the byte.
    proc8 = import_cli(str(tmp_path / "full.pth"), "--out", str(tmp_path / "r8.safetensors"), "--rank", "8")
    assert proc8.returncode == 0, proc8.stderr
    small = load_factors(tmp_path / "r8.safetensors")
    assert small.rank == 8 and "(--rank)" in proc8.stdout
    disk8 = on_disk(tmp_path / "r8.safetensors")
    assert int(rows[8][0].replace(",", "")) == disk8["file"] and disk8["C"] == 300 * 8 * 4
    rows8 = table_rows(proc8.stdout)
    assert "written" in rows8[8] and "written" not in rows8[32]
    assert rows8[32][:7] == rows[32][:7] and rows8[8][:7] == rows[8][:7]
    # The table's rank-8 cosine is what the written rank-8 file gives.
    cos8 = (small.snippets(np.arange(300)).astype(np.float64) * unit).sum(1)
    assert float(rows[8][5]) == pytest.approx(cos8.mean(), abs=2e-6)
    assert float(rows[8][6]) == pytest.approx(cos8.min(), abs=2e-6)


def test_fewer_rows_than_dimensions_keeps_every_direction_they_span(tmp_path: Path):
    # 20 centred rows span at most 19 directions of the 32: that is the lossless rank.
    bank = raw_cls_tokens(20, 32)
    torch.save(bank, tmp_path / "few.pth")
    result = run_import(tmp_path / "few.pth", tmp_path / "b.safetensors")
    ours = load_factors(tmp_path / "b.safetensors")
    assert ours.rank == result.meta.rank == 19
    assert "19 < d = 32" in result.rank_note
    unit = torch.nn.functional.normalize(bank.double(), dim=1).numpy()
    assert (ours.snippets(np.arange(20)).astype(np.float64) * unit).sum(1).min() > 0.9999
    assert [r.rank for r in result.storage.rows] == [4, 9, 19] and result.storage.written.rank == 19
    with pytest.raises(InvalidRank, match="19 directions"):
        run_import(tmp_path / "few.pth", tmp_path / "c.safetensors", rank=20)


def test_default_svd_dict_import_keeps_its_rank_and_drops_only_exact_zeros(tmp_path: Path):
    svd = official_svd_dict(raw_cls_tokens(), 8)
    torch.save(svd, tmp_path / "dmd.pth")
    whole = run_import(tmp_path / "dmd.pth", tmp_path / "b.safetensors")
    assert whole.meta.rank == 8 and whole.rank_note == "default: the dict's own rank 8, lossless"
    report = whole.storage
    assert [r.rank for r in report.rows] == [2, 4, 8] and report.written.rank == 8
    assert report.written.explained == pytest.approx(1.0) and report.written.min_cosine > 0.99999
    assert report.file_min_cosine > 0.99999 and "dict's own 8 directions" in report.explained_of
    assert report.written.file_bytes == on_disk(tmp_path / "b.safetensors")["file"]
    # A singular value of exactly 0 has zero columns in C and M: dropping it loses nothing.
    zeroed = {**svd, "S": svd["S"].clone(), "C": svd["C"].clone(), "M": svd["M"].clone()}
    zeroed["S"][-1], zeroed["C"][:, -1], zeroed["M"][:, -1] = 0.0, 0.0, 0.0
    torch.save(zeroed, tmp_path / "zero.pth")
    dropped = run_import(tmp_path / "zero.pth", tmp_path / "z.safetensors")
    assert dropped.meta.rank == 7 and "7 directions with non-zero S of 8" in dropped.rank_note
    with pytest.raises(InvalidRank, match="--rank 7 or less"):
        run_import(tmp_path / "zero.pth", tmp_path / "y.safetensors", rank=8)
