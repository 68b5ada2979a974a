"""The generator service's app factory (CONTRACT.md section 6); the routes live in ``routes/``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from services.generator.cache import SnippetCache
from services.generator.errors import STATUS
from services.generator.generation import Generator
from services.generator.jobs.redis_jobs import RedisJobs
from services.generator.jobs.service import JobService
from services.generator.metrics import GeneratorMetrics, make_metrics
from services.generator.openai_images import openai_router
from services.generator.prompts import open_prompts
from services.generator.routes import generate, model, ops
from services.generator.routes_jobs import router as jobs_router
from services.generator.runtime import ModelFacts, Runtime, read_model_facts
from services.generator.settings import GeneratorSettings
from shared.client import AsyncBankClient, RetryPolicy
from shared.http.errors import install_error_handlers
from shared.http.middleware import RequestContext

log = logging.getLogger("gmem.generator")


def build_generator(settings: GeneratorSettings, facts: ModelFacts, metrics: GeneratorMetrics) -> Generator:
    runtime = Runtime(settings, facts)
    runtime.observe_nfe(metrics.forward_per_nfe.observe)
    bank = AsyncBankClient(
        settings.bank_url,
        timeout=settings.bank_timeout_s,
        retry=RetryPolicy(attempts=settings.bank_retries, base_delay=0.05, max_delay=0.5),
    )
    cache = (
        SnippetCache(settings.redis_url, metrics, settings.cache_max_entries, stream=settings.redis_stream)
        if settings.redis_url
        else None
    )
    gen = Generator(settings, runtime, bank, metrics, cache, open_prompts(settings, facts))
    gen.jobs = JobService(gen)
    if settings.redis_url:
        gen.jobs.remote = RedisJobs(gen.jobs, settings.redis_url)
    return gen


def _lifespan(gen: Generator) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    async def load() -> None:
        try:
            await asyncio.to_thread(gen.runtime.load)
            if gen.prompts is not None:
                await asyncio.to_thread(gen.prompts.load)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and every /generate
            gen.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", gen.load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert gen.jobs is not None, "build_generator wires the job service in"
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

    return lifespan


def create_app(settings: GeneratorSettings, facts: ModelFacts | None = None) -> FastAPI:
    """The generator app; the model loads in the background after start (``/readyz`` says when)."""
    metrics = make_metrics()
    gen = build_generator(settings, facts or read_model_facts(settings.model), metrics)
    app = FastAPI(
        title="GMem generator",
        version="1",
        lifespan=_lifespan(gen),
        description="Stateless GMem sampling; snippets come from the memory bank service.",
        # A trailing-slash redirect would copy the request's Host header into Location: 404 instead.
        redirect_slashes=False,
    )
    app.state.generator = gen
    install_error_handlers(
        app, STATUS, retry_after_s=settings.retry_after_s, json_example='{"n": 1, "seed": 0}'
    )
    for router in (ops.router, model.router, generate.router, jobs_router, openai_router(gen)):
        app.include_router(router)

    def on_request(method: str, route: str | None, status: int, seconds: float) -> None:
        metrics.requests.labels(route or "other", str(status)).inc()
        metrics.latency.labels(route or "other").observe(seconds)

    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_body_bytes,
        body_limit_name="GMEM_GENERATOR_MAX_BODY_BYTES",
        body_timeout_s=settings.body_timeout_s,
        on_request=on_request,
        access_logger="gmem.generator.access",
    )
    return app
