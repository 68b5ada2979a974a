"""Request and response models of the generator service (CONTRACT.md section 6).

The static bounds here are the ones every deployment shares (n >= 1, steps >= 1,
known samplers and pools); the configured maxima (``GMEM_GENERATOR_MAX_N``,
``GMEM_GENERATOR_MAX_STEPS``) are checked by the service, which answers 422 above them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Sampler = Literal["sde", "euler", "heun"]
Pool = Literal["base", "user", "all"]

SAMPLERS: tuple[str, ...] = ("sde", "euler", "heun")
# Seeds stay below 2**63 so that seed + k fits torch.Generator.manual_seed for every image.
MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    """POST /generate: how many images, from which noise, steered by which snippets."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"n": 4, "seed": 7, "steps": 16, "sampler": "euler"},
                {"n": 2, "seed": 1, "snippet_ids": [42]},
                {"n": 1, "pool": "user", "cfg_scale": 1.5},
            ]
        },
    )

    n: int = Field(1, ge=1, description="number of images; at most the service's GMEM_GENERATOR_MAX_N")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="image k uses the noise of seed + k; drawn and returned when absent"
    )
    steps: int | None = Field(None, ge=1, description="sampler steps (NFE budget); the model's default when absent")
    sampler: Sampler | None = Field(None, description="the model's default when absent")
    snippet_ids: list[int] | None = Field(
        None, min_length=1, description="bank ids pinning the snippets: one for all images, or one per image"
    )
    snippet: list[float] | None = Field(
        None, min_length=1, description="a raw feature of the model's snippet dimension; L2-normalised here"
    )
    pool: Pool = Field("base", description="pool the noise-CDF index draws from when no snippet is given")
    label: int | None = Field(None, ge=0, description="draw snippets of this class label by the noise-CDF index "
                              "among the bank's rows of that label (labelled or reduced banks only)")
    # allow_inf_nan=False: a NaN would otherwise be reported as "should be <= 50", which misleads.
    cfg_scale: float = Field(1.0, ge=0.0, le=50.0, allow_inf_nan=False,
                             description="classifier-free guidance scale; 1 = none")

    @field_validator("snippet")
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
        given = [k for k in ("snippet_ids", "snippet", "snippets", "label") if getattr(self, k, None) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} exclude each other: give at most one of snippet_ids, "
                             "snippet, snippets, label")
        if self.snippet_ids is not None and len(self.snippet_ids) not in (1, self.n):
            raise ValueError(
                f"snippet_ids has {len(self.snippet_ids)} ids for n={self.n}; give one id for all images or one per image"
            )
        if self.seed is not None and self.seed + self.n - 1 > MAX_SEED:
            raise ValueError(f"seed + n - 1 must stay <= {MAX_SEED} (image k uses seed + k)")
        return self


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
    bank_version: int | None = Field(description="bank version the snippets were read at; null for a raw snippet")
    model: str = Field(description="id of the model that drew the images")
    steps: int
    sampler: Sampler
    elapsed_ms: float


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
    batch_invariance: str | None = Field(None, description="how batched images are kept bit-identical to single ones")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """Every error: ``{"error": {"code", "message"}}``."""

    error: ErrorBody
