"""Settings of the playground: one pydantic-settings class, every field also a ``GMEM_*`` variable.

Playground-specific variables carry the ``GMEM_PLAYGROUND_`` prefix. The services' addresses and
the bank token keep the stack's shared names as fallbacks (``GMEM_BANK_URL``,
``GMEM_GENERATOR_URL``, ``GMEM_BANK_TOKEN``), so one env file serves the CLI and the playground.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class PlaygroundSettings(BaseSettings):
    """GMEM_PLAYGROUND_*; CLI flags of `python -m services.playground` override them."""

    model_config = SettingsConfigDict(env_prefix="GMEM_PLAYGROUND_", extra="ignore", populate_by_name=True)

    bank_url: str = Field(
        "http://127.0.0.1:8001",
        validation_alias=AliasChoices("GMEM_PLAYGROUND_BANK_URL", "GMEM_BANK_URL"),
        description="bank service URL (falls back to the shared GMEM_BANK_URL)",
    )
    generator_url: str = Field(
        "http://127.0.0.1:8002",
        validation_alias=AliasChoices("GMEM_PLAYGROUND_GENERATOR_URL", "GMEM_GENERATOR_URL"),
        description="generator service URL (falls back to the shared GMEM_GENERATOR_URL)",
    )
    # The browser never sees the token: the playground adds it to the mutations it proxies.
    bank_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GMEM_BANK_TOKEN"),
        description="bearer token the playground sends with bank mutations",
    )
    host: str = Field(
        "127.0.0.1",
        description="bind address; 127.0.0.1 keeps the page (and the token's "
        "power to edit the bank) to this machine",
    )
    port: int = Field(8003, ge=1, le=65535, description="HTTP port")
    source: str | None = Field(
        None,
        description="dataset behind the bank's base rows (mnist-5k[:split] or an "
        "image folder); default: the `source` the bank reports",
    )
    max_upload_bytes: int = Field(16 << 20, ge=1024, description="larger style images get 413")
    bank_timeout_s: float = Field(10.0, gt=0, description="timeout of each call to the bank")
    generator_timeout_s: float = Field(300.0, gt=0, description="timeout of one generation call")
    max_alphas: int = Field(16, ge=2, description="most images in one interpolation strip")
    page_size: int = Field(48, ge=1, le=500, description="most snippets in one page of the bank browser")
