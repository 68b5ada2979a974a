"""The playground's bank routes: browse, insert a style, search, interpolate, delete, source images."""

from __future__ import annotations

import asyncio
import io
from statistics import NormalDist
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from services.playground.errors import BadUpload, NoProvenance, PlaygroundError
from services.playground.schemas import InterpolateBody, SearchBody
from services.playground.upstream import shape_generation
from shared.client import Snippet
from shared.schemas.bank import MAX_ID

if TYPE_CHECKING:
    from services.playground.app import State

router = APIRouter(prefix="/api", tags=["bank"])
SnippetId = Annotated[int, Path(ge=0, le=MAX_ID, description="snippet id")]
FETCH_CONCURRENCY = 8


def _state(request: Request) -> State:
    state: State = request.app.state.playground
    return state


def _summary(s: Snippet, has_source: bool) -> dict[str, Any]:
    return {
        "id": s.id,
        "kind": s.kind,
        "label": s.label,
        "name": s.name,
        "parents": s.parents or [],
        "alpha": s.alpha,
        "created_at": s.created_at,
        "source": f"/api/sources/{s.id}.png" if has_source else None,
    }


async def _summaries(st: State, ids: list[int]) -> list[dict[str, Any]]:
    """GET /bank/snippets/{id} for each id (a few at a time), in order."""
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)
    with st.up.bank_call():
        base_size = (await st.up.bank.info()).base_size
    sources = await st.source_images()
    await asyncio.to_thread(sources.available, base_size)

    async def one(i: int) -> dict[str, Any]:
        async with sem, asyncio.timeout(st.settings.bank_timeout_s * 2):
            with st.up.bank_call():
                return _summary(await st.up.bank.get_snippet(i), sources.has(i, base_size))

    return list(await asyncio.gather(*(one(i) for i in ids)))


def _bin_centres(start: int, stop: int, n: int) -> np.ndarray:
    # The bank's noise-CDF index of a one-element z is min(floor(Phi(z) * n), n - 1) (CONTRACT.md
    # section 2), so z = Phi^-1((k + 0.5) / n) selects exactly the k-th snippet of a pool: the
    # contract's way to list the live run-time ids, which have gaps after deletes.
    inv = NormalDist().inv_cdf
    return np.asarray([[inv((k + 0.5) / n)] for k in range(start, stop)], dtype=np.float64)


@router.get("/snippets")
async def list_snippets(
    request: Request,
    pool: Literal["base", "user", "all"] = "base",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 24,
) -> dict[str, Any]:
    """One page of a pool's snippets with kind, label, name, parents and a source image link."""
    st = _state(request)
    limit = min(limit, st.settings.page_size)
    with st.up.bank_call():
        info = await st.up.bank.info()
    total = {"base": info.base_size, "user": info.size - info.base_size, "all": info.size}[pool]
    stop = min(offset + limit, total)
    if offset >= stop:
        ids: list[int] = []
    elif pool == "base":
        ids = list(range(offset, stop))
    else:
        with st.up.bank_call():
            got = await st.up.bank.retrieve(z=_bin_centres(offset, stop, total), pool=pool)
        if got.pool_size != total:  # the pool changed between the two calls; the page can reload
            raise PlaygroundError("the bank changed while this page was read; reload it", 409, "bank_changed")
        ids = got.indices
    return {
        "pool": pool,
        "offset": offset,
        "limit": limit,
        "total": total,
        "version": info.version,
        "items": await _summaries(st, ids),
    }


@router.get("/snippets/{id}")
async def get_snippet(request: Request, id: SnippetId) -> dict[str, Any]:
    return (await _summaries(_state(request), [id]))[0]


@router.delete("/snippets/{id}", status_code=204)
async def delete_snippet(request: Request, id: SnippetId) -> Response:
    """Delete a run-time snippet (the bank answers 409 for a base row)."""
    st = _state(request)
    with st.up.bank_call():
        await st.up.bank.delete(id)
    return Response(status_code=204)


def _checked_image(data: bytes, limit: int) -> bytes:
    """The upload as PNG bytes for the provenance view; refuses what is not an image."""
    if not data:
        raise BadUpload("the uploaded file is empty; choose a PNG, JPEG or WebP image", 422, "empty_upload")
    if len(data) > limit:
        raise BadUpload(
            f"the image is {len(data)} bytes, over the playground's limit of {limit} "
            "(GMEM_PLAYGROUND_MAX_UPLOAD_BYTES)",
            413,
            "upload_too_large",
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im.thumbnail((256, 256))
            buf = io.BytesIO()
            im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode).save(buf, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadUpload(
            f"the uploaded file is not an image the playground can read ({type(exc).__name__}); "
            "choose a PNG, JPEG or WebP file"
        ) from exc
    return buf.getvalue()


@router.post("/snippets", status_code=201)
async def insert_style(
    request: Request,
    image: Annotated[UploadFile, File()],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> JSONResponse:
    """Insert a style from an image: the bank encodes and projects it (eq. 10) and stores the snippet."""
    st = _state(request)
    data = await image.read(st.settings.max_upload_bytes + 1)
    thumb = _checked_image(data, st.settings.max_upload_bytes)
    with st.up.bank_call():
        created = await st.up.bank.insert_image(data, name=name or image.filename or None)
    (await st.source_images()).remember_upload(created.id, thumb)
    return JSONResponse(
        {"id": created.id, "version": created.version, "residual": created.residual}, status_code=201
    )


@router.post("/search")
async def search(request: Request, body: SearchBody) -> dict[str, Any]:
    """Nearest live snippets to a snippet id, each with its summary and source image link."""
    st = _state(request)
    with st.up.bank_call():
        hits = await st.up.bank.search(snippet_id=body.id, k=body.k)
    rows = await _summaries(st, [h.id for h in hits])
    return {
        "query": body.id,
        "neighbors": [{**row, "distance": h.distance} for row, h in zip(rows, hits, strict=True)],
    }


@router.post("/interpolate")
async def interpolate(request: Request, body: InterpolateBody) -> dict[str, Any]:
    """A strip from A to B: one bank interpolation (eq. 11) and one image per alpha, same seed for all."""
    st = _state(request)
    alphas = body.alpha_list()
    if len(alphas) > st.settings.max_alphas:
        raise PlaygroundError(
            f"{len(alphas)} alphas asked, at most {st.settings.max_alphas} (GMEM_PLAYGROUND_MAX_ALPHAS)",
            422,
            "too_many_alphas",
        )
    created: list[int] = []
    try:
        for alpha in alphas:
            # eq. 11 weights snippet i by alpha: i = B, j = A, so alpha 0 is A and alpha 1 is B.
            with st.up.bank_call():
                c = await st.up.bank.interpolate(
                    body.b,
                    body.a,
                    alpha,
                    method=body.method,
                    name=f"playground {body.a}..{body.b} {body.method} alpha={alpha:.3f}",
                )
            created.append(c.id)
        sampling = body.model_dump(include={"seed", "steps", "sampler", "cfg_scale"}, exclude_none=True)
        with st.up.generator_call():
            # n = 1 per alpha: image k of one request would use seed + k, and the strip needs one noise.
            gens = await asyncio.gather(
                *(st.up.generator.generate(n=1, snippet_ids=[i], **sampling) for i in created)
            )
    finally:
        if not body.keep:
            with st.up.bank_call():
                for i in created:
                    await st.up.bank.delete(i)
    items = []
    for alpha, sid, gen in zip(alphas, created, gens, strict=True):
        shaped = shape_generation(gen)
        items.append(
            {"alpha": alpha, "snippet_id": sid, **shaped["images"][0], "bank_version": gen.bank_version}
        )
    return {
        "a": body.a,
        "b": body.b,
        "method": body.method,
        "seed": body.seed,
        "kept": body.keep,
        "items": items,
    }


@router.get(
    "/sources/{id}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no source image"}},
)
async def source_image(request: Request, id: SnippetId) -> Response:
    """The dataset image behind base snippet ``id`` (or the style image uploaded for an inserted one)."""
    st = _state(request)
    with st.up.bank_call():
        base_size = (await st.up.bank.info()).base_size
    sources = await st.source_images()
    png = await asyncio.to_thread(sources.png, id, base_size)
    if png is None:
        why = (
            sources.reason
            if id < base_size
            else "it is a run-time snippet not inserted through this playground"
        )
        raise NoProvenance(f"no source image for snippet {id}: {why}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
