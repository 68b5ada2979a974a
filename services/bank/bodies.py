"""Request bodies the routes read by hand, and responses they assemble without a response model.

- ``read_feature_input``: ``POST /bank/snippets`` and ``/bank/project`` take JSON ``{"feature", "name"?}``
  or a multipart upload with an ``image`` file (encoded by the configured encoder);
- ``retrieve_body``: the retrieve answer serialised directly (re-validating 64 x d floats through the
  response model would double its cost);
- ``snippet_info``: ``GET /bank/snippets/{id}`` for a base row or a run-time snippet.
"""

from __future__ import annotations

import base64

import numpy as np
import pydantic_core
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response

from services.bank.deps import BankState
from services.bank.errors import PayloadTooLarge, UnsupportedMediaType
from services.bank.images import decode_image
from services.bank.view import BankView
from shared.errors import InvalidImage, InvalidInput
from shared.schemas.bank import MAX_NAME, FeatureInput, SnippetInfo
from shared.schemas.enums import Pool

FeatureAndName = tuple[np.ndarray | list[float], str | None]


async def read_feature_input(bank: BankState, request: Request) -> FeatureAndName:
    """The feature (raw, or encoded from the uploaded image) and the optional name of the request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            body = FeatureInput.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
        return body.feature, body.name
    if ctype == "multipart/form-data":
        return await read_image_feature(bank, request)
    raise UnsupportedMediaType(
        f"content type {ctype or 'none'!r} is not accepted; send application/json "
        "{\"feature\": [...]} or multipart/form-data with an 'image' file"
    )


async def read_image_feature(bank: BankState, request: Request) -> tuple[np.ndarray, str | None]:
    """One ``image`` file part (at most GMEM_BANK_MAX_IMAGE_BYTES) and an optional ``name`` field."""
    settings = bank.settings
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as exc:  # malformed multipart: a client error, reported like any bad input
        raise InvalidInput(
            f"unreadable multipart body ({exc.detail}); send one 'image' file part and an "
            "optional 'name' field"
        ) from exc
    try:
        upload, name = form.get("image"), form.get("name")
        if not isinstance(upload, UploadFile):
            raise InvalidImage("multipart body has no 'image' file part; upload the image as a file")
        if upload.size is not None and upload.size > settings.max_image_bytes:
            raise PayloadTooLarge(
                f"image of {upload.size} bytes exceeds GMEM_BANK_MAX_IMAGE_BYTES="
                f"{settings.max_image_bytes}; send a smaller file"
            )
        data = await upload.read()
    finally:
        await form.close()
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        raise InvalidImage(f"'name' must be a text field of at most {MAX_NAME} characters")
    bank.images.require()  # EncoderUnavailable before spending time on decoding
    image = await run_in_threadpool(
        decode_image, data, settings.max_image_pixels, settings.max_image_aspect, bank.images.background
    )
    feature = await run_in_threadpool(bank.images.feature, image)
    return feature, name if isinstance(name, str) else None


def retrieve_body(
    view: BankView, pool: Pool, ids: np.ndarray, snippets: np.ndarray, encoding: str
) -> Response:
    body = {
        "version": view.version,
        "pool_size": view.pool_size(pool),
        "indices": ids.tolist(),
        "snippets": base64.b64encode(snippets.astype("<f4").tobytes()).decode("ascii")
        if encoding == "b64f32"
        else snippets.tolist(),
    }
    return Response(pydantic_core.to_json(body), media_type="application/json")


def snippet_info(bank: BankState, snippet_id: int) -> SnippetInfo:
    store = bank.store
    view = store.view()
    rec = store.record(view, snippet_id)
    rows = np.asarray([snippet_id])
    coefficients = store.coefficient_rows(view, rows)[0] if rec is None else rec.coefficients
    return SnippetInfo(
        id=snippet_id,
        kind="base" if rec is None else rec.kind,
        label=store.label(snippet_id),
        parents=list(rec.parents) if rec else [],
        alpha=rec.alpha if rec else None,
        name=rec.name if rec else None,
        created_at=rec.created_at if rec else None,
        snippet=store.snippets(view, rows)[0].tolist(),
        coefficients=coefficients.tolist(),
    )
