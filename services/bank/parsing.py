"""Parsing retrieval bodies, light enough to import in the parse worker process (no FAISS, no store).

``services.bank.reads`` sends bodies above 32 KiB here, in a spawned process: JSON parsing holds the
GIL for long stretches, so in a thread of the server it would still starve the event loop.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, NamedTuple, cast

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from shared import bankmath
from shared.errors import GMemError, InvalidInput
from shared.schemas.bank import RetrieveRequest

_MAX_NOISE = 1e150


def noise_statistic(z: list[float] | np.ndarray) -> float:
    """Paper 4.3's ``zeta`` of one flattened noise tensor, refusing entries that could overflow its sum."""
    a = np.asarray(z, dtype=np.float64)
    if a.size and np.max(np.abs(a)) > _MAX_NOISE:
        # sum(z) could overflow to inf or nan; iid N(0, 1) noise never comes near this.
        raise InvalidInput(f"noise entries must satisfy |z| <= {_MAX_NOISE:g}; z is iid N(0, 1) noise")
    return bankmath.noise_statistic(a)


def parse(body: bytes) -> RetrieveRequest:
    try:
        return RetrieveRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))} for e in errors]) from exc


class _Parsed(NamedTuple):
    """What the parse worker sends back: the request without its noise, or why it is invalid."""

    request: RetrieveRequest | None  # z dropped (replaced by zetas) to keep the reply small
    zetas: list[float] | None
    errors: list[dict[str, Any]] | None = None
    gmem_error: GMemError | None = None


def parse_in_worker(body: bytes) -> _Parsed:
    """Validate a large body and reduce every noise tensor to its zeta (runs in the parse process)."""
    try:
        req = parse(body)
    except RequestValidationError as exc:
        return _Parsed(
            None,
            None,
            errors=[{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()],
        )
    if req.z is None:
        return _Parsed(req, None)
    # a list of lists is a batch of noises (the schema admits no mixture); isinstance cannot narrow it
    zs = cast("list[list[float]]", req.z if isinstance(req.z[0], list) else [req.z])
    try:
        zetas = [noise_statistic(z) for z in zs]
    except GMemError as exc:
        return _Parsed(None, None, gmem_error=exc)
    return _Parsed(req.model_copy(update={"z": None}), zetas)


def watch_parent(parent_pid: int) -> None:
    """Parse-worker initializer: exit when the bank process is gone (even after its SIGKILL).

    A ProcessPoolExecutor worker outlives a killed parent otherwise, idle forever.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="gmem-parent-watch", daemon=True).start()
