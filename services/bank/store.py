"""The bank's state: immutable base factors (memory-mapped) plus durable run-time snippets.

Writers are serialised by one lock: validate, append to the edit log (fsync),
apply in memory, then publish a new ``BankView``. Readers take the current view
once per request and never lock: a view's arrays are never written after it is
published (run-time coefficients live in an append-only buffer whose published
rows are frozen; the live-id array is replaced, not edited), so a retrieval
sees one version, whole.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.bank.datadir import check_identity, lock_data_dir, unlock_data_dir
from services.bank.errors import StorageUnavailable
from services.bank.index import SnippetIndex, merge_neighbors
from services.bank.log import EditLog
from services.bank.parsing import noise_statistic
from services.bank.recovery import AckedVersion, DataLoss, missing_message
from services.bank.rowcache import RowCache
from services.bank.snapshot import Snapshot, read_snapshot, write_snapshot
from services.bank.view import BankView, RuntimeRecord
from shared import bankmath
from shared.errors import (
    BankFileError,
    BaseSnippetImmutable,
    EmptyPool,
    InvalidInput,
    NonFiniteValue,
    UnknownSnippet,
)
from shared.events import OPS
from shared.factors import BankFactors, load_factors

LOG_FILE = "edits.log"
# A failed snapshot (full disk) is retried after 1 s, then 2, 4, ... up to 5 minutes, not at every
# mutation: each attempt writes the whole run-time state under the writer lock.
SNAPSHOT_RETRY_S = 1.0
SNAPSHOT_RETRY_MAX_S = 300.0

log = logging.getLogger("gmem.bank.store")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BankStore:
    """Base factors + edit log + FAISS index, behind one writer lock and lock-free views."""

    def __init__(
        self,
        factors: BankFactors,
        data_dir: Path,
        faiss_threads: int = 1,
        snapshot_every: int = 10_000,
        row_cache_bytes: int = 1 << 30,
        accept_data_loss: bool = False,
    ) -> None:
        self.factors = factors
        self.rows = RowCache(factors, row_cache_bytes)
        self.data_dir = data_dir
        self.snapshot_every = snapshot_every
        self._lock_fd = lock_data_dir(data_dir)
        try:
            check_identity(data_dir, factors)
            self.index = SnippetIndex(factors, threads=faiss_threads)
            self._records: list[RuntimeRecord] = []
            self._buf = np.zeros((64, factors.rank), dtype=np.float64)
            self._live: dict[int, None] = {}  # insertion-ordered = ascending ids
            self._events: list[tuple[int, str, int]] = []
            self._events_base = 0  # version before self._events[0] (the snapshot's at start)
            self._version = 0
            self.snapshot_version = 0
            self.snapshot_unix = 0.0
            self._write = threading.Lock()
            self._listeners: list[Callable[[], None]] = []
            self._view = self._make_view(0)
            self._snapshot_failures, self._snapshot_retry_at = 0, 0.0
            snap = read_snapshot(data_dir)
            if snap is not None:
                self._restore(snap)
            self.log, payloads = EditLog.open(data_dir / LOG_FILE, accept_data_loss)
            for payload in payloads:
                if isinstance(payload.get("v"), int) and payload["v"] <= self._version:
                    continue  # already in the snapshot (killed between snapshot and log rotation)
                self._apply(payload)
            self._view = self._make_view(self._version)
            self.acked = AckedVersion(data_dir)
            self._check_acked(accept_data_loss)
        except BaseException:
            if hasattr(self, "log"):
                self.log.close()
            if hasattr(self, "acked"):
                self.acked.close()
            unlock_data_dir(self._lock_fd)
            raise

    @classmethod
    def open(
        cls,
        factors_path: Path,
        data_dir: Path,
        faiss_threads: int = 1,
        snapshot_every: int = 10_000,
        row_cache_bytes: int = 1 << 30,
        accept_data_loss: bool = False,
    ) -> BankStore:
        return cls(
            load_factors(factors_path, mmap=True),
            Path(data_dir),
            faiss_threads,
            snapshot_every,
            row_cache_bytes,
            accept_data_loss,
        )

    def close(self) -> None:
        self.rows.stop()
        self.log.close()
        self.acked.close()
        if self._lock_fd >= 0:
            unlock_data_dir(self._lock_fd)
            self._lock_fd = -1

    def _check_acked(self, accept_data_loss: bool) -> None:
        """Refuse (or, when accepted, step over) versions acknowledged once but missing now (recovery.py)."""
        recorded = self.acked.recorded
        if recorded is None or recorded <= self._version:
            if recorded != self._version:
                self.acked.write(
                    self._version
                )  # a new data dir, one from before the file existed, or lagging
            return
        message = missing_message(self.data_dir, recorded, self._version, self.snapshot_version)
        if not accept_data_loss:
            raise DataLoss(message)
        log.warning("starting anyway (data loss accepted): %s", message)
        # Versions and ids continue above everything acknowledged: each lost version allocated at most
        # one id, so that many unusable ("lost") ids are reserved and never handed out again.
        lost = recorded - self._version
        n = len(self._records)
        grown = np.zeros((max(self._buf.shape[0], 2 * (n + lost)), self.factors.rank), dtype=np.float64)
        grown[:n] = self._buf[:n]
        self._buf = grown
        for k in range(lost):
            c = np.zeros(self.factors.rank)
            c.setflags(write=False)
            self._records.append(
                RuntimeRecord(
                    id=self.factors.size + n + k, kind="lost", coefficients=c, name=None, created_at=_now()
                )
            )
        self._version = self._events_base = recorded
        self._events = []
        self._view = self._make_view(recorded)
        self._snapshot_locked()  # make the step durable: snapshot at the acknowledged version, empty log

    # -- views ------------------------------------------------------------------------------------
    def view(self) -> BankView:
        return self._view

    def _make_view(self, version: int) -> BankView:
        user_ids = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        user_ids.setflags(write=False)
        return BankView(version, self.factors.size, len(self._records), user_ids, self._buf, self._records)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (without blocking) after each published mutation, e.g. to wake the event publisher."""
        self._listeners.append(callback)

    def events_since(self, version: int, limit: int = 1000) -> list[tuple[int, str, int]]:
        """(version, op, id) of mutations after ``version``, oldest first."""
        start = max(version - self._events_base, 0)
        return self._events[start : start + limit]

    @property
    def last_fsync_s(self) -> float:
        return self.log.last_fsync_s

    # -- reads ------------------------------------------------------------------------------------
    def coefficient_rows(self, view: BankView, ids: np.ndarray) -> np.ndarray:
        """float32 [k, r] coefficients of live ids (base rows from the memory map)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((ids.shape[0], self.factors.rank), dtype=np.float32)
        base = ids < view.base_size
        if base.any():
            out[base] = self.factors.C[ids[base]]
        if not base.all():
            out[~base] = view.coeffs[ids[~base] - view.base_size]
        return out

    def snippets(self, view: BankView, ids: np.ndarray) -> np.ndarray:
        """float32 [k, d] unit snippets of live ids: base rows from the row cache, run-time rows computed."""
        f = self.factors
        ids = np.asarray(ids, dtype=np.int64)
        base = ids < view.base_size
        if base.all():
            return self.rows.base_snippets(ids)
        out = np.empty((ids.shape[0], f.feature_dim), dtype=np.float32)
        if base.any():
            out[base] = self.rows.base_snippets(ids[base])
        out[~base] = bankmath.snippets_from_coefficients(self.coefficient_rows(view, ids[~base]), f.B, f.mu)
        return out

    @functools.cached_property
    def _label_rows(self) -> dict[int, np.ndarray]:
        # Labels belong to the immutable base rows, so the grouping is computed once.
        labels = self.factors.labels
        if labels is None:
            return {}
        arr = np.asarray(labels)
        order = np.argsort(arr, kind="stable")  # ids ascending within each label
        values, starts = np.unique(arr[order], return_index=True)
        groups = np.split(order.astype(np.int64), starts[1:])
        return {int(v): g for v, g in zip(values, groups, strict=True) if v >= 0}

    @property
    def has_labels(self) -> bool:
        """Whether base rows carry class labels (a labelled or reduced bank)."""
        return bool(self._label_rows)

    def label_pool(self, label: int, pool: str) -> np.ndarray:
        """Base ids of ``label`` (ascending): the pool a labelled noise-CDF draw indexes into."""
        if not self._label_rows:
            raise InvalidInput(
                "this bank has no labels, so `label` cannot pick snippets; use a labelled bank "
                "or one reduced per label (python -m training reduce-bank)"
            )
        if pool == "user":
            raise InvalidInput("run-time snippets carry no label; use `label` with pool 'base' or 'all'")
        if label not in self._label_rows:
            known = ", ".join(str(k) for k in sorted(self._label_rows))
            raise InvalidInput(f"no base rows have label {label}; this bank's labels are {known}")
        return self._label_rows[label]

    def retrieve_by_noise(
        self, zs: list[list[float]], pool: str, label: int | None = None
    ) -> tuple[BankView, np.ndarray, np.ndarray]:
        """Paper 4.3: one snippet per noise tensor, drawn by its CDF index in ``pool`` (or that label's
        rows)."""
        return self.retrieve_by_statistic([noise_statistic(z) for z in zs], pool, label=label)

    def retrieve_by_statistic(
        self, zetas: list[float], pool: str, view: BankView | None = None, label: int | None = None
    ) -> tuple[BankView, np.ndarray, np.ndarray]:
        """``retrieve_by_noise`` from each tensor's ``zeta`` (``noise_statistic``), computed elsewhere."""
        view = view or self.view()
        rows = self.label_pool(label, pool) if label is not None else None
        n = view.pool_size(pool) if rows is None else int(rows.size)
        if n == 0:
            raise EmptyPool(f"pool {pool!r} has no snippets; insert one first or retrieve from pool 'base'")
        positions = np.asarray([bankmath.index_of_statistic(zeta, n) for zeta in zetas], dtype=np.int64)
        ids = view.ids_at(positions, pool) if rows is None else rows[positions]
        return view, ids, self.snippets(view, ids)

    def retrieve_by_id(self, ids: list[int], pool: str) -> tuple[BankView, np.ndarray, np.ndarray]:
        view = self.view()
        arr = np.asarray(ids, dtype=np.int64)
        base = (arr >= 0) & (arr < view.base_size)
        # Base ids are checked at once (the read path's common case); others one by one.
        if pool == "user" or not base.all():
            for i in ids if pool == "user" else arr[~base].tolist():
                if not view.in_pool(i, pool):
                    raise UnknownSnippet(self._unknown_message(view, i, pool))
        return view, arr, self.snippets(view, arr)

    def _unknown_message(self, view: BankView, snippet_id: int, pool: str = "all") -> str:
        where = {
            "base": f"base ids are 0..{view.base_size - 1}",
            "user": "pool 'user' holds live run-time snippets only",
            "all": "it was never created or has been deleted",
        }[pool]
        return f"snippet id {snippet_id} is not in pool {pool!r} ({where}); GET /bank lists the bank's size"

    def record(self, view: BankView, snippet_id: int) -> RuntimeRecord | None:
        """The run-time record of a live id, None for a base id; unknown ids raise UnknownSnippet."""
        if not view.is_live(snippet_id):
            raise UnknownSnippet(self._unknown_message(view, snippet_id))
        return None if snippet_id < view.base_size else view.records[snippet_id - view.base_size]

    def label(self, snippet_id: int) -> int | None:
        labels = self.factors.labels
        if labels is None or snippet_id >= self.factors.size:
            return None
        value = int(labels[snippet_id])
        return None if value < 0 else value

    def project(self, feature: list[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Eq. 10 for one feature: (coefficients float64 [r], snippet float32 [d], residual)."""
        f = self.factors
        vec = bankmath.as_vectors(feature, f.feature_dim)
        peak = float(np.max(np.abs(vec)))
        if f.meta.normalized and peak > 0:
            vec = vec / peak  # g = f/|f| is scale-free; pre-scaling keeps |f| from overflowing float64
        proj = bankmath.project(vec, f.mu, f.B, f.S, normalized=f.meta.normalized)
        c = proj.coefficients[0]
        if not np.all(np.isfinite(c)):
            raise NonFiniteValue(
                "the feature's projection is not finite; send values of a sensible magnitude"
            )
        snippet = bankmath.snippets_from_coefficients(c[None, :], f.B, f.mu)[0]
        return c, snippet, float(proj.residual[0])

    def search(self, coefficients: np.ndarray, k: int, pool: str) -> tuple[BankView, list[tuple[int, float]]]:
        """k nearest live snippets of ``pool`` to the reconstruction of ``coefficients``."""
        query = self.index.row(coefficients)
        base: list[tuple[int, float]] = []
        if pool in ("base", "all"):
            self.index.wait_ready(timeout=30.0)
            base = self.index.search_base(query, k)
        with self.index.lock:
            view = self.view()
            runtime = self.index.search_runtime(query, k) if pool in ("user", "all") else []
        return view, merge_neighbors(base, runtime, k=k)

    # -- mutations --------------------------------------------------------------------------------
    def insert(self, feature: list[float] | np.ndarray, name: str | None = None) -> tuple[int, int, float]:
        """Project a feature (eq. 10) and append its coefficients; returns (id, version, residual)."""
        c, _, residual = self.project(feature)
        with self._write:
            payload = {
                "op": "insert",
                "id": self.factors.size + len(self._records),
                "coefficients": c.tolist(),
                "residual": residual,
                "name": name,
                "created_at": _now(),
            }
            version = self._commit(payload)
            return payload["id"], version, residual

    def interpolate(
        self, i: int, j: int, alpha: float, method: str = "linear", name: str | None = None
    ) -> tuple[int, int]:
        """Eq. 11 between two live snippets (base or run-time); returns (id, version)."""
        with self._write:
            view = self._view
            ends = []
            for sid in (i, j):
                rec = self.record(view, sid)
                ends.append(
                    np.asarray(self.factors.C[sid], dtype=np.float64) if rec is None else rec.coefficients
                )
            f = self.factors
            c = bankmath.interpolate(
                ends[0],
                ends[1],
                alpha,
                method,  # type: ignore[arg-type]
                mu=f.mu,
                B=f.B,
                S=f.S,
                normalized=f.meta.normalized,
            )
            payload = {
                "op": "interpolate",
                "id": self.factors.size + len(self._records),
                "coefficients": c.tolist(),
                "parents": [i, j],
                "alpha": float(alpha),
                "method": method,
                "name": name,
                "created_at": _now(),
            }
            version = self._commit(payload)
            return payload["id"], version

    def delete(self, snippet_id: int) -> int:
        """Remove a run-time snippet from every pool and search; base rows are immutable."""
        with self._write:
            view = self._view
            if 0 <= snippet_id < view.base_size:
                raise BaseSnippetImmutable(
                    f"snippet id {snippet_id} is a base row of the factors file, which is immutable; only "
                    f"run-time snippets (ids >= {view.base_size}) can be deleted"
                )
            self.record(view, snippet_id)
            return self._commit({"op": "delete", "id": snippet_id, "created_at": _now()})

    def _commit(self, payload: dict[str, Any]) -> int:
        """Durably log, apply, publish. Caller holds the writer lock."""
        version = self._version + 1
        payload = {"v": version, **payload}
        try:
            self.log.append(payload)
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(
                f"the edit could not be written to {self.log.path} ({exc}); nothing was changed, retry later"
            ) from exc
        try:
            self.acked.write(version)
        except OSError:  # the edit is durable in the log; only the loss detection lags until the next write
            log.exception("could not record acknowledged version %d in %s", version, self.acked.path)
        self._apply(payload)
        self._view = self._make_view(version)
        for callback in self._listeners:
            callback()
        if (
            self.snapshot_every
            and version - self.snapshot_version >= self.snapshot_every
            and time.monotonic() >= self._snapshot_retry_at
        ):
            try:
                self._snapshot_locked()
                self._snapshot_failures = 0
            except (OSError, ValueError):  # the mutation is durable in the log already; retry after a pause
                self._snapshot_failures += 1
                pause = min(SNAPSHOT_RETRY_S * 2 ** (self._snapshot_failures - 1), SNAPSHOT_RETRY_MAX_S)
                self._snapshot_retry_at = time.monotonic() + pause
                log.exception(
                    "could not write a snapshot at version %d (failure %d); the edit log still holds "
                    "every edit; next attempt in %.0f s",
                    version,
                    self._snapshot_failures,
                    pause,
                )
        return version

    # -- snapshots --------------------------------------------------------------------------------
    def snapshot(self) -> int:
        """Write a snapshot of the current version and empty the log; returns that version."""
        with self._write:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> int:
        """Snapshot, then rotate the log (see snapshot.py for why every kill point recovers). Holds the
        writer lock."""
        n = len(self._records)
        records = [
            {
                "kind": r.kind,
                "name": r.name,
                "created_at": r.created_at,
                "parents": list(r.parents),
                "alpha": r.alpha,
                "method": r.method,
                "residual": r.residual,
            }
            for r in self._records
        ]
        snap = Snapshot(self._version, self._buf[:n].copy(), records, list(self._live), time.time())
        write_snapshot(self.data_dir, snap)
        self.snapshot_version, self.snapshot_unix = snap.version, snap.created_unix
        self.log.rotate()
        return snap.version

    def _restore(self, snap: Snapshot) -> None:
        """Load a snapshot into an empty store (start-up only)."""
        n = snap.coefficients.shape[0]
        if snap.coefficients.shape[1] != self.factors.rank or snap.version < 0:
            raise BankFileError(
                f"snapshot in {self.data_dir} has rank {snap.coefficients.shape[1]}, the factors "
                f"file has rank {self.factors.rank}; it is not from this data dir"
            )
        self._buf = np.zeros((max(64, 2 * n), self.factors.rank), dtype=np.float64)
        self._buf[:n] = snap.coefficients
        for k, meta in enumerate(snap.records):
            c = snap.coefficients[k].copy()
            c.setflags(write=False)
            self._records.append(
                RuntimeRecord(
                    id=self.factors.size + k,
                    kind=meta["kind"],
                    coefficients=c,
                    name=meta.get("name"),
                    created_at=meta.get("created_at", ""),
                    parents=tuple(meta.get("parents") or ()),
                    alpha=meta.get("alpha"),
                    method=meta.get("method"),
                    residual=meta.get("residual"),
                )
            )
        live = sorted(snap.live)
        if live and (live[0] < self.factors.size or live[-1] >= self.factors.size + n):
            raise BankFileError(f"snapshot in {self.data_dir} lists live ids outside its run-time range")
        with self.index.lock:
            for sid in live:
                self._live[sid] = None
                self.index.add_runtime(sid, self._records[sid - self.factors.size].coefficients)
        self._version = self._events_base = self.snapshot_version = snap.version
        self.snapshot_unix = snap.created_unix

    def _apply(self, p: dict[str, Any]) -> None:
        """Apply one log record in memory (live commits and replay share this path)."""
        try:
            version, op, sid = int(p["v"]), p["op"], int(p["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BankFileError(f"edit log record {p!r} lacks v/op/id") from exc
        if version != self._version + 1 or op not in OPS:
            raise BankFileError(
                f"edit log record out of order or unknown: version {version} op {op!r} after "
                f"version {self._version}; the log is not from this data dir"
            )
        if op == "delete":
            with self.index.lock:
                self._live.pop(sid, None)
                self.index.remove_runtime(sid)
        else:
            c = np.asarray(p["coefficients"], dtype=np.float64)
            n = len(self._records)
            if sid != self.factors.size + n or c.shape != (self.factors.rank,):
                raise BankFileError(
                    f"edit log record {version}: id {sid} or coefficients shape {c.shape} "
                    "does not fit this bank"
                )
            if n == self._buf.shape[0]:
                # Grow by copy: views published before keep the old buffer, which nobody writes again.
                grown = np.zeros((2 * n, self.factors.rank), dtype=np.float64)
                grown[:n] = self._buf[:n]
                self._buf = grown
            self._buf[n] = c
            c.setflags(write=False)
            self._records.append(
                RuntimeRecord(
                    id=sid,
                    kind="inserted" if op == "insert" else "interpolated",
                    coefficients=c,
                    name=p.get("name"),
                    created_at=p.get("created_at", ""),
                    parents=tuple(p.get("parents", ())),
                    alpha=p.get("alpha"),
                    method=p.get("method"),
                    residual=p.get("residual"),
                )
            )
            with self.index.lock:
                self._live[sid] = None
                self.index.add_runtime(sid, c)
        self._events.append((version, op, sid))
        self._version = version
