"""Published state of the bank: one immutable ``BankView`` per version, read by requests without locks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RuntimeRecord:
    """A snippet added at run time: how it was made and its coefficients in the bank's basis."""

    id: int
    kind: str  # "inserted" | "interpolated"
    coefficients: np.ndarray  # [r] float64, exactly as acknowledged
    name: str | None
    created_at: str
    parents: tuple[int, ...] = ()
    alpha: float | None = None
    method: str | None = None
    residual: float | None = None


@dataclass(frozen=True)
class BankView:
    """One published version of the bank; safe to read from any thread."""

    version: int
    base_size: int
    n_runtime: int  # run-time ids ever allocated: base_size .. base_size + n_runtime - 1
    user_ids: np.ndarray  # live run-time ids, ascending (pool `user`)
    coeffs: np.ndarray  # run-time coefficient buffer, rows < n_runtime valid
    records: list[RuntimeRecord] = field(repr=False)  # append-only, entries < n_runtime valid

    def pool_size(self, pool: str) -> int:
        user = int(self.user_ids.shape[0])
        return {"base": self.base_size, "user": user, "all": self.base_size + user}[pool]

    def is_live(self, snippet_id: int) -> bool:
        if 0 <= snippet_id < self.base_size:
            return True
        pos = int(np.searchsorted(self.user_ids, snippet_id))
        return pos < self.user_ids.shape[0] and int(self.user_ids[pos]) == snippet_id

    def in_pool(self, snippet_id: int, pool: str) -> bool:
        if pool == "base":
            return 0 <= snippet_id < self.base_size
        if pool == "user":
            return snippet_id >= self.base_size and self.is_live(snippet_id)
        return self.is_live(snippet_id)

    def ids_at(self, positions: np.ndarray, pool: str) -> np.ndarray:
        """Snippet ids at pool positions (pool order: base ids, then live run-time ids ascending)."""
        if pool == "base":
            return positions
        if pool == "user":
            user: np.ndarray = self.user_ids[positions]
            return user
        return np.where(
            positions < self.base_size,
            positions,
            self.user_ids[np.maximum(positions - self.base_size, 0)] if self.user_ids.size else positions,
        )
