"""Where the CLI finds the services: one pydantic-settings class, every field a ``GMEM_*`` variable.

``GMEM_BANK_URL`` is the same variable the generator reads to find the bank, and
``GMEM_BANK_TOKEN`` the one the bank reads to check writes, so one environment
serves the whole stack. Flags of `python -m gmem` override these.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """GMEM_BANK_URL, GMEM_GENERATOR_URL, GMEM_BANK_TOKEN, GMEM_CLIENT_TIMEOUT_S."""

    model_config = SettingsConfigDict(env_prefix="GMEM_", extra="ignore", frozen=True)

    bank_url: str = Field("http://127.0.0.1:8001", description="base URL of the bank service")
    generator_url: str = Field("http://127.0.0.1:8002", description="base URL of the generator service")
    bank_token: str | None = Field(None, description="bearer token for bank mutations (insert, interpolate)")
    client_timeout_s: float = Field(120.0, gt=0, description="per-request timeout of the CLI's calls")
