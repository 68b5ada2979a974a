"""``POST /v1/images/generations``: OpenAI's Images API over ``POST /generate`` with a prompt.

Mapping (also in docs/T2S.md): ``prompt`` -> ``prompt``; ``n`` -> ``n``; ``size`` must be
``"{R}x{R}"`` for the model's resolution R (or ``"auto"``/absent), else 422
``unsupported_size``, since the network draws at one size only; ``response_format``
``b64_json`` (or absent) -> ``data[k].b64_json`` = ``images[k]``; ``url`` -> 422
``unsupported_response_format`` (the service keeps no images to link to);
``model``/``quality``/``style``/``user`` are accepted and ignored. ``seed``, ``steps``,
``sampler``, ``cfg_scale``, ``prompt_mode`` pass through (OpenAI clients send them with
``extra_body``); ``cfg_scale`` != 1 on a model with no trained CFG null (``GET /model``
``trained_null`` false) is 422 ``cfg_unsupported``, since this route takes no negative snippet.
``revised_prompt`` is the prompt as the text encoder read it.
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request
from pydantic import ValidationError

from services.generator.errors import ERROR_RESPONSES
from services.generator.generation import Generator, check_cfg_null
from shared.errors import InvalidInput
from shared.schemas.generator import GenerateRequest
from shared.schemas.images import ImageData, ImagesRequest, ImagesResponse

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class UnsupportedSize(InvalidInput):
    code = "unsupported_size"


class UnsupportedResponseFormat(InvalidInput):
    code = "unsupported_response_format"


def check_size(size: str | None, resolution: int) -> None:
    if size is None or size == "auto":
        return
    m = _SIZE.match(size)
    if not m or int(m.group(1)) != resolution or int(m.group(2)) != resolution:
        raise UnsupportedSize(
            f"size {size!r} is not served: this model draws {resolution}x{resolution} images "
            f"only (GET /model resolution); send size '{resolution}x{resolution}' or 'auto'"
        )


def openai_router(gen: Generator) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/images/generations", response_model=ImagesResponse, responses=ERROR_RESPONSES, tags=["openai"]
    )
    async def images_generations(body: ImagesRequest, request: Request) -> ImagesResponse:
        """OpenAI-compatible image generation from a prompt (needs a T2S adapter: GMEM_GENERATOR_T2S)."""
        if body.response_format == "url":
            raise UnsupportedResponseFormat(
                "response_format 'url' is not served: this service keeps no images to link "
                "to; ask for response_format 'b64_json' (the default here)"
            )
        check_size(body.size, gen.runtime.facts.resolution)
        # This route takes no negative snippet, so the remedy names the route that does.
        check_cfg_null(
            gen.runtime.facts,
            body.cfg_scale,
            has_negative=False,
            remedy="send cfg_scale 1; to guide against a real snippet instead, POST /generate with the "
            "prompt and negative_snippet_id or negative_snippet",
        )
        try:
            req = GenerateRequest(
                prompt=body.prompt,
                n=body.n,
                seed=body.seed,
                steps=body.steps,
                sampler=body.sampler,
                cfg_scale=body.cfg_scale,
                prompt_mode=body.prompt_mode,
            )
        except ValidationError as exc:
            raise InvalidInput("; ".join(e["msg"] for e in exc.errors())) from exc
        out = await gen.generate(req, gone=request.is_disconnected)
        read = out.prompt.read if out.prompt is not None else body.prompt
        return ImagesResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=b, revised_prompt=read) for b in out.images],
            seed=out.seed,
            model=out.model,
        )

    return router
