"""Exact kNN over the bank with FAISS, on rows ``C * S^(1/2)`` (CONTRACT.md section 2).

Because ``B^T B = diag(S)``, Euclidean distance between reconstructions
``C[i] B^T + mu`` equals distance between the r-dimensional rows ``C[i] S^(1/2)``,
so an exact flat index over those rows is exact in feature space too.

Two indexes: the base rows (large, immutable, built once in a background thread
so start-up does not wait for it) and the run-time snippets (small, an
``IndexIDMap2`` that supports removal, guarded by a lock the writer also holds).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import faiss
import numpy as np

from services.bank.errors import IndexNotReady
from shared.bankmath import search_rows
from shared.factors import BankFactors

_CHUNK = 1 << 18


def _gpus() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu, which lacks the GPU API altogether."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None and hasattr(faiss, "StandardGpuResources") else 0


class SnippetIndex:
    """FAISS search over base rows plus live run-time snippets (ids are bank ids)."""

    def __init__(self, factors: BankFactors, threads: int = 1) -> None:
        faiss.omp_set_num_threads(threads)
        self._factors = factors
        self._sqrt_s = np.sqrt(np.asarray(factors.S, dtype=np.float32))
        self._base: Any = faiss.IndexFlatL2(factors.rank)  # a GPU index after _build on faiss-gpu
        self._base_ready = threading.Event()
        self._build_error: BaseException | None = None
        self.build_seconds: float | None = None
        self._thread: threading.Thread | None = None
        self._gpu_resources: Any = None
        self._runtime = faiss.IndexIDMap2(faiss.IndexFlatL2(factors.rank))
        self.lock = threading.Lock()  # guards the run-time index; the store's writer takes it too

    # -- base rows -------------------------------------------------------------------------------
    def start_build(self) -> threading.Thread:
        """Build the base index in the background (once; later calls return the same thread)."""
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._build, name="bank-index-build", daemon=True)
                self._thread.start()
            return self._thread

    def _build(self) -> None:
        start = time.perf_counter()
        try:
            C, S = self._factors.C, self._factors.S
            # Chunked so a memory-mapped C is streamed, never copied whole in float64.
            base = self._base
            if _gpus() > 0:
                # faiss-gpu builds: the same exact flat index, on the first GPU (untested here: CPU-only CI).
                self._gpu_resources = faiss.StandardGpuResources()
                base = faiss.index_cpu_to_gpu(self._gpu_resources, 0, base)
            for lo in range(0, C.shape[0], _CHUNK):
                base.add(np.ascontiguousarray(search_rows(C[lo : lo + _CHUNK], S)))
            self._base = base
        except BaseException as exc:  # surfaced to searches as not ready, and to /readyz
            self._build_error = exc
            raise
        finally:
            self.build_seconds = time.perf_counter() - start
            self._base_ready.set()

    @property
    def state(self) -> str:
        if not self._base_ready.is_set():
            return "building"
        return f"failed: {self._build_error!r}" if self._build_error else "ready"

    def wait_ready(self, timeout: float) -> None:
        if not self._base_ready.wait(timeout) or self._build_error is not None:
            raise IndexNotReady(f"the search index is not ready ({self.state}); retry shortly")

    # -- run-time snippets (caller holds self.lock) ----------------------------------------------
    def add_runtime(self, snippet_id: int, coefficients: np.ndarray) -> None:
        row = self.row(coefficients)
        self._runtime.add_with_ids(row, np.asarray([snippet_id], dtype=np.int64))

    def remove_runtime(self, snippet_id: int) -> None:
        self._runtime.remove_ids(np.asarray([snippet_id], dtype=np.int64))  # type: ignore[arg-type]

    # -- queries ---------------------------------------------------------------------------------
    def row(self, coefficients: np.ndarray) -> np.ndarray:
        """The search row ``c * S^(1/2)`` of coefficient vector(s), float32 [k, r]."""
        c = np.asarray(coefficients, dtype=np.float32).reshape(-1, self._sqrt_s.shape[0])
        return np.ascontiguousarray(c * self._sqrt_s)

    def search_base(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, self._base.ntotal)
        if k <= 0:
            return []
        dist, ids = self._base.search(query, k)
        return [(int(i), float(d)) for i, d in zip(ids[0], dist[0], strict=True) if i >= 0]

    def search_runtime(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Caller holds self.lock so the result matches one published bank version."""
        k = min(k, self._runtime.ntotal)
        if k <= 0:
            return []
        dist, ids = self._runtime.search(query, k)
        return [(int(i), float(d)) for i, d in zip(ids[0], dist[0], strict=True) if i >= 0]


def merge_neighbors(*lists: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """Nearest k of several (id, squared distance) lists, as (id, distance); ties by id."""
    merged = sorted((d, i) for lst in lists for i, d in lst)
    return [(i, float(np.sqrt(max(d, 0.0)))) for d, i in merged[:k]]
