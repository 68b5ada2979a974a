"""The bank factors file (CONTRACT.md section 1): safetensors with mu, B, S, C and labels.

Reading memory-maps the tensors (no copy of C at open); writing goes through a
temporary file, fsync and rename, so a reader never sees a partial file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import fileio
from shared.bankmath import snippets_from_coefficients
from shared.errors import BankFileError, DimensionMismatch, UnknownFormat, UnknownSnippet

FORMAT = "gmem-bank"
FORMAT_VERSION = "1"

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "F64": np.float64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class BankMeta:
    """The file's ``__metadata__``: which encoder made the snippets, from what, at what rank."""

    encoder: str
    feature_dim: int
    rank: int
    source: str
    explained_variance: float
    normalized: bool = True
    format: str = FORMAT
    format_version: str = FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        # safetensors metadata is str -> str (and CONTRACT.md says "all values strings").
        out = {str(k): str(v) for k, v in self.extra.items()}
        out.update(
            format=self.format,
            format_version=self.format_version,
            encoder=self.encoder,
            feature_dim=str(self.feature_dim),
            rank=str(self.rank),
            source=self.source,
            explained_variance=repr(float(self.explained_variance)),
            normalized="true" if self.normalized else "false",
        )
        return out

    @classmethod
    def from_strings(cls, md: dict[str, str], path: str = "") -> BankMeta:
        fmt, ver = md.get("format"), md.get("format_version")
        if fmt != FORMAT or ver != FORMAT_VERSION:
            raise UnknownFormat(
                f"{path or 'bank file'}: format={fmt!r} format_version={ver!r}; this reader knows "
                f"format={FORMAT!r} format_version={FORMAT_VERSION!r}"
            )
        known = {
            "format",
            "format_version",
            "encoder",
            "feature_dim",
            "rank",
            "source",
            "explained_variance",
            "normalized",
        }
        not_text = sorted(k for k, v in md.items() if not isinstance(v, str))
        if not_text:
            raise BankFileError(f"{path}: metadata values must be strings; {not_text} are not")
        # Anything but true/false would silently pick the wrong eq. 10 (g = f/|f| versus g = f).
        normalized = md.get("normalized", "true").lower()
        if normalized not in ("true", "false"):
            raise BankFileError(
                f"{path}: metadata normalized={md['normalized']!r}; expected 'true' or 'false'"
            )
        try:
            return cls(
                encoder=md["encoder"],
                feature_dim=int(md["feature_dim"]),
                rank=int(md["rank"]),
                source=md.get("source", ""),
                explained_variance=float(md.get("explained_variance", "nan")),
                normalized=normalized == "true",
                extra={k: v for k, v in md.items() if k not in known},
            )
        except (KeyError, ValueError) as exc:
            raise BankFileError(f"{path}: bad or missing metadata field: {exc}") from exc


@dataclass(frozen=True)
class BankFactors:
    """A loaded bank: ``s_i = normalize(C[i] B^T + mu)``. C and labels may be memory-mapped."""

    mu: np.ndarray  # [d] float32
    B: np.ndarray  # [d, r] float32
    S: np.ndarray  # [r] float32
    C: np.ndarray  # [N, r] float32 or float16
    labels: np.ndarray | None  # [N] int64
    meta: BankMeta
    path: str = ""

    @property
    def size(self) -> int:
        return int(self.C.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.B.shape[0])

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    def coefficients(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Coefficient rows C[ids] as float32; unknown ids raise UnknownSnippet."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            bad = int(idx[(idx < 0) | (idx >= self.size)][0])
            raise UnknownSnippet(f"snippet id {bad} is not in the bank (base ids are 0..{self.size - 1})")
        return np.asarray(self.C[idx], dtype=np.float32)

    def snippets(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Unit-norm snippets for ``ids`` (batched gather + matmul)."""
        return snippets_from_coefficients(self.coefficients(ids), self.B, self.mu)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise BankFileError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise BankFileError(f"{path}: truncated or not a safetensors file (header of {n} bytes)")
            header = json.loads(fh.read(n))
    except FileNotFoundError as exc:
        raise BankFileError(f"{path}: no such file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankFileError(f"{path}: not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise BankFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            _, end = info["data_offsets"]
            str(info["dtype"]), list(info["shape"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BankFileError(f"{path}: tensor {name!r} has a malformed header entry") from exc
        if data_start + end > size:
            raise BankFileError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}"
            )
    return header, data_start


def _mapped(path: Path, header: dict[str, Any], data_start: int, name: str, mmap: bool) -> np.ndarray:
    info = header[name]
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
        raise BankFileError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    count = int(np.prod(shape)) if shape else 1
    if end - begin != count * np.dtype(dtype).itemsize:
        raise BankFileError(f"{path}: tensor {name!r} byte length does not match its shape {shape}")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    with path.open("rb") as fh:
        fh.seek(data_start + begin)
        return np.frombuffer(fh.read(end - begin), dtype=dtype).reshape(shape).copy()


def load_factors(path: str | os.PathLike[str], mmap: bool = True) -> BankFactors:
    """Open a factors file, checking format, version, shapes and length; C is memory-mapped."""
    p = Path(path)
    header, data_start = _read_header(p)
    md = header.get("__metadata__") or {}
    if not isinstance(md, dict):
        raise BankFileError(f"{p}: __metadata__ is not a JSON object of strings")
    meta = BankMeta.from_strings(md, str(p))
    missing = [k for k in ("mu", "B", "S", "C") if k not in header]
    if missing:
        raise BankFileError(
            f"{p}: missing tensors {missing}; a bank file holds mu, B, S, C (labels optional)"
        )
    mu = np.array(_mapped(p, header, data_start, "mu", False), dtype=np.float32)
    B = np.array(_mapped(p, header, data_start, "B", False), dtype=np.float32)
    S = np.array(_mapped(p, header, data_start, "S", False), dtype=np.float32)
    C = _mapped(p, header, data_start, "C", mmap)
    labels = _mapped(p, header, data_start, "labels", mmap) if "labels" in header else None
    _check_shapes(mu, B, S, C, labels, meta, str(p))
    return BankFactors(mu=mu, B=B, S=S, C=C, labels=labels, meta=meta, path=str(p))


def _check_shapes(
    mu: np.ndarray,
    B: np.ndarray,
    S: np.ndarray,
    C: np.ndarray,
    labels: np.ndarray | None,
    meta: BankMeta,
    where: str,
) -> None:
    if mu.ndim != 1 or B.ndim != 2 or S.ndim != 1 or C.ndim != 2:
        raise DimensionMismatch(f"{where}: expected mu [d], B [d, r], S [r], C [N, r]")
    d, r = B.shape
    if mu.shape[0] != d or S.shape[0] != r or C.shape[1] != r:
        raise DimensionMismatch(
            f"{where}: inconsistent shapes mu {mu.shape}, B {B.shape}, S {S.shape}, C {C.shape}"
        )
    if labels is not None and labels.shape != (C.shape[0],):
        raise DimensionMismatch(f"{where}: labels has shape {labels.shape}, expected ({C.shape[0]},)")
    if meta.feature_dim != d or meta.rank != r:
        raise DimensionMismatch(
            f"{where}: metadata says feature_dim={meta.feature_dim} rank={meta.rank}, tensors say d={d} r={r}"
        )


def _header_blob(specs: dict[str, tuple[np.dtype, tuple[int, ...]]], meta: BankMeta) -> bytes:
    """The length-prefixed safetensors header for tensors of these dtypes and shapes, in this order."""
    header: dict[str, Any] = {"__metadata__": meta.to_strings()}
    offset = 0
    for name, (dtype, shape) in specs.items():
        code = _CODES.get(np.dtype(dtype))
        if code is None:
            raise BankFileError(f"tensor {name!r}: unsupported dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data start to 8 bytes
    return struct.pack("<Q", len(blob)) + blob


def factors_nbytes(
    n: int,
    meta: BankMeta,
    c_dtype: np.dtype | type = np.float32,
    labels: bool = False,
) -> int:
    """Exact size in bytes of the factors file ``save_factors`` writes for N rows with ``meta``'s d and r:
    header plus mu [d], B [d, r], S [r] in float32, C [N, r] in ``c_dtype`` and labels [N] int64."""
    d, r = meta.feature_dim, meta.rank
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
        "mu": (np.dtype(np.float32), (d,)),
        "B": (np.dtype(np.float32), (d, r)),
        "S": (np.dtype(np.float32), (r,)),
        "C": (np.dtype(c_dtype), (n, r)),
    }
    if labels:
        specs["labels"] = (np.dtype(np.int64), (n,))
    data = sum(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for dt, shape in specs.values())
    return len(_header_blob(specs, meta)) + data


def save_factors(
    path: str | os.PathLike[str],
    mu: np.ndarray,
    B: np.ndarray,
    S: np.ndarray,
    C: np.ndarray,
    meta: BankMeta,
    labels: np.ndarray | None = None,
) -> None:
    """Write a factors file atomically (temp file, fsync, rename, directory fsync).

    Tensors are streamed to disk one by one, so C may itself be a memmap.
    """
    tensors: dict[str, np.ndarray] = {
        "mu": np.ascontiguousarray(mu, dtype=np.float32),
        "B": np.ascontiguousarray(B, dtype=np.float32),
        "S": np.ascontiguousarray(S, dtype=np.float32),
        "C": C if C.dtype in (np.float16, np.float32) else np.asarray(C, dtype=np.float32),
    }
    if labels is not None:
        tensors["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
    _check_shapes(
        tensors["mu"], tensors["B"], tensors["S"], tensors["C"], tensors.get("labels"), meta, str(path)
    )
    blob = _header_blob({k: (a.dtype, tuple(a.shape)) for k, a in tensors.items()}, meta)
    write_atomic(path, [blob], tensors.values())


def write_atomic(
    path: str | os.PathLike[str], prefix: list[bytes], arrays: Iterable[np.ndarray] = ()
) -> None:
    """Write bytes then arrays (in row chunks of about 64 MiB) to ``path``, whole or not at all."""

    def chunks() -> Iterator[bytes]:
        yield from prefix
        for arr in arrays:
            rows = max(1, (64 << 20) // max(1, arr[:1].nbytes)) if arr.ndim else 1
            for start in range(0, max(1, arr.shape[0] if arr.ndim else 1), rows):
                part = arr[start : start + rows] if arr.ndim else arr
                yield np.ascontiguousarray(part).tobytes()

    fileio.write_atomic(path, chunks())
