"""The bank service's app factory (CONTRACT.md section 4); the routes live in ``services/bank/routes/``."""

from __future__ import annotations

from fastapi import FastAPI

from services.bank import reads
from services.bank.deps import BankState, token_guard
from services.bank.errors import RETRY_AFTER_S, STATUS
from services.bank.events import EventPublisher
from services.bank.images import FeatureEncoder, ImageEncoder, load_configured_encoder
from services.bank.metrics import BankMetrics
from services.bank.routes import bank, edits, ops
from services.bank.settings import BankSettings
from services.bank.store import BankStore
from shared.http.errors import install_error_handlers
from shared.http.middleware import RequestContext


def _publisher(settings: BankSettings, store: BankStore, metrics: BankMetrics) -> EventPublisher | None:
    if not settings.redis_url:
        return None
    return EventPublisher(
        store,
        settings.redis_url,
        settings.redis_stream,
        settings.redis_maxlen,
        settings.redis_timeout_s,
        on_failure=metrics.redis_failures.inc,
    )


def _bind_metrics(metrics: BankMetrics, store: BankStore, publisher: EventPublisher | None) -> None:
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


def create_app(
    settings: BankSettings, store: BankStore | None = None, encoder: FeatureEncoder | None = None
) -> FastAPI:
    """Build the bank app. Opens the store (factors + edit log) unless one is given.

    ``app.state.close()`` stops the event publisher and closes a store the app opened (a store passed
    in belongs to the caller). It is not tied to the ASGI lifespan, so test clients can enter and
    leave the app many times; ``__main__`` calls it after the server stops.
    """
    owns_store = store is None
    store = store or BankStore.open(
        settings.factors,
        settings.data_dir,
        settings.faiss_threads,
        settings.snapshot_every,
        settings.row_cache_mb << 20,
        settings.accept_data_loss,
    )
    try:
        images = ImageEncoder(
            encoder or load_configured_encoder(settings.encoder, settings.encoder_weights, store.factors)
        )
    except BaseException:
        if owns_store:
            store.close()
        raise
    metrics = BankMetrics()
    publisher = _publisher(settings, store, metrics)
    _bind_metrics(metrics, store, publisher)
    store.index.start_build()
    store.rows.start_warm()
    if publisher is not None:
        publisher.start()

    def close() -> None:
        reads.shutdown()
        if publisher is not None:
            publisher.stop()
        if owns_store:
            store.close()

    app = FastAPI(
        title="GMem bank service",
        version="1",
        description="The GMem memory bank as a live service: noise-CDF retrieval for generators and durable, "
        "versioned test-time edits (insert, interpolate, delete). See CONTRACT.md section 4.",
        # A trailing-slash redirect would copy the request's Host header into Location: 404 instead.
        redirect_slashes=False,
    )
    app.state.bank = BankState(settings, store, images, metrics, publisher)
    app.state.close = close
    install_error_handlers(app, STATUS, retry_after_s=RETRY_AFTER_S, json_example='{"indices": [0, 1]}')
    for router in (ops.router, bank.router, edits.router):
        app.include_router(router)
    reads.document_request_model(app)
    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_body_bytes,
        body_limit_name="GMEM_BANK_MAX_BODY_BYTES",
        body_timeout_s=settings.body_timeout_s,
        guard=token_guard(edits.router.routes, settings),
        on_request=metrics.observe_request,
        access_logger="gmem.bank.access",
        route_limits=reads.body_limits(settings, store.factors),
        route_limit_hint="the most this route can need; see GMEM_BANK_RETRIEVE_MAX_ROWS, "
        "GMEM_BANK_RETRIEVE_MAX_NOISE_NUMEL and GMEM_BANK_MAX_IMAGE_BYTES",
    )
    return app
