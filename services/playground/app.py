"""The playground: a static page and its JSON API over the bank and the generator (CONTRACT.md section 8).

The page (``static/``: HTML, CSS and plain JS modules, no build step) calls only this app's
``/api/*`` routes; they call the services through ``shared.client`` and hold the bank token.
Routes here: the page, status, and generation; the bank's routes are in ``bank_routes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import EventSourceResponse

from services.playground import bank_routes
from services.playground.errors import install_handlers
from services.playground.provenance import SourceImages
from services.playground.runs import Runs
from services.playground.schemas import GenerateBody
from services.playground.settings import PlaygroundSettings
from services.playground.upstream import Upstreams, shape_generation
from shared.client import ClientError

STATIC = Path(__file__).resolve().parent / "static"


class State:
    """What the routes share: the upstream clients, the runs and the source images."""

    def __init__(self, settings: PlaygroundSettings) -> None:
        self.settings = settings
        self.up = Upstreams(settings)
        self.runs = Runs(self.up)
        self.sources: SourceImages | None = None
        self._source_lock = asyncio.Lock()
        self._opening: asyncio.Task[None] | None = None

    async def source_images(self) -> SourceImages:
        """The source images, from GMEM_PLAYGROUND_SOURCE or else the bank's reported ``source``."""
        async with self._source_lock:
            if self.sources is None:
                source = self.settings.source
                if source is None:
                    with self.up.bank_call():
                        source = (await self.up.bank.info()).source
                self.sources = SourceImages(source)
            return self.sources

    async def _open_sources(self, base_size: int) -> None:
        sources = await self.source_images()
        await asyncio.to_thread(sources.available, base_size)

    def provenance(self, base_size: int) -> dict[str, Any]:
        """Whether source images can be shown; opening the dataset (seconds) runs in the background."""
        s = self.sources
        if s is not None and s.loaded:
            return {
                "available": s.available(base_size),
                "loading": False,
                "source": s.source,
                "reason": s.reason,
            }
        if self._opening is None or self._opening.done():
            self._opening = asyncio.create_task(self._open_sources(base_size))
        return {
            "available": False,
            "loading": True,
            "source": s.source if s else None,
            "reason": "opening the source dataset…",
        }


def state_of(request: Request) -> State:
    state: State = request.app.state.playground
    return state


async def _bank_status(st: State) -> dict[str, Any]:
    try:
        info = await st.up.bank.info()
    except ClientError as exc:
        return {
            "ok": False,
            "ready": False,
            "url": st.settings.bank_url,
            "state": "down" if exc.status is None else "not_ready",
            "error": f"the bank at {st.settings.bank_url} is not answering: {exc.detail}",
        }
    ready = await st.up.bank.ready()
    return {
        "ok": True,
        "ready": ready,
        "url": st.settings.bank_url,
        **info.model_dump(),
        "provenance": st.provenance(info.base_size),
        "token": st.up.token_configured,
    }


async def _generator_status(st: State) -> dict[str, Any]:
    try:
        model = await st.up.generator.model_info()
    except ClientError as exc:
        # No status: nothing answered (down); a status (503 while the model loads): up but not ready.
        return {
            "ok": False,
            "ready": False,
            "url": st.settings.generator_url,
            "state": "down" if exc.status is None else "not_ready",
            "error": f"the generator at {st.settings.generator_url} is not answering: {exc.detail}",
        }
    ready = await st.up.generator.ready()
    return {
        "ok": True,
        "ready": ready,
        "url": st.settings.generator_url,
        "jobs": await st.up.has_jobs(),
        "model": {
            "id": model.id,
            "parameters": model.parameters,
            "resolution": model.resolution,
            "channels": model.channels,
            "feature_dim": model.feature_dim,
            "default_steps": model.default_steps,
            "samplers": model.samplers,
            # false: CFG against the zero null is refused (the page disables its cfg control); null: a
            # generator from before GET /model said, which may still guide.
            "trained_null": model.extra.get("trained_null"),
        },
    }


def create_app(settings: PlaygroundSettings) -> FastAPI:
    """Build the playground app; the upstream clients close with the app's lifespan."""
    st = State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await st.up.aclose()

    app = FastAPI(
        title="GMem playground",
        version="1",
        lifespan=lifespan,
        description="The memory bank and the generator in the browser. The page at / calls /api/*.",
    )
    app.state.playground = st
    install_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(bank_routes.router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> dict[str, str]:
        """Ready as soon as it serves: the page itself shows whether the bank and the generator are."""
        return {"status": "ready"}

    @app.get("/api/status", tags=["status"])
    async def status() -> dict[str, Any]:
        """Both services' state; always 200 (a service that is down is a state, not an error here)."""
        bank, gen = await asyncio.gather(_bank_status(st), _generator_status(st))
        return {"bank": bank, "generator": gen, "playground": {"token_configured": st.up.token_configured}}

    @app.post("/api/generate", tags=["generate"])
    async def generate(body: GenerateBody) -> dict[str, Any]:
        """One POST /generate; images with their seed and snippet id."""
        with st.up.generator_call():
            gen = await st.up.generator.generate(**body.generator_kwargs())
        return shape_generation(gen)

    @app.post("/api/runs", status_code=202, tags=["generate"])
    async def start_run(body: GenerateBody) -> JSONResponse:
        """Start a generation with progress; follow it at /api/runs/{id}/events."""
        run = await st.runs.start(body.generator_kwargs())
        return JSONResponse(
            {"id": run.id, "mode": run.mode, "events": f"/api/runs/{run.id}/events"}, status_code=202
        )

    @app.get("/api/runs/{run_id}/events", tags=["generate"])
    async def run_events(run_id: str) -> EventSourceResponse:
        """text/event-stream: ``progress`` {step, steps, preview?} events, then one ``done``."""
        st.runs.get(run_id)  # 404 before the stream starts
        return EventSourceResponse(st.runs.stream(run_id), ping=10)

    return app
