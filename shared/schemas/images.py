"""OpenAI-compatible image generation (``POST /v1/images/generations``, CONTRACT.md section 6).

The request and response shapes of OpenAI's Images API, so that existing clients
(the official ``openai`` package among them) work unchanged against a generator
with a T2S adapter. How each field maps onto ``POST /generate`` is in docs/T2S.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.generator import MAX_PROMPT_CHARS, MAX_SEED, PromptMode, Sampler


class ImagesRequest(BaseModel):
    """OpenAI's ``images.generate`` body; ``seed``, ``steps``, ``sampler``, ``cfg_scale``, \
``prompt_mode`` are ours."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a handwritten seven", "n": 2, "size": "32x32", "response_format": "b64_json"}
            ]
        },
    )

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, description="images; at most the service's GMEM_GENERATOR_MAX_N")
    size: str | None = Field(
        None, description="'WxH' equal to the model's resolution (GET /model), or 'auto'"
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="only b64_json is served; url answers 422"
    )
    model: str | None = Field(
        None, description="accepted and ignored: the served model answers (see 'model')"
    )
    quality: str | None = Field(None, description="accepted and ignored")
    style: str | None = Field(None, description="accepted and ignored")
    user: str | None = Field(None, description="accepted and ignored")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="GMem: image k uses seed + k")
    steps: int | None = Field(None, ge=1, description="GMem: sampler steps")
    sampler: Sampler | None = None
    cfg_scale: float = Field(1.0, ge=0.0, le=50.0, allow_inf_nan=False)
    prompt_mode: PromptMode = "adapter"


class ImageData(BaseModel):
    b64_json: str = Field(description="base64 PNG")
    revised_prompt: str = Field(description="the prompt as the text encoder read it (after truncation)")


class ImagesResponse(BaseModel):
    """OpenAI's images response, plus the seed and model that reproduce it."""

    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]
    seed: int
    model: str
