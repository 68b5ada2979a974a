"""What a bank costs and keeps at each rank: the table ``import-bank`` and ``import-official`` print.

For a few ranks r (64, 128, 256, 512, d, clipped to what the data allows, plus the rank written):
the exact bytes of the factors file (CONTRACT.md section 1: mu [d], B [d, r], S [r] float32, C [N, r]),
its ratio to the dense N x d float32 snippets, the share of the centred energy kept
(``cumsum(S^2) / trace``) and the cosine between ``normalize(C_r B_r^T + mu)`` and the snippet it
stands for, over a bounded random sample of rows. One factorisation serves every rank: the sampled
rows' coefficients are truncated, never recomputed. Finally the written file itself is read back and
the same rows compared, so "lossless" is measured on disk, not assumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.factors import BankMeta, factors_nbytes, load_factors

REPORT_RANKS = (64, 128, 256, 512)
COSINE_SAMPLE = 2000
SAMPLE_SEED = 0


@dataclass(frozen=True)
class RankRow:
    """One line of the table: one rank's file size and what it keeps."""

    rank: int
    file_bytes: int
    dense_ratio: float
    explained: float
    mean_cosine: float
    min_cosine: float
    written: bool


@dataclass(frozen=True)
class StorageReport:
    """The table for one bank, with the check of the file actually written."""

    n: int
    d: int
    rows: tuple[RankRow, ...]
    sample: int
    explained_of: str  # what "explained" is a share of
    cosine_against: str  # what the reconstruction is compared with
    file_mean_cosine: float
    file_min_cosine: float
    file_max_error: float  # largest |entry| of (file snippet - reference snippet) over the sample

    @property
    def dense_bytes(self) -> int:
        return 4 * self.n * self.d

    @property
    def written(self) -> RankRow:
        return next(r for r in self.rows if r.written)


def report_ranks(max_rank: int, written: int) -> list[int]:
    """The standard ranks below ``max_rank`` (a quarter and a half of it for a small bank), ``max_rank``
    itself and the written rank."""
    below = [k for k in REPORT_RANKS if k < max_rank] or [k for k in (max_rank // 4, max_rank // 2) if k]
    return sorted({*below, max_rank, written})


def sample_rows(n: int, size: int = COSINE_SAMPLE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A fixed random subset of row ids (all rows when N <= size), ascending."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def cosine_by_rank(
    T: np.ndarray, mu: np.ndarray, B: np.ndarray, c: np.ndarray, ranks: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and min over rows of cos(mu + c[:, :k] B[:, :k]^T, T) for each k in ``ranks``.

    Cumulative sums over the columns give every k from one pass: the dot product grows by
    ``c_k (B_k . t)`` and the squared norm by ``2 c_k (B_k . mu) + c_k sum_{l<=k} c_l (B_l . B_k) (x2 off
    the diagonal)``, so B need not be orthogonal (an imported dict's is only to float32 round-off).
    """
    T, mu, B, c = (np.asarray(a, dtype=np.float64) for a in (T, mu, B, c))
    gram = B.T @ B
    H = 2.0 * np.triu(gram, 1) + np.diag(np.diag(gram))
    dot = (T @ mu)[:, None] + np.cumsum(c * (T @ B), axis=1)
    sq = float(mu @ mu) + np.cumsum(2.0 * c * (B.T @ mu) + c * (c @ H), axis=1)
    t_norm = np.linalg.norm(T, axis=1, keepdims=True)
    cos = dot / np.maximum(np.sqrt(np.maximum(sq, 0.0)) * t_norm, 1e-300)
    picked = cos[:, [k - 1 for k in ranks]]
    return picked.mean(axis=0), picked.min(axis=0)


def file_check(path: str | Path, ids: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Mean and min cosine, and the largest entry-wise error, of the written file's snippets ``ids``
    against the normalised ``reference`` rows."""
    got = load_factors(path).snippets(ids).astype(np.float64)
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1)
    return float(cos.mean()), float(cos.min()), float(np.abs(got - ref).max())


def build_report(
    *,
    n: int,
    meta: BankMeta,
    c_dtype: np.dtype | type,
    explained: np.ndarray,
    mean_cos: np.ndarray,
    min_cos: np.ndarray,
    ranks: list[int],
    sample: int,
    explained_of: str,
    cosine_against: str,
    checked: tuple[float, float, float],
    record_explained: bool = True,
) -> StorageReport:
    """Assemble the rows; each size is that of the file ``save_factors`` would write at that rank."""
    rows = []
    for k, mean, low in zip(ranks, mean_cos, min_cos, strict=True):
        ev = float(explained[k - 1])
        at_k = dataclasses.replace(meta, rank=k, explained_variance=ev if record_explained else float("nan"))
        size = factors_nbytes(n, at_k, c_dtype)
        ratio = size / (4 * n * meta.feature_dim)
        rows.append(RankRow(k, size, ratio, ev, float(mean), float(low), written=k == meta.rank))
    return StorageReport(
        n=n,
        d=meta.feature_dim,
        rows=tuple(rows),
        sample=sample,
        explained_of=explained_of,
        cosine_against=cosine_against,
        file_mean_cosine=checked[0],
        file_min_cosine=checked[1],
        file_max_error=checked[2],
    )


def human_bytes(n: int) -> str:
    """Decimal units, as disks are sold: 3.94 GB."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 999.5 or unit == "TB":  # 999.5 and up prints as 1.00 of the next unit
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:#.3g}".rstrip(".") + f" {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_report(report: StorageReport, note: str = "") -> str:
    """The table as plain text (fixed columns, so it survives logs and narrow terminals)."""
    lines = [
        f"bank storage by rank: N = {report.n:,} rows, d = {report.d}; dense N x d float32 snippets = "
        f"{report.dense_bytes:,} bytes ({human_bytes(report.dense_bytes)})",
        f"{'rank':>6} {'file bytes':>16} {'size':>9} {'/ dense':>8} {'explained':>10} "
        f"{'mean cos':>9} {'min cos':>9}",
    ]
    for r in report.rows:
        lines.append(
            f"{r.rank:>6} {r.file_bytes:>16,} {human_bytes(r.file_bytes):>9} {r.dense_ratio:>8.3f} "
            f"{r.explained:>10.6f} {r.mean_cosine:>9.6f} {r.min_cosine:>9.6f}"
            + ("  <- written" + (f" ({note})" if note else "") if r.written else "")
        )
    lines += [
        f"explained: share of {report.explained_of}",
        f"cos: normalize(C_r B_r^T + mu) against {report.cosine_against}, "
        f"{report.sample:,} {'random ' if report.sample < report.n else ''}rows",
        f"written file read back: mean cos {report.file_mean_cosine:.6f}, min {report.file_min_cosine:.6f} "
        f"(1 - min = {1.0 - report.file_min_cosine:.1e}), max |snippet error| {report.file_max_error:.1e} "
        "over the same rows",
    ]
    return "\n".join(lines)
