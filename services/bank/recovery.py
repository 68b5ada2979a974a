"""What the data dir must prove at start: nothing acknowledged is missing, and damage is kept, not erased.

``DATA_DIR/acked_version`` holds the highest version the bank ever acknowledged, rewritten in place and
fdatasynced after each edit's log record is durable (16 bytes: magic, u64 version, crc32). It is a
separate file so that losing ``edits.log`` or ``snapshot.bin`` (deleted, emptied, restored from an
old backup) cannot also lose the evidence: a bank whose snapshot and log reach a lower version refuses
to start and says which versions are missing. ``--accept-data-loss`` (``GMEM_BANK_ACCEPT_DATA_LOSS``)
starts anyway; versions and ids then continue above the acknowledged ones, so no id is handed out twice.

Bytes the log cannot use are moved aside to ``DATA_DIR/edits.log.<kind>-<byte offset>-<unix time>``
before anything is truncated, whether they are a torn tail (an incomplete last record: a crash
mid-append, truncated as before) or corruption (a complete record with a bad checksum: refused unless
accepted, like missing versions).
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

from shared.errors import BankFileError
from shared.fileio import fsync_dir

ACKED_FILE = "acked_version"
_ACK = struct.Struct("<4sQI")
_ACK_MAGIC = b"GACK"
ACCEPT_HINT = "--accept-data-loss (or GMEM_BANK_ACCEPT_DATA_LOSS=1)"


class DataLoss(BankFileError):
    """The data dir holds less than the bank acknowledged, or acknowledged records are damaged."""

    code = "data_loss"


class AckedVersion:
    """The durable high-water mark of acknowledged versions (one small file, overwritten in place)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ACKED_FILE
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(data_dir)
        self.recorded = self._read() if existed else None

    def _read(self) -> int | None:
        blob = os.pread(self._fd, _ACK.size, 0)
        if len(blob) == 0:
            return None  # created by a process killed before its first write
        if len(blob) != _ACK.size:
            raise DataLoss(
                f"{self.path} is damaged ({len(blob)} bytes); it records the highest acknowledged "
                f"version. Restore it, or start with {ACCEPT_HINT}"
            )
        magic, version, crc = _ACK.unpack(blob)
        if magic != _ACK_MAGIC or zlib.crc32(struct.pack("<Q", version)) != crc:
            raise DataLoss(
                f"{self.path} is damaged (bad magic or checksum); it records the highest acknowledged "
                f"version. Restore it, or start with {ACCEPT_HINT}"
            )
        return int(version)

    def write(self, version: int) -> None:
        """Record ``version`` durably (pwrite of 16 bytes in one sector, fdatasync)."""
        os.pwrite(self._fd, _ACK.pack(_ACK_MAGIC, version, zlib.crc32(struct.pack("<Q", version))), 0)
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def missing_message(data_dir: Path, acked: int, recovered: int, snapshot_version: int) -> str:
    return (
        f"data dir {data_dir} acknowledged edits up to version {acked} ({ACKED_FILE}), but snapshot.bin "
        f"(version {snapshot_version}) and edits.log together reach only version {recovered}: versions "
        f"{recovered + 1}..{acked} are missing (edits.log or snapshot.bin deleted, emptied or replaced by an "
        f"older copy?). Restore them from a backup, or start with {ACCEPT_HINT} to continue without them; "
        "versions and ids then continue above the acknowledged ones."
    )


def save_aside(log_path: Path, data: bytes, offset: int, kind: str) -> Path:
    """Copy ``data[offset:]`` of the log to a durable file next to it, before anything is cut."""
    target = log_path.with_name(f"{log_path.name}.{kind}-{offset}-{int(time.time())}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)[offset:]
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(log_path.parent)
    return target
