"""The playground's connections to the bank and the generator (shared.client, async).

Every call goes through ``Upstreams.bank_call`` / ``generator_call``, which turn a
``shared.client`` exception into ``errors.Upstream`` naming the service, so the page is told
which service failed and where. The jobs API (CONTRACT.md section 7) has no client method yet;
``has_jobs`` reads the generator's OpenAPI page to see whether it is there.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from services.playground.errors import Upstream
from services.playground.settings import PlaygroundSettings
from shared.client import (
    AsyncBankClient,
    AsyncGeneratorClient,
    ClientError,
    Generation,
    RetryPolicy,
    Unavailable,
    error_from_response,
)

JOBS_CHECK_TTL_S = 15.0


def shape_generation(gen: Generation) -> dict[str, Any]:
    """A generation as the page shows it: one entry per image with its own seed and snippet id."""
    images = [
        {
            "png": base64.b64encode(png).decode("ascii"),
            "seed": gen.seed + k,
            "snippet_id": gen.indices[k] if k < len(gen.indices) else None,
        }
        for k, png in enumerate(gen.images)
    ]  # image k uses the noise of seed + k (CONTRACT.md section 6)
    return {
        "images": images,
        "seed": gen.seed,
        "bank_version": gen.bank_version,
        "model": gen.model,
        "steps": gen.steps,
        "sampler": gen.sampler,
        "elapsed_ms": gen.elapsed_ms,
    }


class Upstreams:
    """Async clients of both services, with the bank token held here and never sent to the page."""

    def __init__(self, settings: PlaygroundSettings) -> None:
        token = settings.bank_token.get_secret_value() if settings.bank_token else None
        self.settings = settings
        self.bank = AsyncBankClient(
            settings.bank_url,
            token=token,
            timeout=settings.bank_timeout_s,
            retry=RetryPolicy(attempts=2, max_delay=0.5),
        )
        # One attempt: a person is waiting, and the generator already retries its own bank calls.
        self.generator = AsyncGeneratorClient(
            settings.generator_url, timeout=settings.generator_timeout_s, retry=RetryPolicy(attempts=1)
        )
        self.http = httpx.AsyncClient(
            base_url=settings.generator_url.rstrip("/"),
            timeout=httpx.Timeout(settings.generator_timeout_s, connect=3.0),
        )
        self._jobs: tuple[float, bool] | None = None

    @property
    def token_configured(self) -> bool:
        return bool(self.settings.bank_token and self.settings.bank_token.get_secret_value())

    @contextlib.contextmanager
    def bank_call(self) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise Upstream("bank", self.settings.bank_url, exc) from exc

    @contextlib.contextmanager
    def generator_call(self) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise Upstream("generator", self.settings.generator_url, exc) from exc

    async def has_jobs(self) -> bool:
        """Whether the generator serves POST /jobs (read from its /openapi.json, cached briefly)."""
        now = time.monotonic()
        if self._jobs is not None and now - self._jobs[0] < JOBS_CHECK_TTL_S:
            return self._jobs[1]
        try:
            resp = await self.http.get("/openapi.json", timeout=3.0)
            found = resp.status_code == 200 and "/jobs" in (resp.json().get("paths") or {})
        except (httpx.HTTPError, ValueError):
            found = False
        self._jobs = (now, found)
        return found

    @contextlib.asynccontextmanager
    async def job_events(self, job_id: str) -> AsyncIterator[httpx.Response]:
        """The generator's ``GET /jobs/{id}/events`` stream, open (raises Upstream on a bad status)."""
        try:
            async with self.http.stream(
                "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise Upstream("generator", self.settings.generator_url, error_from_response(resp))
                yield resp
        except httpx.TransportError as exc:
            raise Upstream(
                "generator",
                self.settings.generator_url,
                Unavailable(f"event stream of job {job_id} broke: {exc}", code="unavailable"),
            ) from exc

    async def start_job(self, body: dict[str, Any]) -> str:
        """POST /jobs; the new job's id."""
        with self.generator_call():
            try:
                resp = await self.http.post("/jobs", json=body)
            except httpx.TransportError as exc:
                raise Unavailable(f"POST /jobs: {exc}", code="unavailable") from exc
            if resp.status_code >= 400:
                raise error_from_response(resp)
            return str(resp.json()["id"])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        with self.generator_call():
            try:
                resp = await self.http.get(f"/jobs/{job_id}")
            except httpx.TransportError as exc:
                raise Unavailable(f"GET /jobs/{job_id}: {exc}", code="unavailable") from exc
            if resp.status_code >= 400:
                raise error_from_response(resp)
            job: dict[str, Any] = resp.json()
            return job

    async def aclose(self) -> None:
        await self.bank.aclose()
        await self.generator.aclose()
        await self.http.aclose()
