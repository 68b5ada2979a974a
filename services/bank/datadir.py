"""The data dir: which factors file it belongs to, and one writer process at a time.

``DATA_DIR/factors.json`` records the identity of the factors file the edits
were made against (size, sha256 of its safetensors header, sha256 of its first
and last MiB of tensor data). Run-time ids start at the base size and
coefficients live in that file's basis, so replaying the log over another file
would silently corrupt the bank: the service refuses to start instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
from pathlib import Path

from services.bank.errors import DataDirLocked, DataDirUnusable
from shared.errors import IncompatibleArtifacts
from shared.factors import BankFactors, write_atomic

IDENTITY_FILE = "factors.json"
LOCK_FILE = ".lock"
_SAMPLE = 1 << 20


def factors_identity(factors: BankFactors) -> dict[str, object]:
    """Cheap but specific fingerprint of a factors file (no full read of C)."""
    path = Path(factors.path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = fh.read(n)
        head = fh.read(_SAMPLE)
        fh.seek(max(8 + n, size - _SAMPLE))
        tail = fh.read(_SAMPLE)
    return {
        "size": size,
        "header_sha256": hashlib.sha256(header).hexdigest(),
        "data_sample_sha256": hashlib.sha256(head + tail).hexdigest(),
        "base_size": factors.size,
        "feature_dim": factors.feature_dim,
        "rank": factors.rank,
        "encoder": factors.meta.encoder,
    }


def check_identity(data_dir: Path, factors: BankFactors) -> None:
    """Record the factors identity in a new data dir; refuse a different file in an old one."""
    target = data_dir / IDENTITY_FILE
    current = factors_identity(factors)
    if not target.exists():
        blob = json.dumps({**current, "path": str(Path(factors.path).resolve())}, indent=1).encode()
        write_atomic(target, [blob])
        return
    try:
        recorded = json.loads(target.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleArtifacts(
            f"{target} is unreadable ({exc}); restore it or use a fresh --data-dir"
        ) from exc
    keys = ("size", "header_sha256", "data_sample_sha256")
    if any(recorded.get(k) != current[k] for k in keys):
        raise IncompatibleArtifacts(
            f"data dir {data_dir} holds edits made against factors file {recorded.get('path')!r} "
            f"(N={recorded.get('base_size')}, size={recorded.get('size')} bytes), but --factors "
            f"{factors.path!r} is a different file (N={current['base_size']}, size={current['size']} bytes). "
            "Start with the original factors file, or give a fresh --data-dir for this one."
        )


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive flock on the data dir for the life of the process (released by the kernel on
    kill)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a file in the way, no permission, read-only disk: say so, not a traceback
        raise DataDirUnusable(
            f"cannot use data dir {data_dir} ({exc.strerror or exc}); --data-dir must be a directory this "
            "user can create and write (it holds the edit log)"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DataDirLocked(
            f"data dir {data_dir} is in use by another bank service process; stop it or use another "
            "--data-dir"
        ) from exc
    return fd


def unlock_data_dir(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
