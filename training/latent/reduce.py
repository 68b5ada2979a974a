"""``python -m training reduce-bank``: k representatives per label (paper appendix E).

- ``random@k``: k rows of each label drawn without replacement (seeded), kept exactly
  (their coefficients are copied);
- ``average@k``: each label's snippets split into k groups by spherical k-means
  (a few Lloyd iterations from k seeded rows), each group's mean re-normalised to a unit
  snippet and projected onto the bank's subspace (eq. 10, ``c = (g - mu) B / S``).

The reduced bank keeps the source bank's ``mu``, ``B`` and ``S`` (same encoder, feature
dimension and rank), so it serves any model the source bank serves; its ``labels``
tensor records each representative's label, which ``"label"`` on ``POST /generate``
draws from. A label with fewer than k rows keeps all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from shared.errors import GMemError, InvalidInput
from shared.factors import BankFactors, load_factors, save_factors

METHODS = ("random", "average")
KMEANS_ITERS = 10


def parse_method(method: str, k: int | None) -> tuple[str, int]:
    """``random@k`` / ``average@k`` (literal k, then --k) or ``random@5``; both forms must agree."""
    name, _, tail = method.partition("@")
    if name not in METHODS or not tail:
        raise InvalidInput(f"--method must be random@k or average@k; got {method!r}")
    if tail != "k":
        if not tail.isdigit():
            raise InvalidInput(f"--method {method!r}: the part after @ is k or a whole number")
        if k is not None and k != int(tail):
            raise InvalidInput(f"--method {method!r} and --k {k} disagree")
        k = int(tail)
    if k is None or k < 1:
        raise InvalidInput(f"k (representatives per label) must be a whole number >= 1; got {k}")
    return name, k


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k unit centroids of unit rows x (cosine assignment, mean then normalise)."""
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(KMEANS_ITERS):
        assign = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres


def reduce_bank(bank: BankFactors, method: str, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [M, r], labels [M]) of the reduced bank, labels ascending, rows in source order per
    label."""
    if bank.labels is None or not np.any(np.asarray(bank.labels) >= 0):
        raise InvalidInput(
            f"{bank.path}: the bank has no labels; reduce-bank keeps k rows per label and needs "
            "a labelled bank (build-bank --dataset on a labelled dataset records them)"
        )
    labels = np.asarray(bank.labels)
    rng = np.random.default_rng(seed)
    coeffs, out_labels = [], []
    for label in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == label)
        if method == "random" or len(rows) <= k:
            pick = np.sort(rng.choice(rows, size=min(k, len(rows)), replace=False))
            c = np.asarray(bank.C[pick], dtype=np.float32)
        else:
            centres = _spherical_kmeans(bank.snippets(rows).astype(np.float64), k, rng)
            c = ((centres - bank.mu.astype(np.float64)) @ bank.B.astype(np.float64) / bank.S).astype(
                np.float32
            )
        coeffs.append(c)
        out_labels.append(np.full(len(c), int(label), dtype=np.int64))
    return np.concatenate(coeffs), np.concatenate(out_labels)


def reduce_bank_command(
    bank: Annotated[Path, typer.Option(help="labelled bank factors file", envvar="GMEM_BANK")],
    method: Annotated[str, typer.Option(help="random@k or average@k", envvar="GMEM_REDUCE_METHOD")],
    out: Annotated[Path, typer.Option(help="reduced factors file to write", envvar="GMEM_OUT")],
    k: Annotated[int | None, typer.Option(help="representatives per label", envvar="GMEM_REDUCE_K")] = None,
    seed: Annotated[int, typer.Option(help="seed of the draw / k-means start", envvar="GMEM_SEED")] = 0,
) -> None:
    """Reduce a labelled bank to k representatives per label (appendix E)."""
    try:
        name, k = parse_method(method, k)
        src = load_factors(bank)
        C, labels = reduce_bank(src, name, k, seed)
        meta = src.meta.__class__(
            encoder=src.meta.encoder,
            feature_dim=src.meta.feature_dim,
            rank=src.meta.rank,
            source=src.meta.source,
            explained_variance=src.meta.explained_variance,
            normalized=src.meta.normalized,
            extra={
                **src.meta.extra,
                "reduced_from": str(bank),
                "reduction": f"{name}@{k}",
                "reduction_seed": str(seed),
            },
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        save_factors(out, src.mu, src.B, src.S, C, meta, labels=labels)
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"wrote {out}: {len(C)} snippets ({name}@{k} over {len(np.unique(labels))} labels) from {src.size}"
    )
