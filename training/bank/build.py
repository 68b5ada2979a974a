"""``build-bank``: snippets -> the factorised memory bank (CONTRACT.md sections 1 and 3).

The bank ``M`` (N x d, unit-norm rows) is factorised without ever holding a
second N x d array, in two streaming passes over the rows:

1. accumulate ``sum(M)`` and the d x d scatter ``(M - mu)^T (M - mu)`` in float64
   chunks; its eigenvectors are ``V`` and its eigenvalues ``S^2`` (the squared
   singular values of the centred matrix);
2. ``C = (M - mu) V_r / S_r^(1/2)``, chunk by chunk, which equals ``U_r S_r^(1/2)``.

``B = V_r S_r^(1/2)`` so ``B^T B = diag(S)`` as the bank math expects. Memory:
the input (memory-mapped, pages released after each chunk) plus O(d^2 + N r).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import cast

import numpy as np
import torch
import typer
from tqdm import tqdm

from shared.errors import (
    BankFileError,
    DimensionMismatch,
    GMemError,
    InvalidInput,
    InvalidRank,
    NonFiniteValue,
    ZeroVector,
)
from shared.factors import BankMeta, save_factors
from training.data import load_dataset, to_model_input
from training.encoders.registry import DEFAULT_ENCODER, load_encoder

# Chunks of about 32 MB of float64 keep pass 1's temporaries small at any N.
_CHUNK_BYTES = 32 << 20
# Eigenvalues below this fraction of the largest are numerically zero: the
# direction carries no variance and eq. 10 would divide by ~0.
_RELATIVE_EIG_FLOOR = 1e-10


class CDtype(StrEnum):
    """Storage type of the coefficients C."""

    float32 = "float32"
    float16 = "float16"


@dataclass(frozen=True)
class Factorisation:
    """``mu``, ``B = V S^(1/2)``, ``S``, ``C = U S^(1/2)`` and the fraction of centred energy kept."""

    mu: np.ndarray  # [d] float32
    B: np.ndarray  # [d, r] float32
    S: np.ndarray  # [r] float32
    C: np.ndarray  # [N, r]
    explained_variance: float
    # Every eigenvalue of the centred scatter (S^2 for the kept ones), descending, and all d eigenvectors
    # (sign-fixed; the first r are B / S^(1/2)): what any other rank would keep, without refactorising.
    spectrum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [d] float64
    basis: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [d, d] float64
    # How many directions carry variance above _RELATIVE_EIG_FLOOR: the largest rank allowed.
    directions: int = 0


def default_chunk_rows(d: int) -> int:
    return max(1, _CHUNK_BYTES // (8 * max(1, d)))


def check_feature_array(X: np.ndarray, what: str = "features") -> None:
    """Shape and dtype checks that need no pass over the data."""
    if X.ndim != 2:
        raise DimensionMismatch(f"{what} must be a 2-D array [N, d]; got shape {X.shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise DimensionMismatch(f"{what} is empty (shape {X.shape}); need at least one row and one column")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise InvalidInput(f"{what} has dtype {X.dtype}; expected real numbers (float32/float64)")


def check_rank(rank: int, n: int, d: int) -> None:
    if not 1 <= rank <= min(n, d):
        raise InvalidRank(
            f"rank {rank} is not allowed for {n} rows of dimension {d}; use 1 <= rank <= {min(n, d)}"
        )


def _release(X: np.ndarray) -> None:
    """Drop the already-read pages of a memory-mapped input from this process (re-read on demand)."""
    mm = getattr(X, "_mmap", None) or getattr(getattr(X, "base", None), "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # best effort: only a memory optimisation
            pass


def _rows(X: np.ndarray, start: int, stop: int, normalize: bool, what: str) -> np.ndarray:
    """Rows ``start:stop`` as float64, validated and (optionally) L2-normalised: ``s = f / |f|``."""
    chunk = np.asarray(X[start:stop], dtype=np.float64)
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        bad = start + int(np.argmin(finite))
        raise NonFiniteValue(f"{what}: row {bad} contains NaN or infinite values; every entry must be finite")
    if normalize:
        norms = np.linalg.norm(chunk, axis=1)
        if (norms <= 1e-12).any():
            bad = start + int(np.argmax(norms <= 1e-12))
            raise ZeroVector(f"{what}: row {bad} is a zero vector and cannot be L2-normalised; remove it")
        chunk /= norms[:, None]
    return chunk


def _moments(
    X: np.ndarray, normalize: bool, chunk_rows: int, what: str, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: mean and centred scatter matrix, both float64.

    Sums are taken around a shift (the first chunk's mean) so that
    ``G - n m m^T`` does not cancel catastrophically when the mean is large.
    """
    n, d = X.shape
    shift = _rows(X, 0, min(n, chunk_rows), normalize, what).mean(axis=0)
    total = np.zeros(d)
    gram = np.zeros((d, d))
    for start in tqdm(
        range(0, n, chunk_rows), desc="bank pass 1/2 (scatter)", unit="chunk", disable=not progress
    ):
        chunk = _rows(X, start, start + chunk_rows, normalize, what) - shift
        total += chunk.sum(axis=0)
        gram += chunk.T @ chunk
        _release(X)
    m = total / n
    scatter = gram - n * np.outer(m, m)
    return shift + m, (scatter + scatter.T) / 2.0


def _eigen(scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """All eigenpairs of the scatter (descending, clipped at 0, signs fixed) and how many carry variance."""
    eigvals, eigvecs = np.linalg.eigh(scatter)
    order = np.argsort(eigvals)[::-1]
    eigvals, V = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
    top = eigvals[0] if eigvals.size else 0.0
    kept = int(np.sum(eigvals > _RELATIVE_EIG_FLOOR * top)) if top > 0 else 0
    # Deterministic signs: each basis vector's largest-magnitude component is positive.
    flip = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])
    return eigvals, V * np.where(flip == 0, 1.0, flip), kept


def _choose_rank(rank: int | None, kept: int) -> int:
    """``rank``, or by default every direction in which the centred rows vary (lossless)."""
    if kept == 0:
        raise InvalidRank(
            "every row is the same snippet: the centred features have no variance, so there is nothing "
            "to factorise; give more distinct rows"
        )
    if rank is None:
        return kept
    if rank > kept:
        raise InvalidRank(
            f"rank {rank} is larger than the {kept} directions in which the centred features vary "
            f"(the rest have zero variance); use --rank {kept} or less, or more distinct rows"
        )
    return rank


def explained_by_rank(spectrum: np.ndarray) -> np.ndarray:
    """Share of the centred energy kept at each rank 1..len(spectrum): cumsum(S^2) / trace."""
    total = float(spectrum.sum())
    if total <= 0:
        return np.ones(len(spectrum))
    return np.minimum(np.cumsum(spectrum) / total, 1.0)


def factorise(
    X: np.ndarray,
    rank: int | None = None,
    normalize: bool = True,
    chunk_rows: int | None = None,
    c_dtype: CDtype | str = CDtype.float32,
    what: str = "features",
    progress: bool = True,
) -> Factorisation:
    """Factorise the rows of ``X`` (normalised first when ``normalize``) at ``rank`` in two streaming
    passes; ``rank=None`` keeps every direction with variance (at most min(N - 1, d)): lossless."""
    check_feature_array(X, what)
    n, d = X.shape
    if rank is not None:
        check_rank(rank, n, d)
    chunk_rows = chunk_rows or default_chunk_rows(d)
    mu, scatter = _moments(X, normalize, chunk_rows, what, progress)
    spectrum, basis, kept = _eigen(scatter)
    rank = _choose_rank(rank, kept)
    V = basis[:, :rank]
    S = np.sqrt(spectrum[:rank])  # singular values of the centred matrix
    root_S = np.sqrt(S)
    B = V * root_S
    to_C = V / root_S
    C = np.empty((n, rank), dtype=np.dtype(str(c_dtype)))
    for start in tqdm(
        range(0, n, chunk_rows), desc="bank pass 2/2 (coefficients)", unit="chunk", disable=not progress
    ):
        C[start : start + chunk_rows] = (_rows(X, start, start + chunk_rows, normalize, what) - mu) @ to_C
        _release(X)
    return Factorisation(
        mu=mu.astype(np.float32),
        B=B.astype(np.float32),
        S=S.astype(np.float32),
        C=C,
        explained_variance=float(explained_by_rank(spectrum)[rank - 1]),
        spectrum=spectrum,
        basis=basis,
        directions=kept,
    )


def write_bank(
    out: str | os.PathLike[str],
    fac: Factorisation,
    encoder: str,
    source: str,
    normalized: bool = True,
    labels: np.ndarray | None = None,
    extra: dict[str, str] | None = None,
) -> BankMeta:
    """Save a factorisation as a factors file (atomic); returns its metadata."""
    meta = BankMeta(
        encoder=encoder,
        feature_dim=int(fac.B.shape[0]),
        rank=int(fac.B.shape[1]),
        source=source,
        explained_variance=fac.explained_variance,
        normalized=normalized,
        extra=dict(extra or {}),
    )
    save_factors(out, fac.mu, fac.B, fac.S, fac.C, meta, labels=labels)
    return meta


def open_features(path: str | os.PathLike[str]) -> np.ndarray:
    """An N x d ``.npy`` array, memory-mapped (never pickled)."""
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise BankFileError(f"{path}: no such features file") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise BankFileError(f"{path}: not a readable .npy array of numbers ({exc})") from exc
    if not isinstance(X, np.ndarray):
        raise BankFileError(f"{path}: expected a single .npy array, not an archive")
    return X


def load_labels(path: str | os.PathLike[str], n: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError, EOFError) as exc:
        raise BankFileError(f"{path}: not a readable .npy array of labels ({exc})") from exc
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DimensionMismatch(
            f"{path}: labels must be {n} integers (one per row); got {labels.dtype} {labels.shape}"
        )
    return cast(np.ndarray, labels.astype(np.int64))


def dataset_features(
    dataset: str, encoder_id: str, weights: str | None, batch_size: int = 256, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Raw encoder features ``f(x)`` of every image of ``dataset``, with labels and the source id."""
    ds = load_dataset(dataset)
    encoder = load_encoder(encoder_id, weights, device=device)
    feats = np.empty((len(ds), encoder.feature_dim), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(
            range(0, len(ds), batch_size), desc=f"encode {ds.source} with {encoder_id}", unit="batch"
        ):
            batch = to_model_input(ds.images[start : start + batch_size])
            feats[start : start + batch_size] = encoder.encode(batch, batch_size=batch_size).numpy()
    return feats, ds.labels, ds.source


def build_bank_command(
    out: Path = typer.Option(
        ..., "--out", envvar="GMEM_BANK_OUT", help="factors file to write (.safetensors)"
    ),
    rank: int = typer.Option(..., "--rank", envvar="GMEM_BANK_RANK", help="rank r of the factorisation"),
    features: Path | None = typer.Option(
        None, "--features", envvar="GMEM_FEATURES", help="N x d .npy array of raw features f(x)"
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        envvar="GMEM_DATASET",
        help="mnist-5k[:train|:eval] or DIR/<class>/*.png|jpg|jpeg|webp",
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        envvar="GMEM_ENCODER",
        help="encoder id (default gmem/mnist-ssl; with --features: recorded only)",
    ),
    encoder_weights: str | None = typer.Option(
        None, "--encoder-weights", envvar="GMEM_ENCODER_WEIGHTS", help="local weights file of the encoder"
    ),
    labels: Path | None = typer.Option(
        None, "--labels", envvar="GMEM_LABELS", help="with --features: .npy of N integer labels"
    ),
    source: str | None = typer.Option(
        None, "--source", envvar="GMEM_SOURCE", help="with --features: dataset id recorded in the file"
    ),
    c_dtype: CDtype = typer.Option(
        CDtype.float32, "--c-dtype", envvar="GMEM_BANK_C_DTYPE", help="storage type of C"
    ),
    batch_size: int = typer.Option(
        256, "--batch-size", min=1, envvar="GMEM_BATCH_SIZE", help="encoder batch size"
    ),
    device: str = typer.Option("cpu", "--device", envvar="GMEM_DEVICE", help="torch device for the encoder"),
) -> None:
    """Build a memory bank factors file from features or from a dataset through an encoder."""
    try:
        meta = run_build(
            out,
            rank,
            features,
            dataset,
            encoder,
            encoder_weights,
            labels,
            source,
            c_dtype,
            batch_size,
            device,
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"wrote {out}: rank {meta.rank} of feature_dim {meta.feature_dim}, "
        f"explained variance {meta.explained_variance:.4f}, encoder {meta.encoder}, source {meta.source}"
    )


def run_build(
    out: Path,
    rank: int,
    features: Path | None,
    dataset: str | None,
    encoder: str | None,
    encoder_weights: str | None,
    labels: Path | None,
    source: str | None,
    c_dtype: CDtype = CDtype.float32,
    batch_size: int = 256,
    device: str = "cpu",
) -> BankMeta:
    """The build-bank command without its CLI shell (one source: features or dataset)."""
    if (features is None) == (dataset is None):
        raise InvalidInput("give exactly one source: --features F.npy or --dataset NAME_OR_DIR")
    if features is not None:
        X = open_features(features)
        check_feature_array(X, str(features))
        check_rank(rank, *X.shape)
        label_arr = load_labels(labels, X.shape[0]) if labels is not None else None
        fac = factorise(X, rank, c_dtype=c_dtype, what=str(features))
        return write_bank(out, fac, encoder or "unknown", source or Path(features).name, labels=label_arr)
    if labels is not None:
        raise InvalidInput("--labels goes with --features; a dataset brings its own labels")
    assert dataset is not None  # exactly one source, checked above
    encoder = encoder or DEFAULT_ENCODER
    X, label_arr, src = dataset_features(dataset, encoder, encoder_weights, batch_size, device)
    check_rank(rank, *X.shape)
    fac = factorise(X, rank, c_dtype=c_dtype, what=f"features of {src}")
    return write_bank(out, fac, encoder, source or src, labels=label_arr)
