"""Settings of the generator service: one pydantic-settings class, every field also a ``GMEM_*`` variable.

Service-specific variables carry the ``GMEM_GENERATOR_`` prefix (``GMEM_GENERATOR_MODEL``,
``GMEM_GENERATOR_PORT``, ``GMEM_GENERATOR_DEVICE``, ``GMEM_GENERATOR_MAX_N``, ...), like the
bank's ``GMEM_BANK_*``, so they never collide with the training commands' variables
(``GMEM_DEVICE``, ``GMEM_MODEL``). Three are shared by the stack and keep their names:
``GMEM_BANK_URL`` (also read by the CLI), ``GMEM_REDIS_URL`` and ``GMEM_BANK_REDIS_STREAM`` (the bank's).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.events import DEFAULT_STREAM, STREAM_ENV
from shared.http.settings import HttpSettings

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["float32", "bfloat16", "float16"]


class GeneratorSettings(HttpSettings):
    """GMEM_GENERATOR_MODEL, GMEM_BANK_URL, ...; CLI flags of `python -m services.generator` override them."""

    # populate_by_name: the aliased fields can still be given by name (GeneratorSettings(bank_url=...)).
    model_config = SettingsConfigDict(env_prefix="GMEM_GENERATOR_", extra="ignore", populate_by_name=True)

    model: str = Field(
        "artifacts/mnist-5k/model.safetensors", description="model file (CONTRACT.md section 5)"
    )
    bank_url: str = Field(
        "http://127.0.0.1:8001",
        validation_alias=AliasChoices("GMEM_BANK_URL"),
        description="bank service URL (shared with the CLI)",
    )
    port: int = Field(8002, ge=1, le=65535, description="HTTP port")
    device: Device = Field("auto", description="auto (CUDA if visible), cpu or cuda")
    # Reduced precision and compilation only apply on CUDA; the CPU path is always float32, eager.
    dtype: Dtype = Field("bfloat16", description="autocast dtype on CUDA: bfloat16, float16 or float32")
    compile: bool = Field(False, description="torch.compile the network (CUDA only)")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default")

    max_n: int = Field(16, ge=1, description="largest n of one request")
    max_steps: int = Field(250, ge=1, description="largest steps of one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    request_timeout_s: float = Field(
        120.0, gt=0, description="a request still unanswered after this gets 503"
    )

    # Step-level batching: the rows of up to max_batch_size images share each forward.
    max_batch_size: int = Field(16, ge=1, description="1 disables dynamic batching")
    # Batch invariance (see runtime.py): N > 0 runs every forward on exactly N rows (padded);
    # 0 = auto: probe the network at load and pad only if some batch size changes a row.
    micro_batch: int = Field(0, ge=0, description="N > 0: every forward on exactly N rows; 0: probe at load")

    # Jobs (CONTRACT.md section 7) and the step scheduler (services/generator/jobs/).
    max_work: int = Field(
        4000, ge=1, description="largest n x steps x (2 with CFG) of one request; above: 422"
    )
    max_queue_jobs: int = Field(64, ge=1, description="jobs waiting (queued or being prepared) before 429")
    job_ttl_s: float = Field(3600.0, gt=0, description="how long a finished job's result is kept")
    job_claim_idle_s: float = Field(
        10.0, gt=0, description="with Redis: a job whose replica is silent this long is run again by another"
    )
    max_preview_images: int = Field(16, ge=1, description="previews show at most this many images of a job")

    bank_timeout_s: float = Field(5.0, gt=0, description="timeout of each call to the bank")
    bank_retries: int = Field(2, ge=1, description="attempts of each idempotent call to the bank")
    bank_start_wait_s: float = Field(10.0, ge=0, description="how long start-up waits for the bank to answer")
    ready_cache_s: float = Field(1.0, ge=0, description="how long a /readyz bank check is reused")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503")

    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GMEM_REDIS_URL"),
        description="enables the pinned-snippet cache fed by the bank's event stream (shared with the bank) "
        "and the shared job store (jobs survive a replica; any replica answers for any job)",
    )
    redis_stream: str = Field(
        DEFAULT_STREAM,
        validation_alias=AliasChoices(STREAM_ENV),
        description="the bank's event stream; the bank's own setting, read here too",
    )
    t2s: str | None = Field(
        None, description='gmem-t2s adapter file; enables "prompt" (train-t2s writes one)'
    )
    t2s_text_encoder: str | None = Field(
        None,
        description="where the adapter's CLIP/T5 text encoder folder is, "
        "when not at the path the adapter records",
    )
    t2s_nearest_k: int = Field(
        16, ge=1, le=1000, description="bank neighbours a prompt_mode=nearest image picks from"
    )
    cache_max_entries: int = Field(100_000, ge=1, description="capacity of the pinned-snippet cache")
