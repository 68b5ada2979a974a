"""Prompts as queries into the memory: the T2S adapter in the generator (CONTRACT.md section 6).

``GMEM_GENERATOR_T2S`` names a ``gmem-t2s`` adapter file (``python -m training train-t2s``).
A request's ``prompt`` is encoded by the adapter's text encoder and mapped to a unit
snippet ``s = g_phi(mean_i T_i)`` (paper section 4.4). Then, by ``prompt_mode``:

- ``adapter`` (default): every image is drawn from ``s`` itself; no bank lookup, so
  ``indices`` are null and ``bank_version`` is null, like a raw ``snippet``;
- ``nearest`` (RDM style): the bank's ``POST /bank/search`` returns the
  ``GMEM_GENERATOR_T2S_NEAREST_K`` snippets nearest to ``s``; image k draws the one
  its own noise picks by the noise-CDF index (paper 4.3) among them, so different
  seeds give different neighbours and the same seed the same one.

The prompt is a pure function of its text (cached), so the same seed and prompt give
the same bytes. Text over the encoder's token limit is truncated; the response's
``prompt`` object reports the token count, the limit and the text as read.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.generator.errors import BankRejected, BankUnreachable, ModelNotReady
from services.generator.runtime import ModelFacts
from services.generator.settings import GeneratorSettings
from shared import client as bc
from shared.errors import IncompatibleArtifacts, InvalidInput
from shared.schemas.generator import GenerateRequest, PromptInfo
from training.t2s.adapter import T2S, load_t2s, read_t2s_meta
from training.t2s.metrics import pick_neighbours

if TYPE_CHECKING:
    from services.generator.generation import Generator

_CACHE_ENTRIES = 1024


class PromptUnavailable(InvalidInput):
    code = "prompt_unavailable"


class PromptSnippets:
    """The loaded adapter: prompt text -> (unit snippet [d], what the text encoder read)."""

    def __init__(self, path: str, facts: ModelFacts, text_encoder: str | None = None) -> None:
        self.path, self.text_encoder = path, text_encoder
        self.meta = read_t2s_meta(path)
        if self.meta.snippet_dim != facts.feature_dim or self.meta.encoder != facts.encoder:
            raise IncompatibleArtifacts(
                f"T2S adapter {path} maps text to snippets of dimension {self.meta.snippet_dim} from encoder "
                f"{self.meta.encoder!r}, but model {facts.id!r} takes dimension {facts.feature_dim} from "
                f"{facts.encoder!r}; train the adapter on this model's bank (python -m training train-t2s)"
            )
        self.t2s: T2S | None = None
        self.error: str | None = None
        self._cache: OrderedDict[str, tuple[np.ndarray, PromptInfo]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the text encoder and adapter weights (blocking; run in a worker thread)."""
        try:
            self.t2s = load_t2s(self.path, self.text_encoder)
        except Exception as exc:  # reported by /generate as not ready
            self.error = f"{type(exc).__name__}: {exc}"
            raise

    def encode(self, prompt: str) -> tuple[np.ndarray, PromptInfo]:
        if self.t2s is None:
            raise ModelNotReady(
                f"the T2S adapter {self.path} "
                f"{'failed to load: ' + self.error if self.error else 'is loading'}; retry shortly"
            )
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                return hit
            # One prompt at a time: encoders are not re-entrant, and a batch of one is the same bits always.
            s, enc = self.t2s.snippets([prompt])
            info = PromptInfo(
                text_encoder=self.t2s.text.id,
                tokens=enc.tokens[0],
                max_tokens=enc.max_tokens,
                truncated=enc.truncated[0],
                read=enc.read[0],
                mode="adapter",
            )
            self._cache[prompt] = (s[0], info)
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return s[0], info


def open_prompts(settings: GeneratorSettings, facts: ModelFacts) -> PromptSnippets | None:
    """The adapter ``GMEM_GENERATOR_T2S`` names (header checked now, weights loaded later), or None."""
    if not settings.t2s:
        return None
    if not Path(settings.t2s).is_file():
        raise IncompatibleArtifacts(
            f"GMEM_GENERATOR_T2S={settings.t2s}: no such file; give a gmem-t2s adapter "
            "written by python -m training train-t2s, or unset it"
        )
    return PromptSnippets(settings.t2s, facts, settings.t2s_text_encoder)


def check_prompt(prompts: PromptSnippets | None, req: GenerateRequest) -> None:
    """422 for a prompt when no adapter is configured: such a request can never succeed here."""
    if req.prompt is not None and prompts is None:
        raise PromptUnavailable(
            "this generator has no T2S adapter, so it cannot read a prompt; start it with "
            "GMEM_GENERATOR_T2S=FILE (python -m training train-t2s writes one), or send "
            "snippet_ids or snippet instead"
        )


def prompt_info(prompts: PromptSnippets | None, req: GenerateRequest) -> PromptInfo | None:
    """The response's ``prompt`` object (the encoding is cached by prompt_snippets, so this is a lookup)."""
    if req.prompt is None or prompts is None:
        return None
    _, info = prompts.encode(req.prompt)
    return info.model_copy(update={"mode": req.prompt_mode or "adapter"})


async def prompt_snippets(
    gen: Generator, req: GenerateRequest, seeds: list[int]
) -> tuple[np.ndarray, list[int | None], int | None]:
    """Snippets of a prompt request: the adapter's snippet, or its bank neighbours picked by each noise."""
    prompts = gen.prompts
    if prompts is None or req.prompt is None:
        check_prompt(prompts, req)
        raise AssertionError("prompt_snippets called without a prompt")
    s, _ = await asyncio.to_thread(prompts.encode, req.prompt)
    if req.prompt_mode in (None, "adapter"):
        return np.repeat(s[None], req.n, axis=0), [None] * req.n, None
    neighbours = await _search(gen, s, gen.settings.t2s_nearest_k)
    if not neighbours:
        raise PromptUnavailable("the bank returned no snippets near this prompt (empty bank?)")
    ids = pick_neighbours([n.id for n in neighbours], list(gen.runtime.initial_noise(seeds)))
    rows, version = await gen._pinned(ids)
    return rows, list(ids), version


async def _search(gen: Generator, s: np.ndarray, k: int) -> list[bc.Neighbor]:
    try:
        return await gen.bank.search(snippet=s, k=k)
    except bc.Unavailable as exc:
        raise BankUnreachable(
            f"the memory bank at {gen.settings.bank_url} is unavailable ({exc.message}); retry later"
        ) from exc
    except bc.BadRequest as exc:
        raise InvalidInput(f"the bank refused the nearest-snippet search: {exc.detail}") from exc
    except bc.ClientError as exc:
        raise BankRejected(f"the bank answered outside the contract: {exc.message}") from exc
