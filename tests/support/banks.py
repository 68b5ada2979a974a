"""Small real factors files, written with the project's own writer (``shared.factors.save_factors``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.factors import BankMeta, save_factors

N0, D, R = 300, 24, 8
ENCODER_ID = "test/grey-4x6"


def bank_labels(n: int) -> np.ndarray:
    """Class i % 10, with every 7th row unknown (-1)."""
    idx = np.arange(n)
    return np.where(idx % 7 == 0, -1, idx % 10)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    rows = rng.standard_normal((n, d))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@dataclass(frozen=True)
class Factors:
    """The rank-r SVD factorisation of the bank (CONTRACT.md section 1): ``C B^T + mu`` ~ rows."""

    mu: np.ndarray
    B: np.ndarray
    S: np.ndarray
    C: np.ndarray
    explained_variance: float


def svd_factors(rows: np.ndarray, r: int) -> Factors:
    mu = rows.mean(axis=0)
    U, S, Vt = np.linalg.svd(rows - mu, full_matrices=False)
    root = np.sqrt(S[:r])
    return Factors(mu, Vt[:r].T * root, S[:r], U[:, :r] * root, float((S[:r] ** 2).sum() / (S**2).sum()))


@dataclass(frozen=True)
class SyntheticBank:
    path: Path
    snippets: np.ndarray  # the unit-norm rows that were factorised [N0, D]
    mu: np.ndarray
    B: np.ndarray
    S: np.ndarray
    C: np.ndarray


def make_bank(
    path: Path,
    n: int = N0,
    d: int = D,
    r: int = R,
    seed: int = 0,
    encoder: str = ENCODER_ID,
    labels: bool | np.ndarray = True,
    rows: np.ndarray | None = None,
    source: str = "synthetic",
) -> SyntheticBank:
    """A rank-r factorisation of ``rows`` (default: n random unit rows of dimension d) written to ``path``."""
    rows = unit_rows(np.random.default_rng(seed), n, d) if rows is None else rows
    f = svd_factors(rows, r)
    meta = BankMeta(
        encoder=encoder,
        feature_dim=rows.shape[1],
        rank=r,
        source=source,
        explained_variance=f.explained_variance,
    )
    row_labels = labels if isinstance(labels, np.ndarray) else (bank_labels(len(rows)) if labels else None)
    save_factors(path, f.mu, f.B, f.S, f.C, meta, labels=row_labels)
    f32 = np.float32
    return SyntheticBank(path, rows, f.mu.astype(f32), f.B.astype(f32), f.S.astype(f32), f.C.astype(f32))
