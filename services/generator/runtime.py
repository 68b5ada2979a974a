"""The generator's model runtime: the loaded network, its facts, and the batched forward.

Batch invariance (an image's bytes must not depend on what it was batched with):
kernels are chosen by tensor *shape*, so the same row computed in a batch of 3 and
in a batch of 16 can differ in the last bits (seen on an earlier revision of the
tiny model: rows of batches 1..8 differed from the same rows in a batch of 16, while
equal-shaped batches matched bit for bit whatever the neighbours). Two ways out:

- ``micro_batch = N > 0``: every network call runs on exactly N rows, the last chunk
  padded with copies of a real row; identical shapes, identical kernels. Costs up to
  N - 1 wasted rows for a lone request. Fixed shapes also suit torch.compile.
- ``micro_batch = 0`` (auto): at load, ``probe_batch_invariance`` runs the network
  on every batch size the scheduler can form (1 .. 2 x max_batch_size, the 2x for CFG),
  with a different t per row and rows at different positions (jobs join the step
  scheduler's batch at any step), and compares each row bitwise with the same row run
  alone. Since kernel choice depends on shapes, not values, passing for every shape
  means merged batches are safe at their natural size; on any difference the runtime
  falls back to padding. Latent models (decoder in the loop) always pad.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.generator.settings import GeneratorSettings
from shared.bankmath import as_vectors, normalize
from shared.errors import DimensionMismatch, IncompatibleArtifacts
from shared.schemas.generator import SAMPLERS, ModelInfo
from training.network.config import GMemConfig

log = logging.getLogger("gmem.generator")

# Rows per network call when batch invariance must be forced by padding.
FALLBACK_MICRO_BATCH = 4


@dataclass(frozen=True)
class ModelFacts:
    """What the service must know about a model file before loading its weights."""

    id: str
    feature_dim: int
    encoder: str
    resolution: int
    channels: int
    default_steps: int
    default_sampler: str
    space: str
    trained_null: bool  # the zero snippet (the default CFG null) was a training input (GMemConfig)


def read_model_facts(path: str | Path) -> ModelFacts:
    """Read the model file's header only (cheap even for XL): snippet dimension, encoder, sizes."""
    from training.files.modelfile import config_from_json, read_model_meta

    meta = read_model_meta(path)
    return facts_from_config(
        config_from_json(meta), str(meta.get("id") or Path(path).parent.name or Path(path).stem)
    )


def facts_from_config(cfg: GMemConfig, model_id: str) -> ModelFacts:
    """The service's facts from the network config; latent models take size and channels from their
    decoder."""
    resolution, channels = cfg.input_size, cfg.in_channels
    spec = cfg.decoder or {}
    if cfg.space == "latent" and spec.get("scale"):
        # Files written by `train --space latent` record the autoencoder's scale and channels
        # (training/latent/).
        resolution, channels = cfg.input_size * int(spec["scale"]), int(spec.get("out_channels", 3))
    elif cfg.space == "latent":
        from training.official.vae import (  # torch, as every training import in this module
            KIND,
            decoder_config,
        )

        decoder = decoder_config(str(spec.get("kind", KIND)))
        resolution, channels = (
            cfg.input_size * decoder.resolution // decoder.latent_resolution,
            decoder.out_ch,
        )
    return ModelFacts(
        id=str(model_id),
        feature_dim=cfg.snippet_dim,
        encoder=cfg.encoder,
        resolution=resolution,
        channels=channels,
        default_steps=cfg.sampling.steps,
        default_sampler=cfg.sampling.sampler,
        space=str(cfg.space),
        trained_null=cfg.trained_null,
    )


def check_bank_compatible(facts: ModelFacts, feature_dim: int, encoder: str, bank_url: str) -> None:
    """CONTRACT.md section 5: refuse a model/bank pair whose snippet dimension or encoder differ."""
    if facts.feature_dim != feature_dim or facts.encoder != encoder:
        raise IncompatibleArtifacts(
            f"model {facts.id!r} expects snippets of dimension {facts.feature_dim} from encoder "
            f"{facts.encoder!r}, but the bank at {bank_url} holds dimension {feature_dim} from encoder "
            f"{encoder!r}; serve a bank built with the model's encoder, or a model trained on this bank"
        )


def prepare_snippet(raw: list[float], feature_dim: int) -> np.ndarray:
    """A caller's raw snippet: right length, finite, non-zero; returned L2-normalised as float32 [1, d]."""
    if len(raw) != feature_dim:
        raise DimensionMismatch(
            f"snippet has {len(raw)} values; this model takes snippets of dimension "
            f"{feature_dim} (GET /model feature_dim)"
        )
    vec = as_vectors(raw, feature_dim, what="snippet")
    return normalize(vec, what="snippet").astype(np.float32)


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise IncompatibleArtifacts(
            "GMEM_GENERATOR_DEVICE=cuda but no CUDA device is visible; use auto or cpu"
        )
    return setting


def probe_batch_invariance(
    model: Any,
    max_rows: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> bool:
    """True when every row of the network's output at batch sizes 1..max_rows equals that row run alone.

    The rows carry different ``t`` (the step scheduler mixes jobs at different steps in
    one forward), and each batch size is checked with its rows at the front and at the
    back of the probe set, so a row that moves within the batch as jobs join and leave
    must keep its bits too.
    """
    import torch

    cfg, net = model.config, model.net
    device = next(net.parameters()).device
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(max_rows, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(device)
    t = torch.rand(max_rows, generator=gen).to(device)
    c = torch.nn.functional.normalize(torch.randn(max_rows, cfg.snippet_dim, generator=gen), dim=1).to(device)
    with torch.inference_mode(), autocast():
        alone = torch.cat([net(x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(max_rows)])
        for b in range(2, max_rows + 1):
            if not torch.equal(net(x[:b], t[:b], c[:b]), alone[:b]):
                return False
            lo = max_rows - b
            if lo and not torch.equal(net(x[lo:], t[lo:], c[lo:]), alone[lo:]):
                return False
        return True


class Runtime:
    """A loaded model and the one function that turns (snippets, seeds, settings) into PNGs."""

    def __init__(self, settings: GeneratorSettings, facts: ModelFacts) -> None:
        self.settings = settings
        self.facts = facts
        self.model: Any = None
        self.device = "cpu"
        self.parameters = 0
        self._nfe_observer: Callable[[float], None] | None = None
        self._micro = settings.micro_batch
        self.invariance = "not probed"

    # ------------------------------------------------------------ loading

    def load(self) -> None:
        """Load the weights (blocking; the app calls it in a worker thread)."""
        import torch

        from training.files.modelfile import load_model

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.device = pick_device(self.settings.device)
        model = load_model(self.settings.model, device=self.device)
        self.parameters = sum(p.numel() for p in model.net.parameters())
        if self.device == "cuda" and self.settings.compile:
            # One compiled graph serves every call: shapes are fixed by the micro-batch.
            model = dataclasses.replace(model, net=torch.compile(model.net))  # type: ignore[arg-type]
        self._choose_micro_batch(model)
        self.model = model
        log.info("model %s loaded on %s (%d parameters)", self.facts.id, self.device, self.parameters)

    def _choose_micro_batch(self, model: Any) -> None:
        if self.settings.micro_batch:
            self._micro = self.settings.micro_batch
            self.invariance = f"padded to {self._micro} rows (GMEM_GENERATOR_MICRO_BATCH)"
        elif model.config.space != "pixel" or (self.device == "cuda" and self.settings.compile):
            self._micro = FALLBACK_MICRO_BATCH
            self.invariance = f"padded to {self._micro} rows (latent or compiled model)"
        elif probe_batch_invariance(model, 2 * self.settings.max_batch_size, self._autocast):
            self._micro = 0
            self.invariance = (
                f"probed: rows identical at every batch size 1..{2 * self.settings.max_batch_size}"
            )
        else:
            self._micro = FALLBACK_MICRO_BATCH
            self.invariance = f"probe found batch-dependent rows; padded to {self._micro} rows"
        log.info("batch invariance: %s", self.invariance)

    @property
    def micro_batch(self) -> int:
        """Rows of every network call (0 = natural size); never above max_batch_size."""
        if not self._micro:
            return 0
        return min(self._micro, self.settings.max_batch_size)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self.facts.id,
            parameters=self.parameters,
            resolution=self.facts.resolution,
            channels=self.facts.channels,
            feature_dim=self.facts.feature_dim,
            default_steps=self.facts.default_steps,
            samplers=list(SAMPLERS),
            encoder=self.facts.encoder,
            default_sampler=self.facts.default_sampler,
            max_n=self.settings.max_n,
            max_steps=self.settings.max_steps,
            batch_invariance=self.invariance,
            trained_null=self.facts.trained_null,
        )

    def observe_nfe(self, fn: Callable[[float], None]) -> None:
        self._nfe_observer = fn

    # ------------------------------------------------------------ noise and sampling

    def initial_noise(self, seeds: list[int]) -> np.ndarray:
        """Flattened initial noise of each seed: the z the bank's noise-CDF index reads (paper 4.3)."""
        from training.flow.generate import initial_noise

        return np.stack([initial_noise(self.model, s).reshape(-1).cpu().numpy() for s in seeds])

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.device == "cuda" and self.settings.dtype != "float32":
            return torch.autocast("cuda", dtype=getattr(torch, self.settings.dtype))
        return contextlib.nullcontext()

    def forward(
        self, snippets: np.ndarray, seeds: list[int], steps: int, sampler: str, cfg_scale: float
    ) -> list[bytes]:
        """PNG bytes of each (snippet, seed), computed in fixed-size micro-batches (see module docstring)."""
        import torch

        from training.flow.generate import generate, to_png
        from training.flow.samplers import network_calls

        m = self.micro_batch or len(seeds)
        out: list[bytes] = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(seeds), m):
                chunk_s, chunk_z = snippets[start : start + m], seeds[start : start + m]
                real = len(chunk_z)
                if real < m:
                    pad = m - real
                    chunk_s = np.concatenate([chunk_s, np.repeat(chunk_s[-1:], pad, axis=0)])
                    chunk_z = list(chunk_z) + [chunk_z[-1]] * pad
                t0 = time.perf_counter()
                images = generate(
                    self.model, chunk_s, chunk_z, steps=steps, sampler=sampler, cfg_scale=cfg_scale
                )
                if self._nfe_observer is not None:
                    # generate() returns host arrays, so the device has finished: wall time / NFE is honest
                    # (it includes the per-chunk noise draw and decode, small next to the network).
                    nfe = network_calls(sampler, steps, self.model.config.sampling.sde_solver)
                    self._nfe_observer((time.perf_counter() - t0) / max(1, nfe))
                out.extend(to_png(images[i]) for i in range(real))
        return out
