"""Snapshots of the bank's run-time state, so start-up does not replay an ever-growing edit log.

On disk (``DATA_DIR/snapshot.bin``)::

    file := MAGIC(8) meta_len(u64 LE) data_len(u64 LE) crc32(u32 LE, over meta + data) meta data
    meta := JSON, UTF-8: {"version", "n_runtime", "rank", "live", "records": [...], "created_unix"}
    data := float64 little-endian [n_runtime, rank], the coefficients of every run-time id ever allocated

``n_runtime`` is the next-id counter (next id = base_size + n_runtime); rows of deleted ids are kept
(never reused, ids stay positional) and ``live`` lists the live run-time ids. Coefficients are raw
float64 bytes, so they read back bit-identical.

Writing (``write_snapshot``), then rotating the log (``EditLog.rotate``)::

    1. write .snapshot.bin.*.tmp, fsync       crash: stray tmp (removed at start), old snapshot + full log
    2. rename over snapshot.bin, fsync dir    crash: new snapshot V + old log; records v <= V are skipped
    3. write edits.log.tmp (header), fsync
    4. rename over edits.log, fsync dir       crash: new snapshot V + empty log

Every state a kill can leave is therefore "a complete snapshot (or none) + a log whose records after
the snapshot's version run V+1, V+2, ..." — exactly what ``BankStore`` recovers from.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import BankFileError
from shared.fileio import atomic_path

SNAPSHOT_FILE = "snapshot.bin"
MAGIC = b"GMEMSNP1"
_HEAD = struct.Struct("<8sQQI")


@dataclass(frozen=True)
class Snapshot:
    version: int
    coefficients: np.ndarray  # float64 [n_runtime, rank]
    records: list[dict[str, Any]]  # per run-time id: kind, name, created_at, parents, alpha, method, residual
    live: list[int]
    created_unix: float  # time.time() when it was taken


def encode_snapshot(snap: Snapshot) -> bytes:
    n, rank = snap.coefficients.shape
    meta = json.dumps(
        {
            "version": snap.version,
            "n_runtime": n,
            "rank": rank,
            "live": snap.live,
            "records": snap.records,
            "created_unix": snap.created_unix,
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    data = np.ascontiguousarray(snap.coefficients, dtype="<f8").tobytes()
    return _HEAD.pack(MAGIC, len(meta), len(data), zlib.crc32(meta + data)) + meta + data


def decode_snapshot(blob: bytes) -> Snapshot:
    if len(blob) < _HEAD.size:
        raise BankFileError(f"snapshot is truncated ({len(blob)} bytes)")
    magic, meta_len, data_len, crc = _HEAD.unpack_from(blob)
    if magic != MAGIC or _HEAD.size + meta_len + data_len != len(blob):
        raise BankFileError("snapshot has a bad magic or length; it is not a complete GMem snapshot")
    meta_b = blob[_HEAD.size : _HEAD.size + meta_len]
    data = blob[_HEAD.size + meta_len :]
    if zlib.crc32(meta_b + data) != crc:
        raise BankFileError("snapshot checksum mismatch; the file is corrupt")
    meta = json.loads(meta_b)
    n, rank = int(meta["n_runtime"]), int(meta["rank"])
    if data_len != n * rank * 8 or len(meta["records"]) != n:
        raise BankFileError("snapshot metadata does not match its coefficient block")
    coeffs = np.frombuffer(data, dtype="<f8").reshape(n, rank).astype(np.float64)
    return Snapshot(
        int(meta["version"]),
        coeffs,
        list(meta["records"]),
        [int(i) for i in meta["live"]],
        float(meta.get("created_unix", 0.0)),
    )


def write_snapshot(data_dir: Path, snap: Snapshot) -> None:
    """Atomically replace ``DATA_DIR/snapshot.bin`` (shared.fileio.atomic_path: temp, fsync, rename,
    dir fsync).

    On failure (a full disk) the temporary file is removed at once, not left until the next start.
    """
    blob = encode_snapshot(snap)
    with atomic_path(data_dir / SNAPSHOT_FILE) as tmp, open(tmp, "wb") as fh:
        fh.write(blob)


def read_snapshot(data_dir: Path) -> Snapshot | None:
    """The durable snapshot, or None when there is none. Stray temp files (crash mid-write) are removed."""
    for tmp in [data_dir / (SNAPSHOT_FILE + ".tmp"), *data_dir.glob(f".{SNAPSHOT_FILE}.*.tmp")]:
        tmp.unlink(missing_ok=True)
    target = data_dir / SNAPSHOT_FILE
    if not target.exists():
        return None
    return decode_snapshot(target.read_bytes())
