"""Request and response models of the bank service (CONTRACT.md section 4).

Static bounds live here (lengths, id ranges, k, alpha); the bank's own shape
(``feature_dim``) is only known at run time, so the service checks it and
answers 422 ``dimension_mismatch``. Every float is finite: JSON has no NaN, but
Python's parser accepts ``NaN``/``Infinity`` tokens, so the models refuse them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, Strict, model_validator

from shared.schemas.enums import Pool

Encoding = Literal["json", "b64f32"]
Method = Literal["linear", "slerp"]
Kind = Literal["base", "inserted", "interpolated"]

# Ids stay far below 2**63 so every id fits an int64 array.
MAX_ID = 2**53
MAX_BATCH = 4096  # snippets per retrieval
MAX_FEATURE = 65536  # length of one feature / snippet
MAX_NOISE = 1 << 20  # numel of one noise tensor: 3 x 512 x 512 pixels fit (the body limit bounds the rest)
MAX_K = 1000
MAX_NAME = 200

# Strict: JSON false, true or "1" is not a number here (lax pydantic would read them as 0, 1, 1).
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
SnippetId = Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
StrictInt = Annotated[int, Strict()]
Vector = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_FEATURE)]
Noise = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_NOISE)]
Name = Annotated[str, Field(max_length=MAX_NAME, description="free-form label kept with the snippet")]

# Request examples must be valid for the embedded default bank (artifacts/mnist-5k: 128-d features).
EXAMPLE_DIM = 128
EXAMPLE_FEATURE: list[JsonValue] = [round(0.05 + 0.01 * (i % 7), 2) for i in range(EXAMPLE_DIM)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    detail: dict[str, str] = Field(description="factors, index and redis state")


class BankInfo(BaseModel):
    """GET /bank: the bank's shape and its current version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 3,
                    "size": 5002,
                    "base_size": 5000,
                    "feature_dim": 128,
                    "rank": 64,
                    "encoder": "gmem/mnist-ssl",
                    "format_version": "1",
                }
            ]
        }
    )
    version: int = Field(ge=0, description="0 for a fresh data dir, +1 per acknowledged mutation")
    size: int = Field(ge=0, description="live snippets: base rows plus live run-time snippets (pool `all`)")
    base_size: int = Field(ge=0, description="rows of the factors file (ids 0..base_size-1)")
    feature_dim: int = Field(ge=1)
    rank: int = Field(ge=1)
    encoder: str
    labels: bool = Field(
        False, description="base rows carry class labels: POST /bank/retrieve accepts `label`"
    )
    format_version: str
    source: str | None = Field(
        None, description="dataset the base rows were built from (factors `source`); row i is its image i"
    )


class RetrieveRequest(_Model):
    """POST /bank/retrieve: snippets by noise-CDF index (``z``) or by id (``indices``).

    ``z`` is one flattened noise tensor (one index) or a batch of them (one index
    per row): ``index = min(floor(Phi(sum(z)/sqrt(numel z)) * n), n - 1)`` into the
    pool. ``indices`` are snippet ids; ``pool`` then only checks that each id
    belongs to that pool.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"z": [0.3, -1.2, 0.5, 0.1], "pool": "base"},
                {"z": [[0.3, -1.2], [1.0, 0.4]], "pool": "all", "encoding": "b64f32"},
                {"indices": [0, 17, 42]},
            ]
        },
    )
    z: Noise | Annotated[list[Noise], Field(min_length=1, max_length=MAX_BATCH)] | None = Field(
        None, description="noise tensor(s) with iid N(0, 1) entries, flattened"
    )
    indices: Annotated[list[SnippetId], Field(min_length=1, max_length=MAX_BATCH)] | None = Field(
        None, description="snippet ids (base rows 0..base_size-1, run-time ids above)"
    )
    pool: Pool = Field(Pool.BASE, description="base rows, live run-time snippets, or both (base then user)")
    encoding: Encoding = Field(
        "json", description="json: lists of floats; b64f32: base64 of row-major float32 little-endian [k, d]"
    )
    label: Annotated[int, Strict()] | None = Field(
        None, ge=0, description="with z: draw only among base rows of this class label (labelled banks only)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> RetrieveRequest:
        if (self.z is None) == (self.indices is None):
            raise ValueError("give exactly one of z (noise) or indices (snippet ids)")
        if self.label is not None and self.z is None:
            raise ValueError("label restricts the noise-CDF draw: give it with z, not with indices")
        return self


class RetrieveResponse(BaseModel):
    """Unit-norm snippets, with the bank version and pool size they were read from."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"version": 3, "pool_size": 5000, "indices": [2711], "snippets": [[0.01, -0.2, 0.05]]}
            ]
        }
    )
    version: int
    pool_size: int = Field(description="snippets in the pool when the indices were drawn")
    indices: list[int] = Field(description="snippet ids, one per row of snippets")
    snippets: list[list[float]] | str = Field(description="[k, d] floats, or base64 float32 LE when b64f32")


class SnippetInfo(BaseModel):
    """GET /bank/snippets/{id}: one snippet and where it came from."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 5001,
                    "kind": "interpolated",
                    "label": None,
                    "parents": [3, 9],
                    "alpha": 0.25,
                    "name": "3-to-9",
                    "created_at": "2026-01-01T00:00:00Z",
                    "snippet": [0.1, 0.2],
                    "coefficients": [0.4, -0.3],
                }
            ]
        }
    )
    id: int
    kind: Kind
    label: int | None = Field(description="class label of a base row; null when unknown or run-time")
    parents: list[int] = Field(description="[i, j] for an interpolation, else []")
    alpha: float | None = Field(description="weight of parent i (eq. 11); null unless interpolated")
    name: str | None
    created_at: str | None = Field(description="ISO 8601 UTC time of the mutation; null for base rows")
    snippet: list[float] = Field(description="normalize(c B^T + mu), unit norm")
    coefficients: list[float] = Field(description="c in the bank's basis (r values)")


class FeatureInput(_Model):
    """A raw feature f(x) from the bank's encoder; L2-normalised and projected (eq. 10)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"feature": EXAMPLE_FEATURE, "name": "my style"}]},
    )
    feature: Vector = Field(description="length feature_dim, finite, not all zero")
    name: Name | None = None


class InsertResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 5000, "version": 1, "residual": 0.12}]})
    id: int
    version: int
    residual: float = Field(ge=0, description="|(g - mu) - c B^T| / |g - mu|; 0 = inside the bank's subspace")


class ProjectResponse(BaseModel):
    coefficients: list[float]
    snippet: list[float]
    residual: float = Field(ge=0)


class InterpolateRequest(_Model):
    """POST /bank/interpolate: eq. 11, ``c = alpha C[i] + (1 - alpha) C[j]``, or ``slerp``.

    ``slerp`` interpolates the unit snippets s_i, s_j on the sphere and stores the
    eq. 10 projection of the result.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"i": 3, "j": 9, "alpha": 0.25, "method": "slerp", "name": "3-to-9"}]
        },
    )
    i: SnippetId
    j: SnippetId
    alpha: FiniteFloat = Field(ge=0.0, le=1.0, description="1 gives snippet i, 0 snippet j")
    method: Method = Field(
        "linear",
        description="linear: eq. 11 on the coefficients; slerp: on the unit "
        "snippets, then projected back (eq. 10)",
    )
    name: Name | None = None


class MutationResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 5001, "version": 2}]})
    id: int
    version: int


class SearchRequest(_Model):
    """POST /bank/search: k nearest live snippets by distance between reconstructions ``C[i] B^T + mu``.

    Query by ``id`` (the snippet itself comes first, at distance 0), by a unit
    ``snippet`` or by a raw ``feature``; vectors are projected first (eq. 10).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"id": 42, "k": 5}, {"feature": EXAMPLE_FEATURE, "k": 3}]},
    )
    id: SnippetId | None = None
    snippet: Vector | None = None
    feature: Vector | None = None
    k: StrictInt = Field(10, ge=1, le=MAX_K, description=f"neighbours to return, 1..{MAX_K}")
    pool: Pool = Field(Pool.ALL, description="which snippets to search")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in ("id", "snippet", "feature") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of id, snippet or feature (got {given or 'none'})")
        return self


class Neighbor(BaseModel):
    id: int
    distance: float = Field(ge=0)


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"neighbors": [{"id": 42, "distance": 0.0}, {"id": 7, "distance": 0.31}]}]
        }
    )
    neighbors: list[Neighbor] = Field(description="nearest first")
