"""The bank factors file (CONTRACT.md section 1): round trip, mmap, and refusal of bad files."""

from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from shared.errors import BankFileError, DimensionMismatch, UnknownFormat, UnknownSnippet
from shared.factors import BankMeta, factors_nbytes, load_factors, save_factors, write_atomic
from tests.support.banks import svd_factors, unit_rows


def bank_arrays(n: int = 50, d: int = 12, r: int = 4, seed: int = 0):
    """The arrays of a bank file (mu, B, S, C), its metadata and labels, not yet written."""
    rng = np.random.default_rng(seed)
    f = svd_factors(unit_rows(rng, n, d), r)
    meta = BankMeta(
        encoder="gmem/mnist-cnn",
        feature_dim=d,
        rank=r,
        source="synthetic",
        explained_variance=f.explained_variance,
    )
    labels = rng.integers(-1, 10, size=n)
    return f.mu, f.B, f.S, f.C, meta, labels


def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path):
    mu, B, S, C, meta, labels = bank_arrays()
    path = tmp_path / "bank.safetensors"
    save_factors(path, mu, B, S, C, meta, labels=labels)
    bank = load_factors(path)
    np.testing.assert_array_equal(bank.mu, mu.astype(np.float32))
    np.testing.assert_array_equal(bank.B, B.astype(np.float32))
    np.testing.assert_array_equal(bank.S, S.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(bank.C), C.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(bank.labels), labels)
    assert bank.meta == meta
    assert (bank.size, bank.feature_dim, bank.rank) == (50, 12, 4)
    # Every field of the contract's metadata, as strings, readable by the reference safetensors library.
    with safe_open(str(path), framework="numpy") as fh:
        md = fh.metadata()
        np.testing.assert_array_equal(fh.get_tensor("C"), C.astype(np.float32))
    assert md["format"] == "gmem-bank" and md["format_version"] == "1"
    assert md["normalized"] == "true" and md["rank"] == "4" and md["feature_dim"] == "12"
    assert float(md["explained_variance"]) == pytest.approx(meta.explained_variance)


@pytest.mark.parametrize(("c_dtype", "with_labels"), [(np.float32, False), (np.float16, True)])
def test_planned_size_is_the_written_size(tmp_path: Path, c_dtype, with_labels: bool):
    mu, B, S, C, meta, labels = bank_arrays(n=37, d=9, r=5)
    path = tmp_path / "bank.safetensors"
    save_factors(path, mu, B, S, C.astype(c_dtype), meta, labels=labels if with_labels else None)
    assert factors_nbytes(37, meta, c_dtype, labels=with_labels) == path.stat().st_size
    # The data part is what the contract's table says: mu, B, S float32, C in its dtype, labels int64.
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    data = 4 * (9 + 9 * 5 + 5) + np.dtype(c_dtype).itemsize * 37 * 5 + (8 * 37 if with_labels else 0)
    assert path.stat().st_size == 8 + n + data


def test_snippets_are_unit_reconstructions_by_id(tmp_path: Path):
    mu, B, S, C, meta, _ = bank_arrays()
    save_factors(tmp_path / "b.safetensors", mu, B, S, C, meta)
    bank = load_factors(tmp_path / "b.safetensors")
    ids = [3, 0, 49, 3]
    s = bank.snippets(ids)
    recon = C[ids] @ B.T + mu
    np.testing.assert_allclose(s, recon / np.linalg.norm(recon, axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(UnknownSnippet, match="50"):
        bank.snippets([1, 50])
    with pytest.raises(UnknownSnippet):
        bank.coefficients([-1])


def test_C_is_memory_mapped_not_copied(tmp_path: Path):
    mu, B, S, C, meta, labels = bank_arrays(n=2000)
    save_factors(tmp_path / "b.safetensors", mu, B, S, C, meta, labels=labels)
    bank = load_factors(tmp_path / "b.safetensors")
    assert isinstance(bank.C, np.memmap) and isinstance(bank.labels, np.memmap)
    assert not bank.C.flags.writeable
    eager = load_factors(tmp_path / "b.safetensors", mmap=False)
    assert not isinstance(eager.C, np.memmap)
    np.testing.assert_array_equal(eager.C, bank.C)


def test_fp16_coefficients_round_trip(tmp_path: Path):
    mu, B, S, C, meta, _ = bank_arrays()
    save_factors(tmp_path / "h.safetensors", mu, B, S, C.astype(np.float16), meta)
    bank = load_factors(tmp_path / "h.safetensors")
    assert bank.C.dtype == np.float16
    assert bank.coefficients([0]).dtype == np.float32
    full = bank.snippets(range(50))
    recon = C @ B.T + mu
    np.testing.assert_allclose(full, recon / np.linalg.norm(recon, axis=1, keepdims=True), atol=5e-3)


def _rewrite_metadata(path: Path, **changes: str) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


@pytest.mark.parametrize(("fmt", "version"), [("gmem-bank", "2"), ("other-bank", "1")])
def test_unknown_format_or_version_names_both(tmp_path: Path, fmt: str, version: str):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "b.safetensors"
    save_factors(path, mu, B, S, C, meta)
    _rewrite_metadata(path, format=fmt, format_version=version)
    with pytest.raises(UnknownFormat) as info:
        load_factors(path)
    message = info.value.message
    assert fmt in message and f"format_version={version!r}" in message
    assert "gmem-bank" in message and "'1'" in message  # and what this reader knows


@pytest.mark.parametrize("keep", [0, 5, 60, -4])
def test_truncated_file_is_refused(tmp_path: Path, keep: int):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "b.safetensors"
    save_factors(path, mu, B, S, C, meta)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(BankFileError, match="truncated|not a safetensors"):
        load_factors(path)


def test_missing_file_and_garbage_are_refused(tmp_path: Path):
    with pytest.raises(BankFileError, match="no such file"):
        load_factors(tmp_path / "absent.safetensors")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(struct.pack("<Q", 16) + b"{not json at all")
    with pytest.raises(BankFileError):
        load_factors(garbage)


def _write_raw(path: Path, arrays: dict[str, np.ndarray], meta: BankMeta) -> None:
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    header: dict = {"__metadata__": meta.to_strings()}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    write_atomic(path, [struct.pack("<Q", len(blob)), blob], list(arrays.values()))


def test_inconsistent_shapes_are_refused(tmp_path: Path):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "bad.safetensors"
    _write_raw(path, {"mu": mu, "B": B, "S": S, "C": C[:, :3]}, meta)
    with pytest.raises(DimensionMismatch, match="inconsistent shapes"):
        load_factors(path)
    _write_raw(path, {"mu": mu, "B": B, "S": S, "C": C}, BankMeta(**{**meta.__dict__, "rank": 5}))
    with pytest.raises(DimensionMismatch, match="rank=5"):
        load_factors(path)
    _write_raw(path, {"mu": mu, "B": B, "S": S}, meta)
    with pytest.raises(BankFileError, match="missing tensors"):
        load_factors(path)


def test_failed_save_leaves_no_file(tmp_path: Path):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "b.safetensors"
    with pytest.raises(DimensionMismatch):
        save_factors(path, mu, B, S, C[:, :2], meta)
    assert list(tmp_path.iterdir()) == []
    # A save that replaces an existing file is all-or-nothing too.
    save_factors(path, mu, B, S, C, meta)
    before = path.read_bytes()
    with pytest.raises(DimensionMismatch):
        save_factors(path, mu, B, S, C, meta, labels=np.zeros(3, dtype=np.int64))
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# --- malformed headers and file permissions -------------------------------------------------------


def _raw(path, header):
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)


META = {
    "format": "gmem-bank",
    "format_version": "1",
    "encoder": "e",
    "feature_dim": "2",
    "rank": "1",
    "source": "s",
}


@pytest.mark.parametrize(
    "header",
    [
        [1, 2, 3],  # JSON, but not an object
        {"__metadata__": META, "C": {"dtype": "F32", "shape": [2, 1]}},  # no data_offsets
        {"__metadata__": META, "C": "nonsense"},
        {"__metadata__": META, "mu": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},
    ],
)
def test_malformed_header_is_a_bank_file_error(tmp_path, header):
    _raw(tmp_path / "b.safetensors", header)
    with pytest.raises(BankFileError):
        load_factors(tmp_path / "b.safetensors")


def test_saved_bank_is_readable_by_other_users(tmp_path):
    save_factors(
        tmp_path / "b.safetensors",
        np.zeros(2),
        np.ones((2, 1)),
        np.ones(1),
        np.ones((3, 1)),
        BankMeta(encoder="e", feature_dim=2, rank=1, source="s", explained_variance=1.0),
    )
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) & 0o044 == 0o044


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"normalized": "yes"}, "normalized='yes'"),  # was silently read as false (g = f in eq. 10)
        ({"normalized": True}, "must be strings"),  # a JSON bool: was an AttributeError crash
        ({"rank": 4}, "must be strings"),
    ],
)
def test_metadata_values_must_be_the_contracts_strings(tmp_path: Path, changes: dict, says: str):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "b.safetensors"
    save_factors(path, mu, B, S, C, meta)
    _rewrite_metadata(path, **changes)
    with pytest.raises(BankFileError, match=says):
        load_factors(path)


@pytest.mark.parametrize("value", ["false", "False", "TRUE"])
def test_normalized_true_or_false_in_any_case(tmp_path: Path, value: str):
    mu, B, S, C, meta, _ = bank_arrays()
    path = tmp_path / "b.safetensors"
    save_factors(path, mu, B, S, C, meta)
    _rewrite_metadata(path, normalized=value)
    assert load_factors(path).meta.normalized is (value.lower() == "true")


def test_metadata_that_is_not_an_object_is_refused(tmp_path: Path):
    _raw(tmp_path / "b.safetensors", {"__metadata__": ["format", "gmem-bank"]})
    with pytest.raises(BankFileError, match="__metadata__"):
        load_factors(tmp_path / "b.safetensors")


def test_extra_metadata_is_written_as_strings(tmp_path: Path):
    mu, B, S, C, meta, _ = bank_arrays()
    meta = BankMeta(
        encoder=meta.encoder,
        feature_dim=meta.feature_dim,
        rank=meta.rank,
        source=meta.source,
        explained_variance=meta.explained_variance,
        extra={"epochs": 3},
    )  # type: ignore[dict-item]
    path = tmp_path / "b.safetensors"
    save_factors(path, mu, B, S, C, meta)
    with safe_open(str(path), framework="numpy") as fh:
        assert fh.metadata()["epochs"] == "3"
    assert load_factors(path).meta.extra == {"epochs": "3"}
