"""``POST /bank/retrieve`` off the event loop, with a binary response and route-sized body limits.

JSON stays the default (CONTRACT.md section 4). A client that sends ``Accept: application/octet-stream``
gets the snippets as raw bytes instead, with the response fields in HTTP headers::

    Content-Type: application/octet-stream
    X-GMem-Version: <bank version>        X-GMem-Pool-Size: <pool size>
    X-GMem-Shape: <k>,<d>                 X-GMem-Dtype: float32-le,int64-le
    body := snippets float32 little-endian [k, d], row-major, then indices int64 little-endian [k]

(The indices travel in the body, not in a header: 4,096 of them would exceed common header limits.)

Parsing a large JSON body and reconstructing many rows is CPU work; above ``INLINE_BYTES`` of body or
``INLINE_ROWS`` rows it runs in the thread pool, so ``/healthz`` and other requests keep being answered
meanwhile. Small requests (the generator's) stay on the loop: a thread hop costs more than their work.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pydantic_core
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response

from services.bank.errors import UnsupportedMediaType
from services.bank.parsing import parse, parse_in_worker, watch_parent
from services.bank.settings import BankSettings
from services.bank.store import BankStore
from services.bank.view import BankView
from shared.factors import BankFactors
from shared.schemas.bank import MAX_BATCH, RetrieveRequest

BINARY = "application/octet-stream"
INLINE_BYTES = 32 << 10
INLINE_ROWS = 64  # a few ms at most even when no row is cached
# Longest JSON text of one float64 plus its separator: "-1.2345678901234567e-123, ".
JSON_FLOAT_BYTES = 26
_SLACK = 16 << 10

RETRIEVE_DOC_BINARY = """
With `Accept: application/octet-stream` the answer is binary: the body is float32 little-endian
`[k, d]` snippets followed by int64 little-endian `[k]` indices; `X-GMem-Version`,
`X-GMem-Pool-Size` and `X-GMem-Shape` (`k,d`) carry the other fields.
"""
RETRIEVE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RetrieveRequest"}}},
    }
}


def document_request_model(app: FastAPI) -> None:
    """Keep ``RetrieveRequest`` in the OpenAPI components: the route reads its body itself (see above)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {})["RetrieveRequest"] = (
                RetrieveRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            )
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def body_limits(settings: BankSettings, factors: BankFactors) -> dict[str, int]:
    """Largest body each route can need (413 above it), never above GMEM_BANK_MAX_BODY_BYTES.

    Retrieval by noise needs ``retrieve_max_rows`` tensors of ``retrieve_max_noise_numel`` JSON floats;
    by id, MAX_BATCH ids. Features and snippets are ``feature_dim`` floats; images come as multipart.
    """
    ids = MAX_BATCH * 18
    noise = settings.retrieve_max_rows * settings.retrieve_max_noise_numel * JSON_FLOAT_BYTES
    feature = factors.feature_dim * JSON_FLOAT_BYTES + _SLACK
    limits = {
        "/bank/retrieve": max(ids, noise) + _SLACK,
        "/bank/snippets": max(feature, settings.max_image_bytes + 64 * 1024),
        "/bank/project": max(feature, settings.max_image_bytes + 64 * 1024),
        "/bank/search": feature,
        "/bank/interpolate": _SLACK,
    }
    return {path: min(limit, settings.max_body_bytes) for path, limit in limits.items()}


def _rows(req: RetrieveRequest) -> int:
    if req.z is not None:
        return len(req.z) if isinstance(req.z[0], list) else 1
    return len(req.indices or [])


def _answer(store: BankStore, req: RetrieveRequest, binary: bool) -> tuple[bytes, str, dict[str, str]]:
    if req.z is not None:
        zs = req.z if isinstance(req.z[0], list) else [req.z]
        return _encode(
            *store.retrieve_by_noise(zs, req.pool, req.label),  # type: ignore[arg-type]
            req,
            binary,
            _label_pool_size(store, req),
        )
    return _encode(*store.retrieve_by_id(req.indices or [], req.pool), req, binary)


def _label_pool_size(store: BankStore, req: RetrieveRequest) -> int | None:
    """With ``label``, the pool the index ran over is that label's rows (CONTRACT.md section 6)."""
    return None if req.label is None else int(store.label_pool(req.label, req.pool).size)


def _answer_zetas(
    store: BankStore, req: RetrieveRequest, zetas: list[float], binary: bool
) -> tuple[bytes, str, dict[str, str]]:
    view = store.view()
    if req.label is None and view.pool_size(req.pool) == 0:
        return _answer(store, req.model_copy(update={"z": [0.0]}), binary)  # raises EmptyPool, same message
    return _encode(
        *store.retrieve_by_statistic(zetas, req.pool, view, label=req.label),
        req,
        binary,
        _label_pool_size(store, req),
    )


def _encode(
    view: BankView,
    ids: np.ndarray,
    snippets: np.ndarray,
    req: RetrieveRequest,
    binary: bool,
    pool_size: int | None = None,
) -> tuple[bytes, str, dict[str, str]]:
    pool_size = view.pool_size(req.pool) if pool_size is None else pool_size
    if binary:
        rows = np.ascontiguousarray(snippets, dtype="<f4")
        headers = {
            "X-GMem-Version": str(view.version),
            "X-GMem-Pool-Size": str(pool_size),
            "X-GMem-Shape": f"{rows.shape[0]},{rows.shape[1]}",
            "X-GMem-Dtype": "float32-le,int64-le",
        }
        return rows.tobytes() + np.asarray(ids, dtype="<i8").tobytes(), BINARY, headers
    out = {
        "version": view.version,
        "pool_size": pool_size,
        "indices": ids.tolist(),
        "snippets": base64.b64encode(snippets.astype("<f4").tobytes()).decode("ascii")
        if req.encoding == "b64f32"
        else snippets.tolist(),
    }
    # Serialised directly: re-validating 64 x d floats through the response model would double the cost.
    return pydantic_core.to_json(out), "application/json", {}


_POOL: ProcessPoolExecutor | None = None


def _parse_pool() -> ProcessPoolExecutor:
    """One process parses large bodies: JSON parsing holds the GIL for long stretches, so in a thread
    of the server it would still starve the event loop (4 concurrent 11 MB bodies in threads:
    /healthz p50 54 ms, max 1 s). Spawned, not forked: the server runs threads."""
    global _POOL  # one per server process, created on first use
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=watch_parent,
            initargs=(os.getpid(),),
        )
    return _POOL


def shutdown() -> None:
    """Stop the parse process (the app's close())."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None


async def _parse_large(store: BankStore, body: bytes, binary: bool) -> tuple[bytes, str, dict[str, str]]:
    loop = asyncio.get_running_loop()
    parsed = await loop.run_in_executor(_parse_pool(), parse_in_worker, body)
    if parsed.errors is not None:
        raise RequestValidationError(parsed.errors)
    if parsed.gmem_error is not None:
        raise parsed.gmem_error
    assert parsed.request is not None
    if parsed.zetas is None:
        return await run_in_threadpool(_answer, store, parsed.request, binary)
    req, zetas = parsed.request, parsed.zetas
    return await run_in_threadpool(_answer_zetas, store, req, zetas, binary)


def wants_binary(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == BINARY for part in accept.split(","))


async def retrieve(store: BankStore, request: Request) -> Response:
    """The whole route: content-type check, parse + retrieve (in a thread when large), encode."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not accepted; send the JSON body with "
            "'Content-Type: application/json'"
        )
    body = await request.body()
    binary = wants_binary(request)
    if len(body) > INLINE_BYTES:
        content, media, headers = await _parse_large(store, body, binary)
    else:
        req = parse(body)
        if _rows(req) <= INLINE_ROWS:
            content, media, headers = _answer(store, req, binary)
        else:
            content, media, headers = await run_in_threadpool(_answer, store, req, binary)
    return Response(content, media_type=media, headers=headers)
