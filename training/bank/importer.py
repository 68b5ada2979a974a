"""``import-bank``: the paper authors' memory-bank files -> our factors file (CONTRACT.md section 1).

Two layouts come out of the official release (LINs-lab/GMem ``utils/svd_utils.py``):

- the SVD ("dmd") dict ``{C [N, r], M [d, r], S [r], mean [d], latent_dim, feature_dim}``
  built from *raw* DINOv2 CLS tokens: ``M = V S^(1/2)`` is our ``B`` and ``mean``
  our ``mu``, so it imports as-is with ``normalized=false`` (eq. 10 then uses ``g = f``);
- the full bank, one tensor ``[N, d]`` of raw CLS tokens: rows are L2-normalised
  and factorised by the same streaming code as ``build-bank``.

Foreign pickles are opened with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from shared.errors import BankFileError, DimensionMismatch, GMemError, InvalidRank
from shared.factors import BankMeta, save_factors
from training.bank.build import CDtype, check_feature_array, check_rank, factorise, write_bank

SVD_KEYS = ("C", "M", "S", "mean")
DEFAULT_FULL_RANK = 64
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


def import_svd_dict(obj: dict[str, Any], path: str | Path, rank: int | None = None) -> tuple[np.ndarray, ...]:
    """Validate the authors' SVD dict and return ``mu, B, S, C`` (optionally truncated to ``rank``)."""
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
    if rank is not None:
        check_rank(rank, C.shape[0], r)
        C, B, S = C[:, :rank], B[:, :rank], S[:rank]
    if float(S[-1]) <= 0.0:
        raise InvalidRank(f"{path}: singular value {S.shape[0] - 1} is zero; import with a smaller --rank")
    return mu, B, S, np.ascontiguousarray(C)


def run_import(
    src: str | Path,
    out: str | Path,
    rank: int | None = None,
    encoder: str = "timm/vit_base_patch14_dinov2",
    source: str = "gmem-official",
    c_dtype: CDtype = CDtype.float32,
) -> BankMeta:
    """Convert one official bank file at ``src`` into a factors file at ``out``."""
    obj = read_official(src)
    if isinstance(obj, dict):
        mu, B, S, C = import_svd_dict(obj, src, rank)
        meta = BankMeta(
            encoder=encoder,
            feature_dim=int(B.shape[0]),
            rank=int(B.shape[1]),
            source=source,
            # The dict holds no trace of the discarded directions: the kept share is unknown.
            explained_variance=math.nan,
            normalized=False,
            extra={"imported_from": Path(src).name, "official_layout": "svd"},
        )
        save_factors(out, mu, B, S, C.astype(np.dtype(str(c_dtype))), meta)
        return meta
    if isinstance(obj, torch.Tensor):
        X = _array(obj, "bank", src)
        check_feature_array(X, f"{src} (full bank)")
        r = DEFAULT_FULL_RANK if rank is None else rank
        check_rank(r, *X.shape)
        fac = factorise(X, r, normalize=True, c_dtype=c_dtype, what=f"{src} (full bank)")
        return write_bank(
            out,
            fac,
            encoder,
            source,
            normalized=True,
            extra={"imported_from": Path(src).name, "official_layout": "full"},
        )
    raise BankFileError(
        f"{src}: holds a {type(obj).__name__}; expected the authors' SVD dict (C, M, S, mean, latent_dim, "
        "feature_dim) or a full-bank tensor [N, d]"
    )


def import_bank_command(
    src: Path = typer.Argument(..., help="the authors' bank file (.pth): SVD dict or full-bank tensor"),
    out: Path = typer.Option(
        ..., "--out", envvar="GMEM_BANK_OUT", help="factors file to write (.safetensors)"
    ),
    rank: int | None = typer.Option(
        None,
        "--rank",
        envvar="GMEM_BANK_RANK",
        help=f"rank (full bank: default {DEFAULT_FULL_RANK}; SVD dict: truncate)",
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
        meta = run_import(src, out, rank, encoder, source, c_dtype)
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"wrote {out}: rank {meta.rank} of feature_dim {meta.feature_dim}, normalized "
        f"{str(meta.normalized).lower()}, explained variance {meta.explained_variance:.4f}"
    )
