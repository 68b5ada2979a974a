"""Settings of the bank service: one pydantic-settings class, every field also a ``GMEM_*`` variable.

Service-specific variables carry the ``GMEM_BANK_`` prefix (``GMEM_BANK_FACTORS``,
``GMEM_BANK_DATA_DIR``, ``GMEM_BANK_PORT``, ``GMEM_BANK_TOKEN``, ...); the Redis
URL is shared by the stack and read from ``GMEM_REDIS_URL``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.events import DEFAULT_STREAM
from shared.http.settings import HttpSettings

# A shorter bearer token can be guessed: the bank refuses to start with one.
MIN_TOKEN_CHARS = 16


class BankSettings(HttpSettings):
    """Everything the bank service reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="GMEM_BANK_", frozen=True, extra="ignore", populate_by_name=True
    )

    factors: Path = Field(description="the immutable factors file (CONTRACT.md section 1)")
    data_dir: Path = Field(description="edit log, snapshot and identity file; created if missing")
    port: int = Field(8001, ge=1, le=65535, description="HTTP port")
    token: SecretStr | None = Field(
        None,
        description=f"bearer token for mutations, at least {MIN_TOKEN_CHARS} "
        "characters; unset = mutations refused",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GMEM_REDIS_URL", "GMEM_BANK_REDIS_URL"),
        description="redis://host:port/db",
    )
    redis_stream: str = Field(
        DEFAULT_STREAM,
        description="stream that receives {version, op, id} per mutation; "
        "generators read the same setting (GMEM_BANK_REDIS_STREAM)",
    )
    redis_maxlen: int = Field(1_000_000, ge=1, description="approximate cap on the event stream's length")
    redis_timeout_s: float = Field(0.5, gt=0, description="connect/read timeout of each Redis call")
    encoder: str | None = Field(None, description="encoder id for image inserts (must match the bank's)")
    encoder_weights: Path | None = Field(
        None, description="weights file of the encoder; its default when unset"
    )
    max_body_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="no request body may be larger (413); each route's own limit follows from the settings "
        "below",
    )
    retrieve_max_rows: int = Field(
        64, ge=1, description="noise tensors per z retrieval the body limit of POST /bank/retrieve allows for"
    )
    retrieve_max_noise_numel: int = Field(
        8192,
        ge=1,
        description="entries per noise tensor the body limit of "
        "POST /bank/retrieve allows for (8192: the released 32x16x16 latent)",
    )
    row_cache_mb: int = Field(
        1024,
        ge=0,
        description="memory for cached base snippets (the read path); all "
        "base rows are cached at start when they fit, else the first ones retrieved",
    )
    max_image_bytes: int = Field(16 << 20, ge=1024, description="larger image uploads get 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height above this is refused (422)")
    max_image_aspect: float = Field(
        8.0,
        ge=1.0,
        description="an image whose long side exceeds this many times its short side is refused (422)",
    )
    snapshot_every: int = Field(
        10_000,
        ge=0,
        description="write a snapshot and empty the edit log after this many "
        "mutations (0 = never); start-up then replays only the log since the snapshot",
    )
    accept_data_loss: bool = Field(
        False,
        description="start even when the data dir holds fewer versions than were "
        "acknowledged, or a damaged log record (both are refused otherwise; the bad bytes "
        "are kept aside in the data dir)",
    )
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads FAISS may use per search")
    log_level: str = Field("INFO", description="JSON log level: DEBUG, INFO, WARNING, ERROR")

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        secret = v.get_secret_value() if v is not None else ""
        if 0 < len(secret) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"GMEM_BANK_TOKEN has {len(secret)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
        return v

    @property
    def mutations_enabled(self) -> bool:
        return self.token is not None and bool(self.token.get_secret_value())
