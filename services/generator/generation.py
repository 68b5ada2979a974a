"""POST /generate as a domain function: pick snippets (bank, cache or caller), queue, answer.

Where each image's snippet comes from (CONTRACT.md section 6):

- neither ``snippet_ids`` nor ``snippet``: image k's initial noise ``z_k`` (seed
  s + k) goes to the bank, which picks index ``min(floor(Phi(zeta(z_k)) n), n-1)``
  in the chosen pool (paper 4.3) and returns that snippet;
- ``snippet_ids`` (one for all images, or one per image): the bank's snippets,
  through the Redis-fed cache when configured;
- ``snippet``: the caller's vector, checked and L2-normalised, no bank involved;
- ``prompt``: the T2S adapter's snippet, or its bank neighbours (prompts.py).
- ``label``: as the first case, but the bank draws among its rows of that class label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from services.generator.cache import SnippetCache
from services.generator.errors import (
    BankRejected,
    BankUnreachable,
    CfgUnsupported,
    LimitExceeded,
    ModelNotReady,
)
from services.generator.metrics import GeneratorMetrics
from services.generator.prompts import PromptSnippets, check_prompt, prompt_snippets
from services.generator.runtime import ModelFacts, Runtime, check_bank_compatible, prepare_snippet
from services.generator.settings import GeneratorSettings
from shared import client as bc
from shared.errors import EmptyPool, IncompatibleArtifacts, InvalidInput, UnknownSnippet
from shared.schemas.generator import GenerateRequest, GenerateResponse

if TYPE_CHECKING:  # jobs/service.py is wired in by build_generator; imported here for its type only
    from services.generator.jobs.service import JobService

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """A request's snippets (one row per image) and CFG null rows (None = zero vector)."""

    snippets: np.ndarray
    indices: list[int | None]
    bank_version: int | None
    negative: np.ndarray | None


# Seeds drawn for the caller stay small enough to type back in.
_DRAWN_SEED_LIMIT = 2**31

NULL_REMEDY = (
    "send cfg_scale 1, or give negative_snippet_id or negative_snippet: a real snippet, which the "
    "network did see, replaces the zero null"
)


def check_cfg_null(
    facts: ModelFacts, cfg_scale: float, has_negative: bool, remedy: str = NULL_REMEDY
) -> None:
    """422 ``cfg_unsupported`` for CFG against the zero null on a model that never saw it.

    The default null is the zero snippet. A model trained with ``p_uncond`` 0 (files from before the
    field count as 0) never had a whole snippet replaced by it, so its velocity there is an arbitrary
    extrapolation and guiding against it steers by noise. A caller's negative snippet is a real
    snippet, so that combination stays allowed; cfg_scale 1 never reads the null.
    """
    if cfg_scale == 1.0 or has_negative or facts.trained_null:
        return
    raise CfgUnsupported(
        f"cfg_scale {cfg_scale:g} is refused: model {facts.id!r} records no trained CFG null (p_uncond 0: "
        "it never saw the zero snippet that guidance uses as the null, so guiding against it steers by "
        f"noise; GET /model trained_null is false); {remedy}"
    )


class Generator:
    """The service's state: model runtime, bank client, optional cache, prompts and readiness."""

    def __init__(
        self,
        settings: GeneratorSettings,
        runtime: Runtime,
        bank: bc.AsyncBankClient,
        metrics: GeneratorMetrics,
        cache: SnippetCache | None = None,
        prompts: PromptSnippets | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.bank = bank
        self.metrics = metrics
        self.cache = cache
        self.prompts = prompts
        self.jobs: JobService | None = None  # the JobService, set by build_generator
        self.load_error: str | None = None
        self.last_bank_version: int | None = None
        self._ready_at = 0.0
        self._ready: tuple[bool, str] = (False, "bank not checked yet")

    # ------------------------------------------------------------ readiness

    async def bank_status(self) -> tuple[bool, str]:
        """(reachable and compatible, detail); cached for ``ready_cache_s`` so probes stay cheap."""
        if time.monotonic() - self._ready_at < self.settings.ready_cache_s:
            return self._ready
        try:
            # One timeout in all, not one per retry: a probe that hangs for attempts x timeout is itself a
            # failure.
            info = await asyncio.wait_for(self.bank.info(), self.settings.bank_timeout_s)
            check_bank_compatible(self.runtime.facts, info.feature_dim, info.encoder, self.settings.bank_url)
            self.last_bank_version = info.version
            self._ready = (True, f"bank at {self.settings.bank_url} version {info.version}")
        except bc.ClientError as exc:
            self._ready = (False, f"bank unreachable: {exc.message}")
        except TimeoutError:
            self._ready = (
                False,
                f"bank at {self.settings.bank_url} did not answer GET /bank within "
                f"{self.settings.bank_timeout_s:g} s (GMEM_GENERATOR_BANK_TIMEOUT_S)",
            )
        except IncompatibleArtifacts as exc:
            self._ready = (False, exc.message)
        self._ready_at = time.monotonic()
        return self._ready

    def model_status(self) -> tuple[bool, str]:
        if self.load_error:
            return False, f"model failed to load: {self.load_error}"
        if not self.runtime.loaded:
            return False, "model loading"
        return True, f"model {self.runtime.facts.id} on {self.runtime.device}"

    # ------------------------------------------------------------ generate

    async def generate(
        self, req: GenerateRequest, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> GenerateResponse:
        """Answer one request as a job the server waits on (services/generator/jobs/service.py)."""
        assert self.jobs is not None, "the job service is wired in by build_generator"
        return await self.jobs.generate(req, gone)

    def check(self, req: GenerateRequest) -> tuple[int, str]:
        """(steps, sampler) of ``req`` after the limits and readiness checks; no work done yet."""
        check_prompt(self.prompts, req)
        # Limits first: a request over them can never succeed, so "retry shortly" would mislead.
        if req.n > self.settings.max_n:
            raise LimitExceeded(
                f"n={req.n} is over this service's maximum of {self.settings.max_n} images "
                "per request (GMEM_GENERATOR_MAX_N); split the request"
            )
        steps = req.steps or self.runtime.facts.default_steps
        if steps > self.settings.max_steps:
            raise LimitExceeded(
                f"steps={steps} is over this service's maximum of {self.settings.max_steps} "
                "(GMEM_GENERATOR_MAX_STEPS); ask for fewer steps"
            )
        work = req.n * steps * (2 if req.cfg_scale != 1.0 else 1)
        if work > self.settings.max_work:
            raise LimitExceeded(
                f"n x steps x (2 with CFG) = {work} is over this service's maximum of "
                f"{self.settings.max_work} per request (GMEM_GENERATOR_MAX_WORK); ask for fewer "
                "images or steps, or split the request"
            )
        has_negative = req.negative_snippet_id is not None or req.negative_snippet is not None
        check_cfg_null(self.runtime.facts, req.cfg_scale, has_negative)
        ok, detail = self.model_status()
        if not ok:
            raise ModelNotReady(f"{detail}; retry shortly")
        return steps, req.sampler or self.runtime.facts.default_sampler

    async def prepare(self, req: GenerateRequest, seeds: list[int]) -> Prepared:
        """Everything a job needs from outside the process: its snippets and its CFG null rows."""
        snippets, indices, version = await self._snippets(req, seeds)
        negative = None
        if req.negative_snippet is not None:
            negative = np.repeat(
                prepare_snippet(req.negative_snippet, self.runtime.facts.feature_dim), req.n, axis=0
            )
        elif req.negative_snippet_id is not None:
            rows, _ = await self._pinned([req.negative_snippet_id])
            negative = np.repeat(rows, req.n, axis=0)
        return Prepared(snippets, indices, version, negative)

    async def _snippets(
        self, req: GenerateRequest, seeds: list[int]
    ) -> tuple[np.ndarray, list[int | None], int | None]:
        """Where each image's snippet comes from: one branch per source (CONTRACT.md section 6)."""
        if req.prompt is not None:
            return await prompt_snippets(self, req, seeds)
        if req.snippet is not None:
            row = prepare_snippet(req.snippet, self.runtime.facts.feature_dim)
            return np.repeat(row, req.n, axis=0), [None] * req.n, None
        if req.snippet_ids is not None:
            ids = req.snippet_ids * req.n if len(req.snippet_ids) == 1 else list(req.snippet_ids)
            rows, version = await self._pinned(ids)
            return rows, list(ids), version
        if req.snippets is not None:
            row, version = await self._blend([(s.id, s.weight) for s in req.snippets])
            return np.repeat(row, req.n, axis=0), [None] * req.n, version
        z = self.runtime.initial_noise(seeds)
        # label: the same noise-CDF draw, restricted by the bank to that label's rows.
        got = await self._bank_call(
            self.bank.retrieve(z=z, pool=req.pool, encoding="binary", label=req.label)
        )
        self._check_dim(got.snippets)
        return got.snippets, list(got.indices), got.version

    async def _blend(self, parents: list[tuple[int, float]]) -> tuple[np.ndarray, int | None]:
        """Weighted blend of bank snippets, landed in the bank's coefficient space and re-normalised.

        Eq. 11 generalised to k parents: with weights w normalised to sum 1, the blend
        ``sum_i w_i s_i`` is projected by the bank (eq. 10), so the result is
        ``normalize(c B^T + mu)`` with ``c`` the projected coefficients. This equals
        ``c = sum_i w_i C[i]`` exactly when each parent's reconstruction has unit norm
        (the bank exposes no basis to the generator; see services/generator/README.md).
        """
        ids = [i for i, _ in parents]
        weights = np.asarray([w for _, w in parents], dtype=np.float64)
        total = float(weights.sum())
        if not (np.all(np.isfinite(weights)) and total > 0):
            raise InvalidInput("snippets weights must be finite and sum to a positive number")
        rows, version = await self._pinned(ids)
        mixed = (weights / total) @ rows.astype(np.float64)
        if not np.linalg.norm(mixed) > 1e-12:
            raise InvalidInput(
                "the weighted snippets cancel out (their blend is the zero vector); change the weights"
            )
        projected = await self._bank_call(self.bank.project(feature=mixed.astype(np.float32)))
        row = prepare_snippet([float(v) for v in projected.snippet], self.runtime.facts.feature_dim)
        return row, version

    async def _pinned(self, ids: list[int]) -> tuple[np.ndarray, int | None]:
        unique = list(dict.fromkeys(ids))
        found: dict[int, np.ndarray] = {}
        epoch = 0
        if self.cache is not None:
            epoch = self.cache.epoch
            found = await self.cache.get(unique, min_version=self.last_bank_version)
        missing = [i for i in unique if i not in found]
        version = None
        if missing:
            # Pool "all": a pinned id may be a base row or a run-time snippet.
            got = await self._bank_call(self.bank.retrieve(indices=missing, pool="all", encoding="binary"))
            self._check_dim(got.snippets)
            found.update(zip(got.indices, got.snippets, strict=True))
            version = got.version
            if self.cache is not None:
                self.cache.put(got.indices, got.snippets, epoch)
        if version is None:
            # All from cache: the newest version this process has seen (stream or bank).
            known = [
                v
                for v in (self.cache.version if self.cache else None, self.last_bank_version)
                if v is not None
            ]
            version = max(known) if known else None
        return np.stack([found[i] for i in ids]).astype(np.float32), version

    def _check_dim(self, snippets: np.ndarray) -> None:
        if snippets.ndim != 2 or snippets.shape[1] != self.runtime.facts.feature_dim:
            # The bank was swapped for an incompatible one after start: not ready, not a bad request.
            raise IncompatibleArtifacts(
                f"the bank returned snippets of shape {snippets.shape}; model "
                f"{self.runtime.facts.id!r} takes dimension {self.runtime.facts.feature_dim}"
            )

    async def _bank_call(self, call: Awaitable[T]) -> T:
        """Await a bank call, translating its failures into this service's errors."""
        try:
            got = await call
        except bc.Unavailable as exc:
            self.metrics.bank_calls.labels("unavailable").inc()
            raise BankUnreachable(
                f"the memory bank at {self.settings.bank_url} is unavailable ({exc.message}); retry later"
            ) from exc
        except bc.NotFound as exc:
            self.metrics.bank_calls.labels("not_found").inc()
            raise UnknownSnippet(f"the bank has no such snippet: {exc.detail}") from exc
        except bc.Conflict as exc:
            self.metrics.bank_calls.labels("conflict").inc()
            raise EmptyPool(exc.detail) from exc
        except bc.BadRequest as exc:
            self.metrics.bank_calls.labels("rejected").inc()
            raise InvalidInput(f"the bank refused the request: {exc.detail}") from exc
        except bc.ClientError as exc:
            self.metrics.bank_calls.labels("error").inc()
            raise BankRejected(f"the bank answered outside the contract: {exc.message}") from exc
        self.metrics.bank_calls.labels("ok").inc()
        version = getattr(got, "version", None)
        if version is not None:
            self.last_bank_version = max(version, self.last_bank_version or 0)
        return got
