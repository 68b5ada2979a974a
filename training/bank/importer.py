"""``import-bank``: the paper authors' memory-bank files -> our factors file (CONTRACT.md section 1).

Two layouts come out of the official release (LINs-lab/GMem ``utils/svd_utils.py``):

- the SVD ("dmd") dict ``{C [N, r], M [d, r], S [r], mean [d], latent_dim, feature_dim}``
  built from *raw* DINOv2 CLS tokens: ``M = V S^(1/2)`` is our ``B`` and ``mean``
  our ``mu``, so it imports as-is with ``normalized=false`` (eq. 10 then uses ``g = f``);
- the full bank, one tensor ``[N, d]`` of raw CLS tokens: rows are L2-normalised
  and factorised by the same streaming code as ``build-bank``.

Without ``--rank`` nothing is dropped: a full bank is factorised at rank d (the SVD of the
centred snippets keeps every direction, so the file reconstructs each snippet to float32
round-off, as the release's network saw it), an SVD dict keeps its own rank. The command
prints what each rank would cost and keep (``training.bank.storage``).

Foreign pickles are opened with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from shared.errors import BankFileError, DimensionMismatch, GMemError, InvalidRank
from shared.factors import BankMeta, save_factors
from training.bank.build import (
    CDtype,
    check_feature_array,
    check_rank,
    explained_by_rank,
    factorise,
    write_bank,
)
from training.bank.storage import (
    StorageReport,
    build_report,
    cosine_by_rank,
    file_check,
    format_report,
    report_ranks,
    sample_rows,
)

SVD_KEYS = ("C", "M", "S", "mean")
# M^T M must equal diag(S) up to float32 round-off accumulated over d terms.
_ORTHO_TOLERANCE = 1e-3


def read_official(path: str | Path) -> Any:
    """The object inside an official ``.pth``: a state dict or a tensor (weights-only unpickling)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise BankFileError(f"{path}: no such file") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise BankFileError(
            f"{path}: not a loadable weights-only torch file ({type(exc).__name__}: {exc}); expected the "
            "authors' SVD dict (C, M, S, mean, latent_dim, feature_dim) or a full-bank tensor [N, d]"
        ) from exc


def _array(obj: object, name: str, path: str | Path) -> np.ndarray:
    if not isinstance(obj, torch.Tensor):
        raise BankFileError(f"{path}: entry {name!r} is {type(obj).__name__}, expected a tensor")
    if not obj.is_floating_point():
        raise BankFileError(f"{path}: entry {name!r} has dtype {obj.dtype}, expected floating point")
    return obj.detach().to(torch.float32).numpy()


def import_svd_dict(obj: dict[str, Any], path: str | Path) -> tuple[np.ndarray, ...]:
    """Validate the authors' SVD dict and return its ``mu, B, S, C`` at the dict's own rank."""
    missing = [k for k in SVD_KEYS if k not in obj]
    if missing:
        raise BankFileError(
            f"{path}: SVD bank dict lacks {missing}; expected keys C, M, S, mean, latent_dim, feature_dim"
        )
    C, B, S, mu = (_array(obj[k], k, path) for k in SVD_KEYS)
    if B.ndim != 2 or C.ndim != 2 or S.ndim != 1 or mu.ndim != 1:
        raise DimensionMismatch(
            f"{path}: expected C [N, r], M [d, r], S [r], mean [d]; "
            f"got C {C.shape}, M {B.shape}, S {S.shape}, mean {mu.shape}"
        )
    d, r = B.shape
    if C.shape[1] != r or S.shape[0] != r or mu.shape[0] != d:
        raise DimensionMismatch(
            f"{path}: inconsistent shapes C {C.shape}, M {B.shape}, S {S.shape}, mean {mu.shape}"
        )
    for key, expected in (("latent_dim", r), ("feature_dim", d)):
        if key in obj and int(obj[key]) != expected:
            raise DimensionMismatch(f"{path}: {key} = {int(obj[key])} but the tensors say {expected}")
    for name, arr in (("C", C), ("M", B), ("S", S), ("mean", mu)):
        if not np.isfinite(arr).all():
            raise BankFileError(f"{path}: {name} contains NaN or infinite values")
    if np.any(np.diff(S) > 1e-6 * max(float(S[0]), 1e-30)):
        raise BankFileError(f"{path}: S must be sorted descending (singular values); got {S[:8]}...")
    gram = B.astype(np.float64).T @ B.astype(np.float64)
    err = float(np.abs(gram - np.diag(S.astype(np.float64))).max())
    if err > _ORTHO_TOLERANCE * max(float(S.max()), 1e-30):
        raise BankFileError(
            f"{path}: M^T M differs from diag(S) by up to {err:.3g}; a GMem SVD bank has M = V S^(1/2)"
        )
    return mu, B, S, C


def svd_rank(S: np.ndarray, n: int, rank: int | None, path: str | Path) -> int:
    """``rank``, or by default every stored direction with a non-zero singular value (lossless: a zero
    one has zero columns in both C and M and adds nothing to any row)."""
    nonzero = int(np.sum(S > 0.0))
    if rank is None:
        if nonzero == 0:
            raise InvalidRank(f"{path}: every singular value is zero; the dict holds no variation")
        return nonzero
    check_rank(rank, n, S.shape[0])
    if rank > nonzero:
        raise InvalidRank(f"{path}: singular value {nonzero} is zero; import with --rank {nonzero} or less")
    return rank


@dataclass(frozen=True)
class BankImport:
    """What an import wrote (its metadata), why at that rank, and what each rank would cost and keep."""

    meta: BankMeta
    storage: StorageReport
    rank_note: str  # "--rank", or how the default (lossless) rank came from the data


def _svd_import(
    obj: dict[str, Any], src: str | Path, out: str | Path, rank: int | None, meta: BankMeta, c_dtype: CDtype
) -> BankImport:
    mu, B, S, C = import_svd_dict(obj, src)
    r = svd_rank(S, C.shape[0], rank, src)
    meta = dataclasses.replace(meta, feature_dim=int(B.shape[0]), rank=r)
    C_r = np.ascontiguousarray(C[:, :r]).astype(np.dtype(str(c_dtype)), copy=False)
    save_factors(out, mu, B[:, :r], S[:r], C_r, meta)
    # The original features are not in the dict: ranks are measured against its own full reconstruction.
    ids = sample_rows(C.shape[0])
    reference = C[ids].astype(np.float64) @ B.T.astype(np.float64) + mu
    nonzero = int(np.sum(S > 0.0))
    ranks = report_ranks(nonzero, r)
    mean_cos, min_cos = cosine_by_rank(reference, mu, B, C[ids], ranks)
    storage = build_report(
        n=C.shape[0],
        meta=meta,
        c_dtype=np.dtype(str(c_dtype)),
        explained=explained_by_rank(S.astype(np.float64) ** 2),
        mean_cos=mean_cos,
        min_cos=min_cos,
        ranks=ranks,
        sample=len(ids),
        explained_of=f"the dict's own {S.shape[0]} directions (the original features are not in the file)",
        cosine_against=f"the dict's full rank-{S.shape[0]} snippets",
        checked=file_check(out, ids, reference),
        record_explained=False,
    )
    if rank is not None:
        note = "--rank"
    elif r == S.shape[0]:
        note = f"default: the dict's own rank {r}, lossless"
    else:
        note = f"default: the dict's {r} directions with non-zero S of {S.shape[0]}, lossless"
    return BankImport(meta, storage, note)


def _full_import(
    X: np.ndarray, src: str | Path, out: str | Path, rank: int | None, meta: BankMeta, c_dtype: CDtype
) -> BankImport:
    check_feature_array(X, f"{src} (full bank)")
    if rank is not None:
        check_rank(rank, *X.shape)
    fac = factorise(X, rank, normalize=True, c_dtype=c_dtype, what=f"{src} (full bank)")
    meta = write_bank(out, fac, meta.encoder, meta.source, normalized=True, extra=meta.extra)
    ids = sample_rows(X.shape[0])
    unit = np.asarray(X[ids], dtype=np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    # Every rank from the one eigendecomposition: coefficients on the orthonormal basis, truncated.
    mu = fac.mu.astype(np.float64)
    ranks = report_ranks(fac.directions, meta.rank)
    mean_cos, min_cos = cosine_by_rank(unit, mu, fac.basis, (unit - mu) @ fac.basis, ranks)
    storage = build_report(
        n=X.shape[0],
        meta=meta,
        c_dtype=np.dtype(str(c_dtype)),
        explained=explained_by_rank(fac.spectrum),
        mean_cos=mean_cos,
        min_cos=min_cos,
        ranks=ranks,
        sample=len(ids),
        explained_of="the centred energy of the unit snippets",
        cosine_against="the unit snippet f/|f|",
        checked=file_check(out, ids, unit),
    )
    if rank is not None:
        note = "--rank"
    elif meta.rank == meta.feature_dim:
        note = "default: full rank d, lossless"
    else:
        # N - 1 < d centred rows, or features confined to fewer directions: the rest carry no variance.
        note = f"default: every direction with variance, {meta.rank} < d = {meta.feature_dim}"
    return BankImport(meta, storage, note)


def run_import(
    src: str | Path,
    out: str | Path,
    rank: int | None = None,
    encoder: str = "timm/vit_base_patch14_dinov2",
    source: str = "gmem-official",
    c_dtype: CDtype = CDtype.float32,
) -> BankImport:
    """Convert one official bank file at ``src`` into a factors file at ``out``.

    ``rank=None`` keeps everything (lossless): a full bank at rank d, or fewer where the centred rows
    vary in fewer directions (N - 1 < d, or degenerate features); an SVD dict at its own rank.
    """
    obj = read_official(src)
    layout = "svd" if isinstance(obj, dict) else "full" if isinstance(obj, torch.Tensor) else None
    if layout is None:
        raise BankFileError(
            f"{src}: holds a {type(obj).__name__}; expected the authors' SVD dict (C, M, S, mean, "
            "latent_dim, feature_dim) or a full-bank tensor [N, d]"
        )
    # d and r are filled in once the file is read; the dict keeps no trace of its discarded directions,
    # so its explained variance stays unknown.
    meta = BankMeta(
        encoder=encoder,
        feature_dim=0,
        rank=0,
        source=source,
        explained_variance=math.nan,
        normalized=layout == "full",
        extra={"imported_from": Path(src).name, "official_layout": layout},
    )
    if isinstance(obj, dict):
        return _svd_import(obj, src, out, rank, meta, c_dtype)
    return _full_import(_array(obj, "bank", src), src, out, rank, meta, c_dtype)


def import_bank_command(
    src: Path = typer.Argument(..., help="the authors' bank file (.pth): SVD dict or full-bank tensor"),
    out: Path = typer.Option(
        ..., "--out", envvar="GMEM_BANK_OUT", help="factors file to write (.safetensors)"
    ),
    rank: int | None = typer.Option(
        None,
        "--rank",
        envvar="GMEM_BANK_RANK",
        help="rank (default: lossless, i.e. full rank d for a full bank, the dict's own rank for an SVD "
        "dict; smaller truncates)",
    ),
    encoder: str = typer.Option(
        "timm/vit_base_patch14_dinov2",
        "--encoder",
        envvar="GMEM_ENCODER",
        help="encoder id recorded in the file",
    ),
    source: str = typer.Option(
        "gmem-official", "--source", envvar="GMEM_SOURCE", help="dataset id recorded in the file"
    ),
    c_dtype: CDtype = typer.Option(
        CDtype.float32, "--c-dtype", envvar="GMEM_BANK_C_DTYPE", help="storage type of C"
    ),
) -> None:
    """Import the paper authors' memory bank (SVD dict or full tensor) as a factors file."""
    try:
        result = run_import(src, out, rank, encoder, source, c_dtype)
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    meta = result.meta
    typer.echo(
        f"wrote {out}: rank {meta.rank} of feature_dim {meta.feature_dim} ({result.rank_note}), normalized "
        f"{str(meta.normalized).lower()}, explained variance {meta.explained_variance:.4f}"
    )
    typer.echo(format_report(result.storage, result.rank_note))
