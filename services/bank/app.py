"""The bank service's HTTP routes (CONTRACT.md section 4): thin handlers over ``BankStore``."""

from __future__ import annotations

import base64
import hmac
from typing import Annotated

import numpy as np
import pydantic_core
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from services.bank import errors
from services.bank.errors import (
    MutationsDisabled,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    responses,
)
from services.bank.events import EventPublisher
from services.bank.images import Encoder, ImageEncoder, decode_image, load_configured_encoder
from services.bank.metrics import BankMetrics
from services.bank.middleware import RequestContext
from services.bank.settings import BankSettings
from services.bank.store import BankStore
from shared.errors import InvalidImage, InvalidInput
from shared.schemas.bank import (
    MAX_ID,
    BankInfo,
    FeatureInput,
    Health,
    InsertResponse,
    InterpolateRequest,
    MutationResponse,
    Neighbor,
    ProjectResponse,
    Readiness,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
    SnippetInfo,
)

SnippetPathId = Annotated[int, Path(ge=0, le=MAX_ID, description="snippet id")]

_FEATURE_OR_IMAGE = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": FeatureInput.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG/JPEG/WebP file"},
                        "name": {"type": "string", "maxLength": 200},
                    },
                }
            },
        },
    }
}

_RETRIEVE_DOC = """Snippets for a batch, by noise-CDF index or by id.

* `{"z": [float]}`: one flattened noise tensor -> one snippet, index
  `min(floor(Phi(sum(z)/sqrt(numel z)) * n), n - 1)` into the pool (paper 4.3).
* `{"z": [[float], ...]}`: a batch, one index per row.
* `{"indices": [int]}`: snippet ids; `pool` then only checks each id is in that pool.

Pools: `base` (ids 0..N0-1), `user` (live run-time ids, ascending), `all` (base then user).
Returned `indices` are snippet ids. `version` and `pool_size` belong to the same
bank version as the snippets. `encoding: b64f32` returns base64 of row-major
float32 little-endian `[k, feature_dim]`.
"""


def create_app(settings: BankSettings, store: BankStore | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the bank app. Opens the store (factors + edit log) unless one is given.

    ``app.state.close()`` stops the event publisher and closes a store the app opened (a store passed
    in belongs to the caller). It is not tied to the ASGI lifespan, so test clients can enter and
    leave the app many times; ``__main__`` calls it after the server stops.
    """
    owns_store = store is None
    store = store or BankStore.open(settings.factors, settings.data_dir, settings.faiss_threads,
                                     settings.snapshot_every)
    try:
        images = ImageEncoder(encoder or load_configured_encoder(settings.encoder, settings.encoder_weights,
                                                                 store.factors))
    except BaseException:
        if owns_store:
            store.close()
        raise
    metrics = BankMetrics()
    publisher: EventPublisher | None = None
    if settings.redis_url:
        publisher = EventPublisher(store, settings.redis_url, settings.redis_stream, settings.redis_maxlen,
                                   settings.redis_timeout_s, on_failure=metrics.redis_failures.inc)
    metrics.bind(
        size=lambda pool: store.view().pool_size(pool),
        version=lambda: store.view().version,
        last_fsync=lambda: store.last_fsync_s,
        snapshot_version=lambda: store.snapshot_version,
        snapshot_time=lambda: store.snapshot_unix,
        redis_up=lambda: 1.0 if publisher is not None and publisher.up else 0.0,
        redis_pending=lambda: publisher.pending if publisher is not None else 0.0,
    )
    store.add_listener(lambda: metrics.fsync.observe(store.last_fsync_s))
    store.index.start_build()
    if publisher is not None:
        publisher.start()

    def close() -> None:
        if publisher is not None:
            publisher.stop()
        if owns_store:
            store.close()

    app = FastAPI(
        title="GMem bank service",
        version="1",
        description="The GMem memory bank as a live service: noise-CDF retrieval for generators and durable, "
        "versioned test-time edits (insert, interpolate, delete). See CONTRACT.md section 4.",
    )
    app.state.store, app.state.publisher, app.state.metrics, app.state.close = store, publisher, metrics, close
    errors.install(app)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="GMEM_BANK_TOKEN; needed for mutations only")

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.token is None or not settings.token.get_secret_value():
            raise MutationsDisabled("mutations are disabled because no token is configured; start the bank with "
                                    "GMEM_BANK_TOKEN=<secret> and send 'Authorization: Bearer <secret>'")
        if creds is None or not hmac.compare_digest(creds.credentials.encode(),
                                                    settings.token.get_secret_value().encode()):
            raise Unauthorized("missing or wrong bearer token; send 'Authorization: Bearer <GMEM_BANK_TOKEN>'")

    mutation = [Depends(require_token)]

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, responses=responses(503), tags=["ops"])
    async def readyz(response: Response) -> Readiness:
        view = store.view()
        detail = {"factors": f"loaded ({store.factors.size} rows)", "index": store.index.state,
                  "version": str(view.version),
                  "redis": "disabled" if publisher is None else f"{publisher.state}, {publisher.pending} pending"}
        ready = not store.index.state.startswith("failed")
        response.status_code = 200 if ready else 503
        if not ready:
            response.headers["Retry-After"] = errors.RETRY_AFTER_S
        return Readiness(status="ready" if ready else "not_ready", detail=detail)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/bank", response_model=BankInfo, tags=["bank"])
    async def bank_info() -> BankInfo:
        view, f = store.view(), store.factors
        return BankInfo(version=view.version, size=view.pool_size("all"), base_size=f.size, feature_dim=f.feature_dim,
                        rank=f.rank, encoder=f.meta.encoder, format_version=f.meta.format_version,
                        source=f.meta.source or None)

    @app.post("/bank/retrieve", response_model=RetrieveResponse, responses=responses(404, 409, 413, 415, 422),
              description=_RETRIEVE_DOC, tags=["bank"])
    async def retrieve(req: RetrieveRequest) -> Response:
        if req.z is not None:
            zs = req.z if isinstance(req.z[0], list) else [req.z]
            view, ids, snippets = store.retrieve_by_noise(zs, req.pool)  # type: ignore[arg-type]
        else:
            view, ids, snippets = store.retrieve_by_id(req.indices or [], req.pool)
        body = {"version": view.version, "pool_size": view.pool_size(req.pool), "indices": ids.tolist(),
                "snippets": base64.b64encode(snippets.astype("<f4").tobytes()).decode("ascii")
                if req.encoding == "b64f32" else snippets.tolist()}
        # Serialised directly: re-validating 64 x d floats through the response model would double the cost.
        return Response(pydantic_core.to_json(body), media_type="application/json")

    @app.get("/bank/snippets/{id}", response_model=SnippetInfo, responses=responses(404, 422), tags=["bank"])
    def get_snippet(id: SnippetPathId) -> SnippetInfo:
        view = store.view()
        rec = store.record(view, id)
        coefficients = store.coefficient_rows(view, np.asarray([id]))[0] if rec is None else rec.coefficients
        return SnippetInfo(
            id=id, kind="base" if rec is None else rec.kind, label=store.label(id),  # type: ignore[arg-type]
            parents=list(rec.parents) if rec else [], alpha=rec.alpha if rec else None,
            name=rec.name if rec else None, created_at=rec.created_at if rec else None,
            snippet=store.snippets(view, np.asarray([id]))[0].tolist(), coefficients=coefficients.tolist())

    async def feature_input(request: Request) -> tuple[np.ndarray | list[float], str | None]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                body = FeatureInput.model_validate_json(await request.body())
            except ValidationError as exc:
                raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
            return body.feature, body.name
        if ctype == "multipart/form-data":
            return await image_feature(request)
        raise UnsupportedMediaType(f"content type {ctype or 'none'!r} is not accepted; send application/json "
                                   "{\"feature\": [...]} or multipart/form-data with an 'image' file")

    async def image_feature(request: Request) -> tuple[np.ndarray, str | None]:
        try:
            form = await request.form(max_files=1, max_fields=8)
        except HTTPException as exc:  # malformed multipart: a client error, reported like any bad input
            raise InvalidInput(f"unreadable multipart body ({exc.detail}); send one 'image' file part and an "
                               "optional 'name' field") from exc
        try:
            upload, name = form.get("image"), form.get("name")
            if not isinstance(upload, UploadFile):
                raise InvalidImage("multipart body has no 'image' file part; upload the image as a file")
            if upload.size is not None and upload.size > settings.max_image_bytes:
                raise PayloadTooLarge(f"image of {upload.size} bytes exceeds GMEM_BANK_MAX_IMAGE_BYTES="
                                      f"{settings.max_image_bytes}; send a smaller file")
            data = await upload.read()
        finally:
            await form.close()
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise InvalidImage("'name' must be a text field of at most 200 characters")
        images.require()  # EncoderUnavailable before spending time on decoding
        image = await run_in_threadpool(decode_image, data, settings.max_image_pixels)
        return await run_in_threadpool(images.feature, image), name

    @app.post("/bank/snippets", status_code=201, response_model=InsertResponse, dependencies=mutation,
              responses=responses(401, 403, 413, 415, 422, 503), openapi_extra=_FEATURE_OR_IMAGE, tags=["edit"])
    async def insert(request: Request) -> InsertResponse:
        """Insert a snippet: project a feature (or an image's feature) onto the bank (eq. 10) and append it."""
        feature, name = await feature_input(request)
        sid, version, residual = await run_in_threadpool(store.insert, feature, name)
        return InsertResponse(id=sid, version=version, residual=residual)

    @app.post("/bank/project", response_model=ProjectResponse, responses=responses(413, 415, 422),
              openapi_extra=_FEATURE_OR_IMAGE, tags=["bank"])
    async def project(request: Request) -> ProjectResponse:
        """Eq. 10 without storing: coefficients, the snippet they give, and the residual."""
        feature, _ = await feature_input(request)
        c, snippet, residual = await run_in_threadpool(store.project, feature)
        return ProjectResponse(coefficients=c.tolist(), snippet=snippet.tolist(), residual=residual)

    @app.post("/bank/interpolate", status_code=201, response_model=MutationResponse, dependencies=mutation,
              responses=responses(401, 403, 404, 413, 415, 422, 503), tags=["edit"])
    def interpolate(req: InterpolateRequest) -> MutationResponse:
        """Eq. 11 between two live snippets (base or run-time), appended as a new snippet."""
        sid, version = store.interpolate(req.i, req.j, req.alpha, req.method, req.name)
        return MutationResponse(id=sid, version=version)

    @app.post("/bank/search", response_model=SearchResponse, responses=responses(404, 413, 415, 422, 503),
              tags=["bank"])
    def search(req: SearchRequest) -> SearchResponse:
        """Exact kNN (FAISS) by distance between reconstructions, over live snippets of the pool."""
        if req.id is not None:
            view = store.view()
            store.record(view, req.id)
            c = store.coefficient_rows(view, np.asarray([req.id]))[0]
        else:
            c = store.project(req.snippet if req.snippet is not None else req.feature)[0]  # type: ignore[arg-type]
        _, hits = store.search(c, req.k, req.pool)
        return SearchResponse(neighbors=[Neighbor(id=i, distance=d) for i, d in hits])

    @app.delete("/bank/snippets/{id}", status_code=204, response_class=Response, dependencies=mutation,
                responses=responses(401, 403, 404, 409, 422, 503), tags=["edit"])
    def delete(id: SnippetPathId) -> Response:
        """Delete a run-time snippet (base rows are immutable: 409). Its id is never reused."""
        store.delete(id)
        return Response(status_code=204)

    return app
