"""Errors and result types of the GMem service clients (re-exported by shared.client).

Exception tree (what a caller catches)::

    ClientError                 any failed call; .status, .code, .message, .detail, .retry_after
    ├── Unavailable             cannot connect, timed out, or 502/503/504 (alias BankUnavailable)
    ├── BadRequest              400/413/422: the request was wrong; do not retry
    ├── Unauthorized            401: missing or wrong bearer token
    ├── Forbidden               403: mutations disabled (no token configured on the service)
    ├── NotFound                404: unknown snippet id or route
    ├── Conflict                409: e.g. deleting a base row, empty pool
    └── UnexpectedResponse      any other status, or a body that is not the contract's

Both services answer errors as ``{"error": {"code", "message"}}``; the code and
message are carried over.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

# ---------------------------------------------------------------- errors


class ClientError(Exception):
    """A call to a GMem service failed."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str = "client_error",
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        # The service's own message (without method, path and status), for passing on to users.
        self.detail = detail if detail is not None else message


class Unavailable(ClientError):
    """The service could not be reached, timed out, or said it is unavailable (retry later)."""


class BadRequest(ClientError):
    """The service rejected the request's content (400, 413, 422)."""


class Unauthorized(ClientError):
    """Missing or wrong bearer token (401)."""


class Forbidden(ClientError):
    """The service refuses the operation (403), e.g. mutations without a configured token."""


class NotFound(ClientError):
    """Unknown id or route (404)."""


class Conflict(ClientError):
    """The request conflicts with the bank's state (409)."""


class UnexpectedResponse(ClientError):
    """A status or body outside the contract."""


# Older names of the client's errors, kept for callers (ClientError and Unavailable are the canonical ones).
BankError = ClientError
BankUnavailable = Unavailable

_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
RETRY_STATUS = frozenset({502, 503, 504})


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def error_from_response(resp: httpx.Response) -> ClientError:
    """Map a non-2xx response (with the error envelope when present) to its exception."""
    code, message = f"http_{resp.status_code}", resp.text[:500] or resp.reason_phrase
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", code))
            message = str(body["error"].get("message", message))
    except ValueError:
        pass
    cls = _BY_STATUS.get(resp.status_code, UnexpectedResponse)
    return cls(
        f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {code}: {message}",
        status=resp.status_code,
        code=code,
        retry_after=_retry_after(resp),
        detail=message,
    )


# ---------------------------------------------------------------- results

# BankInfo (GET /bank) and Neighbor (a hit of POST /bank/search) need nothing beyond the bank's
# response models, which shared.client returns as they are; the types here add decoded arrays or
# bytes (or keep unknown fields, ModelDescription.extra).


@dataclass(frozen=True)
class Retrieval:
    """POST /bank/retrieve: one snippet (unit row) per index, at bank ``version``."""

    version: int
    pool_size: int
    indices: list[int]
    snippets: np.ndarray  # [k, d] float32


@dataclass(frozen=True)
class Snippet:
    """GET /bank/snippets/{id}."""

    id: int
    kind: str
    snippet: np.ndarray
    coefficients: np.ndarray
    label: int | None = None
    parents: list[int] | None = None
    alpha: float | None = None
    name: str | None = None
    created_at: Any = None


@dataclass(frozen=True)
class Created:
    """A new snippet: its id, the bank version after the insert, and the projection residual if any."""

    id: int
    version: int
    residual: float | None = None


@dataclass(frozen=True)
class Projected:
    coefficients: np.ndarray
    snippet: np.ndarray
    residual: float


@dataclass(frozen=True)
class ModelDescription:
    """GET /model as the client reads it: the contract's fields, anything newer in ``extra``.

    (The service's own response model is ``shared.schemas.generator.ModelInfo``.)
    """

    id: str
    parameters: int
    resolution: int
    channels: int
    feature_dim: int
    default_steps: int
    samplers: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """POST /generate with the PNGs decoded from base64."""

    images: list[bytes]
    seed: int
    indices: list[int | None]
    bank_version: int | None
    model: str
    steps: int
    sampler: str
    elapsed_ms: float
    prompt: dict[str, Any] | None = None  # how a prompt was read (PromptInfo), for prompt requests


def decode_snippets(raw: Any, k: int) -> np.ndarray:
    if isinstance(raw, str):
        arr = np.frombuffer(base64.b64decode(raw), dtype="<f4")
        return arr.reshape(k, -1).astype(np.float32) if k else arr.reshape(0, 0)
    return np.asarray(raw, dtype=np.float32).reshape(k, -1) if k else np.zeros((0, 0), np.float32)


BINARY = "application/octet-stream"


def parse_binary_retrieval(headers: Mapping[str, str], content: bytes) -> Retrieval:
    """The bank's binary retrieval: float32 LE [k, d] then int64 LE [k] ids; fields in X-GMem-* headers."""
    if headers.get("content-type", "").split(";")[0].strip() != BINARY:
        raise ValueError(f"content type {headers.get('content-type')!r}, expected {BINARY}")
    k, d = (int(x) for x in headers["x-gmem-shape"].split(","))
    if len(content) != k * d * 4 + k * 8:
        raise ValueError(f"body of {len(content)} bytes does not hold [{k}, {d}] float32 and {k} int64 ids")
    snippets = np.frombuffer(content, dtype="<f4", count=k * d).reshape(k, d).astype(np.float32)
    ids = np.frombuffer(content, dtype="<i8", offset=k * d * 4, count=k)
    return Retrieval(int(headers["x-gmem-version"]), int(headers["x-gmem-pool-size"]), ids.tolist(), snippets)


def parse_retrieval(body: dict[str, Any]) -> Retrieval:
    idx = [int(i) for i in body["indices"]]
    return Retrieval(
        int(body["version"]), int(body["pool_size"]), idx, decode_snippets(body["snippets"], len(idx))
    )


def parse_snippet(body: dict[str, Any]) -> Snippet:
    return Snippet(
        id=int(body["id"]),
        kind=body["kind"],
        snippet=np.asarray(body["snippet"], np.float32),
        coefficients=np.asarray(body.get("coefficients") or [], np.float32),
        label=body.get("label"),
        parents=body.get("parents"),
        alpha=body.get("alpha"),
        name=body.get("name"),
        created_at=body.get("created_at"),
    )


def parse_model(body: dict[str, Any]) -> ModelDescription:
    keys = ("id", "parameters", "resolution", "channels", "feature_dim", "default_steps", "samplers")
    return ModelDescription(
        **{k: body[k] for k in keys}, extra={k: v for k, v in body.items() if k not in keys}
    )


def parse_generation(body: dict[str, Any]) -> Generation:
    return Generation(
        images=[base64.b64decode(s) for s in body["images"]],
        seed=int(body["seed"]),
        indices=body["indices"],
        bank_version=body["bank_version"],
        model=body["model"],
        steps=int(body["steps"]),
        sampler=body["sampler"],
        elapsed_ms=float(body["elapsed_ms"]),
        prompt=body.get("prompt"),
    )


def as_float_list(x: Sequence[float] | np.ndarray) -> list[float]:
    return np.asarray(x, dtype=np.float64).reshape(-1).tolist()
