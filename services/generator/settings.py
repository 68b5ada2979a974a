"""Settings of the generator service: one pydantic-settings class, every field a GMEM_* variable."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["float32", "bfloat16", "float16"]


class GeneratorSettings(BaseSettings):
    """GMEM_MODEL, GMEM_BANK_URL, ...; CLI flags of `python -m services.generator` override them."""

    model_config = SettingsConfigDict(env_prefix="GMEM_", extra="ignore")

    model: str = Field("artifacts/mnist-5k/model.safetensors", description="model file (CONTRACT.md section 5)")
    bank_url: str = "http://127.0.0.1:8001"
    host: str = "127.0.0.1"
    port: int = 8002
    device: Device = "auto"
    # Reduced precision and compilation only apply on CUDA; the CPU path is always float32, eager.
    dtype: Dtype = "bfloat16"
    compile: bool = False
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default")

    max_n: int = Field(16, ge=1, description="largest n of one request")
    max_steps: int = Field(250, ge=1, description="largest steps of one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    request_timeout_s: float = Field(120.0, gt=0, description="a request still unanswered after this gets 503")

    # Dynamic batching: up to max_batch_size images from compatible requests share
    # one forward; the first waits at most max_batch_wait_ms for company.
    max_batch_size: int = Field(16, ge=1, description="1 disables dynamic batching")
    max_batch_wait_ms: float = Field(5.0, ge=0)
    # Batch invariance (see runtime.py): N > 0 runs every forward on exactly N rows (padded);
    # 0 = auto: probe the network at load and pad only if some batch size changes a row.
    micro_batch: int = Field(0, ge=0)

    bank_timeout_s: float = Field(5.0, gt=0, description="timeout of each call to the bank")
    bank_retries: int = Field(2, ge=1, description="attempts of each idempotent call to the bank")
    bank_start_wait_s: float = Field(10.0, ge=0, description="how long start-up waits for the bank to answer")
    ready_cache_s: float = Field(1.0, ge=0, description="how long a /readyz bank check is reused")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503")

    redis_url: str | None = Field(None, description="enables the pinned-snippet cache fed by gmem:bank:events")
    cache_max_entries: int = Field(100_000, ge=1)
