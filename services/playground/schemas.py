"""Request bodies of the playground's own JSON API (what the page sends)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schemas.bank import MAX_ID, MAX_K
from shared.schemas.generator import MAX_SEED, Pool, Sampler


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Body):
    """How to sample: the generator's controls the page exposes (CONTRACT.md section 6)."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1)
    sampler: Sampler | None = None
    cfg_scale: float = Field(1.0, ge=0.0, le=50.0, allow_inf_nan=False)


class GenerateBody(Sampling):
    n: int = Field(4, ge=1)
    pool: Pool = Pool.BASE
    snippet_ids: list[int] | None = Field(None, min_length=1)

    def generator_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SearchBody(_Body):
    id: int = Field(ge=0, le=MAX_ID)
    k: int = Field(8, ge=1, le=MAX_K)


class InterpolateBody(Sampling):
    """A strip from A (alpha 0) to B (alpha 1), one image per alpha, all from the same noise."""

    a: int = Field(ge=0, le=MAX_ID)
    b: int = Field(ge=0, le=MAX_ID)
    method: Literal["linear", "slerp"] = "linear"
    alphas: list[float] | None = Field(
        None, min_length=1, description="weights of B; default: `points` evenly"
    )
    points: int = Field(6, ge=2)
    keep: bool = Field(False, description="keep the interpolated snippets in the bank (else deleted after)")

    @model_validator(mode="after")
    def _alphas_in_range(self) -> InterpolateBody:
        if self.alphas is not None and not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError("every alpha must be within [0, 1]")
        return self

    def alpha_list(self) -> list[float]:
        if self.alphas is not None:
            return list(self.alphas)
        return [k / (self.points - 1) for k in range(self.points)]
