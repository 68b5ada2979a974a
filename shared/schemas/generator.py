"""Request and response models of the generator service (CONTRACT.md section 6).

The static bounds here are the ones every deployment shares (n >= 1, steps >= 1,
known samplers and pools); the configured maxima (``GMEM_GENERATOR_MAX_N``,
``GMEM_GENERATOR_MAX_STEPS``) are checked by the service, which answers 422 above them.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from shared.schemas.enums import SAMPLERS, Pool, Sampler

PromptMode = Literal["adapter", "nearest"]
# Characters, not tokens: the text encoder truncates to its own token limit and says so.
MAX_PROMPT_CHARS = 4000

__all__ = ["SAMPLERS", "GenerateRequest", "GenerateResponse", "ModelInfo", "Pool", "Sampler"]

# Strict: JSON false, true or "1" is not a number here (lax pydantic would read them as 0, 1, 1).
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
# Seeds stay below 2**63 so that seed + k fits torch.Generator.manual_seed for every image.
MAX_SEED = 2**63 - 1
# Parents of one ``snippets`` blend.
MAX_BLEND = 16


class WeightedSnippet(BaseModel):
    """One parent of a ``snippets`` blend."""

    model_config = ConfigDict(extra="forbid")

    id: StrictInt = Field(ge=0, description="bank id")
    weight: StrictFloat = Field(
        1.0, allow_inf_nan=False, description="finite; the weights must sum to a positive number"
    )


class GenerateRequest(BaseModel):
    """POST /generate: how many images, from which noise, steered by which snippets."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"n": 4, "seed": 7, "steps": 16, "sampler": "euler"},
                {"n": 2, "seed": 1, "snippet_ids": [42]},
                # with a real null: valid whether or not the model trained the zero one (GET /model)
                {"n": 1, "pool": "user", "cfg_scale": 1.5, "negative_snippet_id": 7},
            ]
        },
    )

    n: StrictInt = Field(1, ge=1, description="number of images; at most the service's GMEM_GENERATOR_MAX_N")
    seed: StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="image k uses the noise of seed + k; drawn and returned when absent",
    )
    steps: StrictInt | None = Field(
        None, ge=1, description="sampler steps (NFE budget); the model's default when absent"
    )
    sampler: Sampler | None = Field(None, description="the model's default when absent")
    snippet_ids: list[StrictInt] | None = Field(
        None, min_length=1, description="bank ids pinning the snippets: one for all images, or one per image"
    )
    snippet: list[StrictFloat] | None = Field(
        None, min_length=1, description="a raw feature of the model's snippet dimension; L2-normalised here"
    )
    pool: Pool = Field(Pool.BASE, description="pool the noise-CDF index draws from when no snippet is given")
    # allow_inf_nan=False: a NaN would otherwise be reported as "should be <= 50", which misleads.
    cfg_scale: StrictFloat = Field(
        1.0,
        ge=0.0,
        le=50.0,
        allow_inf_nan=False,
        description="classifier-free guidance scale; 1 = none. Against the zero null only where GET /model "
        "trained_null is true; otherwise give negative_snippet_id or negative_snippet (else 422)",
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="text mapped to a snippet by the T2S adapter (GMEM_GENERATOR_T2S)",
    )
    prompt_mode: PromptMode | None = Field(
        None,
        description="adapter (default): draw from the adapter's snippet; "
        "nearest: from the bank snippets nearest to it (RDM style)",
    )
    snippets: list[WeightedSnippet] | None = Field(
        None,
        min_length=1,
        max_length=MAX_BLEND,
        description="blend of bank snippets in coefficient space (weights finite, positive sum), "
        "re-normalised",
    )
    negative_snippet_id: StrictInt | None = Field(
        None, ge=0, description="bank id of the CFG null (default: zero vector)"
    )
    negative_snippet: list[StrictFloat] | None = Field(
        None, min_length=1, description="a raw feature as the CFG null"
    )
    guidance_interval: tuple[StrictFloat, StrictFloat] | None = Field(
        None,
        description="[t_lo, t_hi] in [0, 1] (0 = noise, 1 = data): CFG only for t inside; "
        "outside, the unconditional pass is skipped",
    )
    label: StrictInt | None = Field(
        None, ge=0, description="draw snippets of this label (labelled banks only)"
    )

    @field_validator("snippet", "negative_snippet")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError("snippet contains NaN or infinite values; every entry must be a finite number")
        return v

    @field_validator("snippet_ids")
    @classmethod
    def _ids_non_negative(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(i < 0 for i in v):
            raise ValueError("snippet_ids must be non-negative bank ids")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> GenerateRequest:
        sources = [
            k
            for k in ("snippet_ids", "snippet", "snippets", "label", "prompt")
            if getattr(self, k) is not None
        ]
        if len(sources) > 1:
            raise ValueError(
                "give at most one of snippet_ids, snippet, snippets, label and prompt; got "
                f"{', '.join(sources)}"
            )
        if self.negative_snippet_id is not None and self.negative_snippet is not None:
            raise ValueError("give either negative_snippet_id or negative_snippet, not both")
        if self.snippets is not None and not sum(s.weight for s in self.snippets) > 0:
            raise ValueError("snippets weights must sum to a positive number")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi <= 1.0):
                raise ValueError(
                    f"guidance_interval must be [t_lo, t_hi] with 0 <= t_lo <= t_hi <= 1; got [{lo}, {hi}]"
                )
        if self.snippet_ids is not None and len(self.snippet_ids) not in (1, self.n):
            raise ValueError(
                f"snippet_ids has {len(self.snippet_ids)} ids for n={self.n}; give one id for all images or "
                "one per image"
            )
        if self.seed is not None and self.seed + self.n - 1 > MAX_SEED:
            raise ValueError(f"seed + n - 1 must stay <= {MAX_SEED} (image k uses seed + k)")
        return self


class PromptInfo(BaseModel):
    """How a prompt was read: the text encoder, its token count and limit, truncation, the text as read."""

    text_encoder: str
    tokens: int = Field(description="tokens of the prompt before truncation")
    max_tokens: int = Field(description="the text encoder's limit; longer prompts are truncated to it")
    truncated: bool
    read: str = Field(description="the prompt as the text encoder read it (after truncation)")
    mode: PromptMode


class GenerateResponse(BaseModel):
    """Images plus everything needed to regenerate any of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "images": ["iVBORw0KGgo..."],
                    "seed": 7,
                    "indices": [1234],
                    "bank_version": 0,
                    "model": "mnist-5k",
                    "steps": 16,
                    "sampler": "euler",
                    "elapsed_ms": 41.7,
                }
            ]
        }
    )

    images: list[str] = Field(description="base64-encoded PNG, one per image")
    seed: int = Field(description="seed of image 0; image k used seed + k")
    indices: list[int | None] = Field(description="bank id of each image's snippet; null for a raw snippet")
    bank_version: int | None = Field(
        description="bank version the snippets were read at; null for a raw snippet"
    )
    model: str = Field(description="id of the model that drew the images")
    steps: int
    sampler: Sampler
    elapsed_ms: float
    prompt: PromptInfo | None = Field(None, description="present for a prompt request")
    forwards_saved: int = Field(0, description="unconditional network rows skipped by guidance_interval")


class ModelInfo(BaseModel):
    """GET /model: what the loaded network is and what it accepts."""

    id: str
    parameters: int
    resolution: int
    channels: int
    feature_dim: int
    default_steps: int
    samplers: list[str]
    encoder: str | None = None
    default_sampler: str | None = None
    max_n: int | None = None
    max_steps: int | None = None
    batch_invariance: str | None = Field(
        None, description="how batched images are kept bit-identical to single ones"
    )
    trained_null: bool | None = Field(
        None,
        description="whether the network was trained on the zero snippet, the default CFG null; when "
        "false, cfg_scale != 1 needs negative_snippet_id or negative_snippet (else 422 cfg_unsupported)",
    )
