"""The edit log: exact round trip, torn tails truncated at every possible cut, corruption refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bank.log import HEADER, EditLog, encode_record, iter_records, scan
from services.bank.recovery import DataLoss
from shared.errors import BankFileError

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def payload(v: int, coeffs: list[float]) -> dict:
    return {"v": v, "op": "insert", "id": 100 + v, "coefficients": coeffs, "name": f"n{v}", "created_at": "t"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(finite, min_size=1, max_size=8), min_size=1, max_size=5))
def test_round_trip_is_bit_exact(tmp_path_factory: pytest.TempPathFactory, rows: list[list[float]]) -> None:
    path = tmp_path_factory.mktemp("log") / "edits.log"
    log, existing = EditLog.open(path)
    assert existing == []
    for v, row in enumerate(rows, 1):
        log.append(payload(v, row))
    log.close()
    _, replayed = EditLog.open(path)
    assert [p["coefficients"] for p in replayed] == rows  # == on floats: bit-exact, -0.0 and subnormals too
    assert [p["v"] for p in replayed] == list(range(1, len(rows) + 1))


def test_every_torn_tail_is_truncated(tmp_path: Path) -> None:
    records = [payload(v, [0.1 * v, -3.5, 1e-300]) for v in range(1, 4)]
    full = HEADER + b"".join(encode_record(p) for p in records)
    last_start = len(full) - len(encode_record(records[-1]))
    for cut in range(last_start, len(full)):
        path = tmp_path / f"cut{cut}.log"
        path.write_bytes(full[:cut])
        log, replayed = EditLog.open(path)
        assert replayed == records[:2]
        assert path.stat().st_size == last_start  # the torn record is gone from disk
        log.append(records[2])  # and the next append lands right after the last good record
        log.close()
        assert list(iter_records(path)) == records


def test_crash_while_creating_header_starts_empty(tmp_path: Path) -> None:
    for cut in range(len(HEADER)):
        path = tmp_path / f"h{cut}.log"
        path.write_bytes(HEADER[:cut])
        log, replayed = EditLog.open(path)
        log.close()
        assert replayed == [] and path.read_bytes() == HEADER


def test_bit_flip_in_last_record_is_refused_and_kept(tmp_path: Path) -> None:
    """A complete last record with a bad checksum is damage, not a torn write (it used to be truncated)."""
    records = [payload(v, [float(v)]) for v in range(1, 4)]
    blob = bytearray(HEADER + b"".join(encode_record(p) for p in records))
    blob[-3] ^= 0x01
    path = tmp_path / "flip.log"
    path.write_bytes(bytes(blob))
    last_start = len(blob) - len(encode_record(records[-1]))
    with pytest.raises(DataLoss, match="fails its checksum"):
        EditLog.open(path)
    assert path.read_bytes() == bytes(blob)  # nothing was cut
    aside = list(tmp_path.glob("flip.log.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(blob[last_start:])
    log, replayed = EditLog.open(path, accept_data_loss=True)
    log.close()
    assert replayed == records[:2] and path.stat().st_size == last_start


def test_zero_filled_tail_is_torn_not_corrupt(tmp_path: Path) -> None:
    records = [payload(v, [float(v)]) for v in range(1, 3)]
    good = HEADER + b"".join(encode_record(p) for p in records)
    path = tmp_path / "zeros.log"
    path.write_bytes(good + b"\0" * 37)  # space allocated by an append whose data never reached the disk
    log, replayed = EditLog.open(path)
    log.close()
    assert replayed == records and path.read_bytes() == good
    assert len(list(tmp_path.glob("zeros.log.torn-*"))) == 1


def test_corruption_before_valid_records_is_refused(tmp_path: Path) -> None:
    records = [payload(v, [float(v)]) for v in range(1, 4)]
    blob = bytearray(HEADER + b"".join(encode_record(p) for p in records))
    middle = len(HEADER) + len(encode_record(records[0])) + 14
    blob[middle] ^= 0x20
    path = tmp_path / "mid.log"
    path.write_bytes(bytes(blob))
    with pytest.raises(BankFileError, match="acknowledged edits would be lost"):
        EditLog.open(path)
    assert path.read_bytes() == bytes(blob)  # nothing was truncated


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"hello world, not a log")
    with pytest.raises(BankFileError, match="GMEMLOG1"):
        scan(path.read_bytes())


def test_failed_append_leaves_the_log_consistent(tmp_path: Path) -> None:
    path = tmp_path / "edits.log"
    log, _ = EditLog.open(path)
    log.append(payload(1, [1.0]))
    with pytest.raises(ValueError):
        log.append(payload(2, [float("nan")]))  # refused before any byte is written
    real_fd = log._fd
    log._fd = os.open(path, os.O_RDONLY)  # writes now fail with EBADF, like a vanished disk
    with pytest.raises(OSError):
        log.append(payload(2, [2.0]))
    os.close(log._fd)
    log._fd = real_fd
    log.append(payload(2, [2.0]))
    log.close()
    assert [p["v"] for p in iter_records(path)] == [1, 2]
