"""HTTP routes of the generator service (CONTRACT.md section 6): thin handlers over generation.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.generator.cache import SnippetCache
from services.generator.errors import ERROR_RESPONSES, NotReady, envelope, install_handlers
from services.generator.generation import Generator
from services.generator.jobs.redis_jobs import RedisJobs
from services.generator.jobs.service import JobService
from services.generator.metrics import GeneratorMetrics, make_metrics
from services.generator.routes_jobs import router as jobs_router
from services.generator.runtime import ModelFacts, Runtime, read_model_facts
from services.generator.settings import GeneratorSettings
from shared.client import AsyncBankClient, RetryPolicy
from shared.schemas.generator import GenerateRequest, GenerateResponse, ModelInfo

log = logging.getLogger("gmem.generator")

_ROUTES = {"/generate", "/model", "/healthz", "/readyz", "/metrics", "/jobs"}


class BodyLimitAndMetrics:
    """Pure ASGI middleware: 413 for bodies over the limit, request counts and latency per route.

    Pure ASGI (not BaseHTTPMiddleware) so ``request.is_disconnected()`` still sees the client leave.
    """

    def __init__(self, app: ASGIApp, max_body: int, metrics: GeneratorMetrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in _ROUTES else "other"
        t0, status = time.perf_counter(), [500]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_body
        seen = [0]

        async def limited_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.max_body:
                    raise _BodyTooLarge()
            return msg

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            if too_big:
                raise _BodyTooLarge()
            await self.app(scope, limited_receive, counting_send)
        except _BodyTooLarge:
            resp = envelope(413, "body_too_large", f"request body is over {self.max_body} bytes "
                            "(GMEM_GENERATOR_MAX_BODY_BYTES); send a smaller request")
            await resp(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException so that FastAPI re-raises it from body parsing (instead of a 400) and the
    # service's handler renders the 413 envelope.
    def __init__(self) -> None:
        super().__init__(413, "request body is too large (GMEM_GENERATOR_MAX_BODY_BYTES); send a smaller request")


def build_generator(settings: GeneratorSettings, facts: ModelFacts, metrics: GeneratorMetrics) -> Generator:
    runtime = Runtime(settings, facts)
    runtime.observe_nfe(metrics.forward_per_nfe.observe)
    bank = AsyncBankClient(settings.bank_url, timeout=settings.bank_timeout_s,
                           retry=RetryPolicy(attempts=settings.bank_retries, base_delay=0.05, max_delay=0.5))
    cache = SnippetCache(settings.redis_url, metrics, settings.cache_max_entries) if settings.redis_url else None
    gen = Generator(settings, runtime, bank, None, metrics, cache)
    gen.jobs = JobService(gen)
    if settings.redis_url:
        gen.jobs.remote = RedisJobs(gen.jobs, settings.redis_url)
    return gen


def create_app(settings: GeneratorSettings, facts: ModelFacts | None = None) -> FastAPI:
    """The generator app; the model loads in the background after start (``/readyz`` says when)."""
    metrics = make_metrics()
    gen = build_generator(settings, facts or read_model_facts(settings.model), metrics)

    async def load() -> None:
        try:
            await asyncio.to_thread(gen.runtime.load)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and every /generate
            gen.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", gen.load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gen.jobs.start()
        if gen.cache is not None:
            gen.cache.start()
        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        await gen.jobs.stop()
        if gen.cache is not None:
            await gen.cache.stop()
        await gen.bank.aclose()

    app = FastAPI(title="GMem generator", version="1", lifespan=lifespan,
                  description="Stateless GMem sampling; snippets come from the memory bank service.")
    app.state.generator = gen
    install_handlers(app, settings.retry_after_s)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "model loading or bank unreachable"}})
    async def readyz() -> JSONResponse:
        model_ok, model_detail = gen.model_status()
        bank_ok, bank_detail = await gen.bank_status()
        cache = "off" if gen.cache is None else ("coherent" if gen.cache.enabled else "disabled (redis down)")
        ok = model_ok and bank_ok
        body = {"status": "ready" if ok else "not_ready",
                "detail": {"model": model_detail, "bank": bank_detail, "cache": cache,
                           "batching": gen.runtime.invariance}}
        headers = None if ok else {"Retry-After": str(settings.retry_after_s)}
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model", response_model=ModelInfo, responses={503: ERROR_RESPONSES[503]})
    async def model_info() -> ModelInfo:
        # Before the weights are in, "parameters" is unknown: say not ready rather than report 0.
        ok, detail = gen.model_status()
        if not ok:
            raise NotReady(f"{detail}; GET /model answers once the model is loaded, retry shortly")
        return gen.runtime.info()

    @app.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES)
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        return await gen.generate(body, gone=request.is_disconnected)

    app.include_router(jobs_router)
    app.add_middleware(BodyLimitAndMetrics, max_body=settings.max_body_bytes, metrics=metrics)
    return app
