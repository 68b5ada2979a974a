"""Typed HTTP clients for the bank and generator services (sync and async, httpx).

Errors and result types live in shared.client_types (BankInfo and Neighbor are the
bank's response models in shared.schemas.bank) and are re-exported here, so callers
import everything from ``shared.client``. Idempotent calls (GET, and the
read-only POSTs retrieve, search, project, generate) are retried with bounded
exponential backoff on Unavailable; mutations are sent once (a connect error is
still retried by the transport, since nothing reached the server). Like httpx,
the sync and async classes mirror each other: every call is built once as a
``_Call`` and sent by either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import httpx
import numpy as np

from shared.client_types import (
    BINARY,
    RETRY_STATUS,
    BadRequest,
    BankError,
    BankUnavailable,
    ClientError,
    Conflict,
    Created,
    Forbidden,
    Generation,
    ModelDescription,
    NotFound,
    Projected,
    Retrieval,
    Snippet,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    as_float_list,
    error_from_response,
    parse_binary_retrieval,
    parse_generation,
    parse_model,
    parse_retrieval,
    parse_snippet,
)
from shared.jobs_client import AsyncJobCalls, JobEvent, SyncJobCalls
from shared.schemas.bank import BankInfo, Neighbor
from shared.schemas.generator import GenerateRequest

__all__ = [
    "AsyncBankClient",
    "AsyncGeneratorClient",
    "BadRequest",
    "BankClient",
    "BankError",
    "BankInfo",
    "BankUnavailable",
    "ClientError",
    "Conflict",
    "Created",
    "Forbidden",
    "GeneratorClient",
    "Generation",
    "ModelDescription",
    "Neighbor",
    "NotFound",
    "Projected",
    "Retrieval",
    "RetryPolicy",
    "Snippet",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "error_from_response",
    "JobEvent",
]

T = TypeVar("T")

# ---------------------------------------------------------------- call description


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP call and how to read its answer, independent of sync or async sending."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    idempotent: bool = False
    auth: bool = False
    headers: dict[str, str] | None = None


def _json(fn: Callable[[dict[str, Any]], T]) -> Callable[[httpx.Response], T]:
    def parse(resp: httpx.Response) -> T:
        try:
            return fn(resp.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise UnexpectedResponse(
                f"{resp.request.url.path}: response is not the contract's: {exc}",
                status=resp.status_code,
                code="bad_response",
            ) from exc

    return parse


def _binary_retrieval(resp: httpx.Response) -> Retrieval:
    try:
        return parse_binary_retrieval(resp.headers, resp.content)
    except (ValueError, KeyError) as exc:
        raise UnexpectedResponse(
            f"{resp.request.url.path}: binary response is not the bank's: {exc}",
            status=resp.status_code,
            code="bad_response",
        ) from exc


def _none(resp: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for idempotent calls; Retry-After is honoured up to ``max_delay``."""

    attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 1.0

    def delay(self, attempt: int, err: ClientError) -> float:
        wait = self.base_delay * (2**attempt)
        if err.retry_after is not None:
            wait = max(wait, err.retry_after)
        return float(min(wait, self.max_delay))


class _Base:
    def __init__(
        self, base_url: str, token: str | None, timeout: float | httpx.Timeout, retry: RetryPolicy | None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = (
            timeout
            if isinstance(timeout, httpx.Timeout)
            else httpx.Timeout(timeout, connect=min(timeout, 3.0))
        )
        self.retry = retry or RetryPolicy()

    def _kwargs(self, call: _Call[Any]) -> dict[str, Any]:
        headers = dict(call.headers or {})
        if call.auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return {"json": call.json, "files": call.files, "data": call.data, "headers": headers}

    def _finish(self, call: _Call[T], resp: httpx.Response) -> T:
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return call.parse(resp)

    def _tries(self, call: _Call[Any]) -> int:
        return self.retry.attempts if call.idempotent else 1


def _transport_error(call: _Call[Any], base_url: str, exc: httpx.TransportError) -> Unavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return Unavailable(
        f"{call.method} {base_url}{call.path}: service {kind} ({type(exc).__name__}: {exc})",
        code="unavailable",
    )


# ---------------------------------------------------------------- transports


class _SyncSender(_Base):
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            transport=transport or httpx.HTTPTransport(retries=2),
        )

    def _send(self, call: _Call[T]) -> T:
        tries = self._tries(call)
        for attempt in range(tries):
            try:
                resp = self._http.request(call.method, call.path, **self._kwargs(call))
                if not (call.idempotent and resp.status_code in RETRY_STATUS):
                    return self._finish(call, resp)
                err: ClientError = error_from_response(resp)
            except httpx.TransportError as exc:
                if not call.idempotent and not isinstance(exc, httpx.ConnectError):
                    raise _transport_error(call, self.base_url, exc) from exc
                err = _transport_error(call, self.base_url, exc)
            if attempt + 1 < tries:
                time.sleep(self.retry.delay(attempt, err))
        raise err

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncSender(_Base):
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=2),
        )

    async def _send(self, call: _Call[T]) -> T:
        tries = self._tries(call)
        for attempt in range(tries):
            try:
                resp = await self._http.request(call.method, call.path, **self._kwargs(call))
                if not (call.idempotent and resp.status_code in RETRY_STATUS):
                    return self._finish(call, resp)
                err: ClientError = error_from_response(resp)
            except httpx.TransportError as exc:
                if not call.idempotent and not isinstance(exc, httpx.ConnectError):
                    raise _transport_error(call, self.base_url, exc) from exc
                err = _transport_error(call, self.base_url, exc)
            if attempt + 1 < tries:
                await asyncio.sleep(self.retry.delay(attempt, err))
        raise err

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------- bank calls


def _image_part(image: bytes | str | Path) -> dict[str, Any]:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return {"image": ("image", data, "application/octet-stream")}


class _BankCalls:
    """The bank's endpoints (CONTRACT.md section 4) as call descriptions."""

    @staticmethod
    def info() -> _Call[BankInfo]:
        return _Call("GET", "/bank", _json(BankInfo.model_validate), idempotent=True)

    @staticmethod
    def ready() -> _Call[bool]:
        return _Call("GET", "/readyz", lambda r: True, idempotent=False)

    @staticmethod
    def retrieve(
        z: np.ndarray | Sequence[Any] | None,
        indices: Sequence[int] | None,
        pool: str,
        encoding: str,
        label: int | None = None,
    ) -> _Call[Retrieval]:
        if (z is None) == (indices is None):
            raise ValueError("retrieve needs exactly one of z or indices")
        binary = encoding == "binary"  # raw float32 answer, fields in headers (services/bank/reads.py)
        body: dict[str, Any] = {"pool": pool} if binary else {"pool": pool, "encoding": encoding}
        if label is not None:
            body["label"] = int(label)
        if z is not None:
            za = np.asarray(z, dtype=np.float64)
            body["z"] = za.tolist() if za.ndim <= 2 else za.reshape(za.shape[0], -1).tolist()
        else:
            body["indices"] = [int(i) for i in indices]  # type: ignore[union-attr]
        if binary:
            return _Call(
                "POST",
                "/bank/retrieve",
                _binary_retrieval,
                json=body,
                idempotent=True,
                headers={"Accept": BINARY},
            )
        return _Call("POST", "/bank/retrieve", _json(parse_retrieval), json=body, idempotent=True)

    @staticmethod
    def get_snippet(snippet_id: int) -> _Call[Snippet]:
        return _Call("GET", f"/bank/snippets/{int(snippet_id)}", _json(parse_snippet), idempotent=True)

    @staticmethod
    def insert_feature(feature: Sequence[float] | np.ndarray, name: str | None) -> _Call[Created]:
        body: dict[str, Any] = {"feature": as_float_list(feature)}
        if name is not None:
            body["name"] = name
        return _Call(
            "POST",
            "/bank/snippets",
            _json(lambda b: Created(b["id"], b["version"], b.get("residual"))),
            json=body,
            auth=True,
        )

    @staticmethod
    def insert_image(image: bytes | str | Path, name: str | None) -> _Call[Created]:
        return _Call(
            "POST",
            "/bank/snippets",
            _json(lambda b: Created(b["id"], b["version"], b.get("residual"))),
            files=_image_part(image),
            data={"name": name} if name else None,
            auth=True,
        )

    @staticmethod
    def project(
        feature: Sequence[float] | np.ndarray | None, image: bytes | str | Path | None
    ) -> _Call[Projected]:
        if (feature is None) == (image is None):
            raise ValueError("project needs exactly one of feature or image")
        parse = _json(
            lambda b: Projected(
                np.asarray(b["coefficients"], np.float32),
                np.asarray(b["snippet"], np.float32),
                float(b["residual"]),
            )
        )
        if feature is not None:
            return _Call(
                "POST", "/bank/project", parse, json={"feature": as_float_list(feature)}, idempotent=True
            )
        return _Call("POST", "/bank/project", parse, files=_image_part(image), idempotent=True)  # type: ignore[arg-type]

    @staticmethod
    def interpolate(i: int, j: int, alpha: float, method: str, name: str | None) -> _Call[Created]:
        body: dict[str, Any] = {"i": int(i), "j": int(j), "alpha": float(alpha), "method": method}
        if name is not None:
            body["name"] = name
        return _Call(
            "POST", "/bank/interpolate", _json(lambda b: Created(b["id"], b["version"])), json=body, auth=True
        )

    @staticmethod
    def search(
        snippet_id: int | None,
        snippet: Sequence[float] | np.ndarray | None,
        feature: Sequence[float] | np.ndarray | None,
        k: int,
    ) -> _Call[list[Neighbor]]:
        given = [x is not None for x in (snippet_id, snippet, feature)]
        if sum(given) != 1:
            raise ValueError("search needs exactly one of snippet_id, snippet or feature")
        body: dict[str, Any] = {"k": int(k)}
        if snippet_id is not None:
            body["id"] = int(snippet_id)
        elif snippet is not None:
            body["snippet"] = as_float_list(snippet)
        else:
            body["feature"] = as_float_list(feature)  # type: ignore[arg-type]
        parse = _json(lambda b: [Neighbor.model_validate(n) for n in b["neighbors"]])
        return _Call("POST", "/bank/search", parse, json=body, idempotent=True)

    @staticmethod
    def delete(snippet_id: int) -> _Call[None]:
        return _Call("DELETE", f"/bank/snippets/{int(snippet_id)}", _none, auth=True)


class BankClient(_SyncSender):
    """Blocking client of the bank service. ``token`` authorises mutations (GMEM_BANK_TOKEN)."""

    def info(self) -> BankInfo:
        return self._send(_BankCalls.info())

    def ready(self) -> bool:
        try:
            return self._send(_BankCalls.ready())
        except ClientError:
            return False

    def retrieve(
        self,
        z: np.ndarray | Sequence[Any] | None = None,
        indices: Sequence[int] | None = None,
        pool: str = "base",
        encoding: str = "b64f32",
        label: int | None = None,
    ) -> Retrieval:
        return self._send(_BankCalls.retrieve(z, indices, pool, encoding, label))

    def get_snippet(self, snippet_id: int) -> Snippet:
        return self._send(_BankCalls.get_snippet(snippet_id))

    def insert_feature(self, feature: Sequence[float] | np.ndarray, name: str | None = None) -> Created:
        return self._send(_BankCalls.insert_feature(feature, name))

    def insert_image(self, image: bytes | str | Path, name: str | None = None) -> Created:
        return self._send(_BankCalls.insert_image(image, name))

    def project(
        self, feature: Sequence[float] | np.ndarray | None = None, image: bytes | str | Path | None = None
    ) -> Projected:
        return self._send(_BankCalls.project(feature, image))

    def interpolate(
        self, i: int, j: int, alpha: float, method: str = "linear", name: str | None = None
    ) -> Created:
        return self._send(_BankCalls.interpolate(i, j, alpha, method, name))

    def search(
        self,
        snippet_id: int | None = None,
        snippet: Sequence[float] | np.ndarray | None = None,
        feature: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
    ) -> list[Neighbor]:
        return self._send(_BankCalls.search(snippet_id, snippet, feature, k))

    def delete(self, snippet_id: int) -> None:
        self._send(_BankCalls.delete(snippet_id))


class AsyncBankClient(_AsyncSender):
    """Asyncio client of the bank service; the same calls as BankClient."""

    async def info(self) -> BankInfo:
        return await self._send(_BankCalls.info())

    async def ready(self) -> bool:
        try:
            return await self._send(_BankCalls.ready())
        except ClientError:
            return False

    async def retrieve(
        self,
        z: np.ndarray | Sequence[Any] | None = None,
        indices: Sequence[int] | None = None,
        pool: str = "base",
        encoding: str = "b64f32",
        label: int | None = None,
    ) -> Retrieval:
        return await self._send(_BankCalls.retrieve(z, indices, pool, encoding, label))

    async def get_snippet(self, snippet_id: int) -> Snippet:
        return await self._send(_BankCalls.get_snippet(snippet_id))

    async def insert_feature(self, feature: Sequence[float] | np.ndarray, name: str | None = None) -> Created:
        return await self._send(_BankCalls.insert_feature(feature, name))

    async def insert_image(self, image: bytes | str | Path, name: str | None = None) -> Created:
        return await self._send(_BankCalls.insert_image(image, name))

    async def project(
        self, feature: Sequence[float] | np.ndarray | None = None, image: bytes | str | Path | None = None
    ) -> Projected:
        return await self._send(_BankCalls.project(feature, image))

    async def interpolate(
        self, i: int, j: int, alpha: float, method: str = "linear", name: str | None = None
    ) -> Created:
        return await self._send(_BankCalls.interpolate(i, j, alpha, method, name))

    async def search(
        self,
        snippet_id: int | None = None,
        snippet: Sequence[float] | np.ndarray | None = None,
        feature: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
    ) -> list[Neighbor]:
        return await self._send(_BankCalls.search(snippet_id, snippet, feature, k))

    async def delete(self, snippet_id: int) -> None:
        await self._send(_BankCalls.delete(snippet_id))


# ---------------------------------------------------------------- generator calls


def _generate_call(**kwargs: Any) -> _Call[Generation]:
    # Validate locally with the service's own schema so a bad call fails before the network.
    try:
        req = GenerateRequest(**{k: v for k, v in kwargs.items() if v is not None})
    except ValueError as exc:
        raise BadRequest(f"invalid generate request: {exc}", code="invalid_input") from exc
    body = req.model_dump(exclude_none=True)
    # Generation is a pure function of the request, so resending it is safe.
    return _Call("POST", "/generate", _json(parse_generation), json=body, idempotent=True)


def _model_call() -> _Call[ModelDescription]:
    return _Call("GET", "/model", _json(parse_model), idempotent=True)


class GeneratorClient(SyncJobCalls, _SyncSender):
    """Blocking client of the generator service."""

    def model_info(self) -> ModelDescription:
        return self._send(_model_call())

    def ready(self) -> bool:
        try:
            return self._send(_Call("GET", "/readyz", lambda r: True))
        except ClientError:
            return False

    def generate(
        self,
        n: int = 1,
        seed: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        snippet_ids: Sequence[int] | None = None,
        snippet: Sequence[float] | np.ndarray | None = None,
        pool: str | None = None,
        cfg_scale: float | None = None,
        prompt: str | None = None,
        prompt_mode: str | None = None,
    ) -> Generation:
        return self._send(
            _generate_call(
                n=n,
                seed=seed,
                steps=steps,
                sampler=sampler,
                snippet_ids=None if snippet_ids is None else list(snippet_ids),
                snippet=None if snippet is None else as_float_list(snippet),
                pool=pool,
                cfg_scale=cfg_scale,
                prompt=prompt,
                prompt_mode=prompt_mode,
            )
        )


class AsyncGeneratorClient(AsyncJobCalls, _AsyncSender):
    """Asyncio client of the generator service."""

    async def model_info(self) -> ModelDescription:
        return await self._send(_model_call())

    async def ready(self) -> bool:
        try:
            return await self._send(_Call("GET", "/readyz", lambda r: True))
        except ClientError:
            return False

    async def generate(
        self,
        n: int = 1,
        seed: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        snippet_ids: Sequence[int] | None = None,
        snippet: Sequence[float] | np.ndarray | None = None,
        pool: str | None = None,
        cfg_scale: float | None = None,
        prompt: str | None = None,
        prompt_mode: str | None = None,
    ) -> Generation:
        return await self._send(
            _generate_call(
                n=n,
                seed=seed,
                steps=steps,
                sampler=sampler,
                snippet_ids=None if snippet_ids is None else list(snippet_ids),
                snippet=None if snippet is None else as_float_list(snippet),
                pool=pool,
                cfg_scale=cfg_scale,
                prompt=prompt,
                prompt_mode=prompt_mode,
            )
        )
