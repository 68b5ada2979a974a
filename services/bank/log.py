"""The durable edit log: one checksummed record per acknowledged mutation, append-only.

On disk (``DATA_DIR/edits.log``)::

    file   := HEADER record*
    HEADER := b"GMEMLOG1\\n"
    record := MAGIC(4) length(u32 LE) crc32(u32 LE, over length bytes + payload) payload(JSON, UTF-8)

A record is acknowledged only after ``write`` + ``fsync`` returned. A crash can
therefore leave at most one torn record at the end: an incomplete one (or
allocated zeros); ``open`` copies it aside, truncates it and fsyncs. A complete
record with a bad checksum, or a bad record followed by a valid one, is not a
torn tail but corruption of acknowledged data: it is copied aside too and the
log refuses to open (unless data loss is accepted) rather than silently
dropping edits (services/bank/recovery.py). Floats are written with
Python's shortest round-trip repr, so replayed coefficients are bit-identical.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.bank.recovery import ACCEPT_HINT, DataLoss, save_aside
from shared.errors import BankFileError
from shared.fileio import fsync_dir

HEADER = b"GMEMLOG1\n"
MAGIC = b"\xa7GR1"
_PREFIX = struct.Struct("<4sII")
MAX_RECORD = 16 << 20

log = logging.getLogger("gmem.bank.log")


def encode_record(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    head = struct.pack("<I", len(body))
    return _PREFIX.pack(MAGIC, len(body), zlib.crc32(head + body)) + body


def _parse_at(data: memoryview, pos: int) -> tuple[dict[str, Any], int] | None:
    """The record at ``pos`` and the offset after it, or None when it is torn or corrupt."""
    if pos + _PREFIX.size > len(data):
        return None
    magic, length, crc = _PREFIX.unpack_from(data, pos)
    end = pos + _PREFIX.size + length
    if magic != MAGIC or length > MAX_RECORD or end > len(data):
        return None
    body = bytes(data[pos + _PREFIX.size : end])
    if zlib.crc32(struct.pack("<I", length) + body) != crc:
        return None
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return (payload, end) if isinstance(payload, dict) else None


def inspect(data: bytes) -> tuple[list[dict[str, Any]], int, str | None]:
    """Valid records of a log image, the length of their prefix, and what follows it.

    The kind is None (nothing), ``"torn"`` (an incomplete last record, or a tail of zero bytes that was
    allocated but never written: what a crash mid-append leaves) or ``"corrupt"`` (a complete record
    that fails its checksum or JSON, bytes that are not a record, or a bad record followed by valid
    ones: acknowledged data is damaged).
    """
    if not data.startswith(HEADER):
        if HEADER.startswith(data):  # crashed while writing the header of a new log
            return [], 0, None
        raise BankFileError("edit log does not start with the GMEMLOG1 header; it is not a GMem edit log")
    view = memoryview(data)
    records: list[dict[str, Any]] = []
    pos = len(HEADER)
    while pos < len(data):
        parsed = _parse_at(view, pos)
        if parsed is None:
            break
        payload, pos = parsed
        records.append(payload)
    if pos == len(data):
        return records, pos, None
    return records, pos, "corrupt" if _has_later_record(data, pos) else _tail_kind(data, pos)


def _tail_kind(data: bytes, pos: int) -> str:
    rest = data[pos:]
    if len(rest) < _PREFIX.size:
        return "torn" if MAGIC.startswith(rest[: len(MAGIC)]) else "corrupt"
    magic, length, _ = _PREFIX.unpack_from(rest)
    if magic == MAGIC and length <= MAX_RECORD and _PREFIX.size + length > len(rest):
        return "torn"  # the record runs past the end of the file: its write did not finish
    if rest[-1] == 0:
        # zeros at the end: space allocated by the append, data never written (JSON never ends in NUL)
        return "torn"
    return "corrupt"


def scan(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """All valid records of a log image and the length of its valid prefix.

    Raises BankFileError when a bad record is followed by a valid one (corruption
    inside acknowledged data, not a torn tail).
    """
    records, pos, kind = inspect(data)
    if kind == "corrupt" and _has_later_record(data, pos):
        raise BankFileError(
            f"edit log is corrupt at byte {pos} but holds valid records after it; "
            "refusing to drop acknowledged edits. Restore the data dir from a backup, or move "
            "edits.log aside to start from the base factors only."
        )
    return records, pos


def _has_later_record(data: bytes, pos: int) -> bool:
    view = memoryview(data)
    nxt = data.find(MAGIC, pos + 1)
    while nxt != -1:
        if _parse_at(view, nxt) is not None:
            return True
        nxt = data.find(MAGIC, nxt + 1)
    return False


class EditLog:
    """Append-only, fsync-per-record log. Not thread-safe: the store serialises writers."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self._size = size
        self._dir_dirty = False
        self.last_fsync_s = 0.0

    @classmethod
    def open(cls, path: Path, accept_data_loss: bool = False) -> tuple[EditLog, list[dict[str, Any]]]:
        """Open (or create) the log and replay it; returns the log and its records.

        A torn tail (see ``inspect``) is copied aside and truncated. Corruption is copied aside and
        refused (DataLoss) unless ``accept_data_loss``; then the log is cut at the first bad record.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # a rotation killed before its rename
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            data = _read_all(fd)
            records, valid, kind = inspect(data)
            if valid == 0:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                _write_all(fd, HEADER)
                valid = len(HEADER)
                os.fsync(fd)
            elif kind is not None:
                aside = save_aside(path, data, valid, kind)
                if kind == "corrupt" and not accept_data_loss:
                    later = " (valid records follow it)" if _has_later_record(data, valid) else ""
                    raise DataLoss(
                        f"edit log {path} is damaged at byte {valid}, after {len(records)} good records: a "
                        f"complete record fails its checksum{later}, so acknowledged edits would be lost. "
                        f"The bytes from there on are saved in {aside}. Restore the data dir from a backup, "
                        f"or start with {ACCEPT_HINT} to drop them."
                    )
                log.warning(
                    "edit log %s: %s tail of %d bytes after %d records, saved in %s; truncating at byte %d",
                    path,
                    "torn" if kind == "torn" else "corrupt (accepted)",
                    len(data) - valid,
                    len(records),
                    aside,
                    valid,
                )
                os.ftruncate(fd, valid)
                os.fsync(fd)
            if created:
                fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, valid), records

    def append(self, payload: dict[str, Any]) -> None:
        """Write one record and fsync it; on failure the log is cut back to its last good size."""
        blob = encode_record(payload)
        start = time.perf_counter()
        try:
            os.lseek(self._fd, self._size, os.SEEK_SET)
            _write_all(self._fd, blob)
            os.fsync(self._fd)
            if self._dir_dirty:
                fsync_dir(self.path.parent)
                self._dir_dirty = False
        except OSError:
            # A partial record would be truncated at the next start anyway; cut it now so the
            # next append does not land behind garbage.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                log.exception("edit log %s: could not cut back a failed append", self.path)
            raise
        self._size += len(blob)
        self.last_fsync_s = time.perf_counter() - start

    def rotate(self) -> None:
        """Replace the log by an empty one (header only): after a snapshot holds every record in it.

        A new file is written and fsynced next to the log, renamed over it and the directory fsynced,
        so a kill leaves either the old log (its records <= the snapshot's version are skipped at
        start) or the new empty one. On failure the old log stays open and in use.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, HEADER)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        # From the rename on, the new file is the log: appends must go there even if the directory
        # fsync fails now (then the next append retries it before acknowledging anything).
        os.close(self._fd)
        self._fd, self._size, self._dir_dirty = fd, len(HEADER), True
        fsync_dir(self.path.parent)
        self._dir_dirty = False

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 24):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Read-only replay of a log file (tools and tests); stops at a torn tail."""
    records, _ = scan(path.read_bytes())
    yield from records
