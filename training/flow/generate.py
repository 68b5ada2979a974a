"""Snippets + seeds -> images: the one sampling path behind `sample`, `eval` and the generator service.

Image k with seed s owns ``torch.Generator('cpu').manual_seed(s)``: its initial
noise is the first draw and every SDE noise draw comes after it, so an image
never depends on what else was in the batch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from PIL import Image

from shared.errors import DimensionMismatch, InvalidInput, NonFiniteValue
from training.files.modelfile import LoadedModel
from training.flow.samplers import SAMPLER_NAMES, guided, run_sampler
from training.flow.samplers import SdeSolver as SamplerSdeSolver
from training.network.config import GMemConfig
from training.network.model import GMemDiT


def image_shape(config: GMemConfig) -> tuple[int, int, int]:
    """Shape [C, H, W] of the network's input (pixels or latents)."""
    return (config.in_channels, config.input_size, config.input_size)


def noise_generator(seed: int) -> torch.Generator:
    """The CPU generator image ``seed`` draws all its noise from."""
    return torch.Generator("cpu").manual_seed(int(seed))


def initial_noise(model: LoadedModel | GMemConfig, seed: int) -> torch.Tensor:
    """The z of seed ``seed`` (first draw of its generator); the bank's noise-CDF index reads this z."""
    config = model if isinstance(model, GMemConfig) else model.config
    return torch.randn(image_shape(config), generator=noise_generator(seed), dtype=torch.float32)


def check_cfg(config: GMemConfig, cfg_scale: float, name: str = "cfg_scale") -> None:
    """Refuse a guidance scale sampling cannot honour: not finite, or CFG against a null never trained.

    ``guided`` uses the zero snippet as the null. A snippet network trained with ``p_uncond`` 0 never
    saw it (its snippet dropout masks dimensions, never a whole snippet), so its "unconditional"
    velocity is an arbitrary extrapolation and ``cfg_scale != 1`` steers by noise. ``name`` is how the
    caller spells the option (``--cfg-scale`` on the command line). This is the entry points' check;
    ``sample_tensor`` itself stays a plain sampler (release parity runs it with the release's CFG).
    """
    if not math.isfinite(cfg_scale):
        # A NaN scale would silently turn every image into NaN (clamped to black).
        raise InvalidInput(f"{name} must be a finite number; got {cfg_scale} (1 = no guidance)")
    if cfg_scale != 1.0 and not config.trained_null:
        raise InvalidInput(
            f"{name} {cfg_scale:g} needs a CFG null the network was trained on, and this model file records "
            f"none (p_uncond {config.p_uncond:g}: no training step replaced a whole snippet by the zero "
            f"vector that guidance uses as the null); use {name} 1, or a model trained with p_uncond > 0"
        )


def sample_tensor(
    net: GMemDiT,
    config: GMemConfig,
    cond: torch.Tensor | None,
    seeds: Sequence[int],
    steps: int | None = None,
    sampler: str | None = None,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Network-space samples [n, C, H, W] (t = 1 end of the path) for conditions ``cond`` and ``seeds``."""
    sampler = sampler or config.sampling.sampler
    steps = int(steps or config.sampling.steps)
    if sampler not in SAMPLER_NAMES:
        raise InvalidInput(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if steps < 1:
        raise InvalidInput(f"steps must be at least 1; got {steps}")
    if not math.isfinite(cfg_scale):
        # A NaN scale would silently turn every image into NaN (clamped to black).
        raise InvalidInput(f"cfg_scale must be a finite number; got {cfg_scale} (1 = no guidance)")
    device = next(net.parameters()).device
    generators = [noise_generator(s) for s in seeds]
    x = torch.stack([torch.randn(image_shape(config), generator=g, dtype=torch.float32) for g in generators])
    x = x.to(device)
    if cond is not None:
        cond = cond.to(device)
    scale = float(cfg_scale) if config.conditioning == "snippet" else 1.0
    # cond is None only for unconditioned networks: their scale is 1, so guided passes it through untouched.
    velocity = guided(net, cond, scale, config.sampling.cfg_interval_start)  # type: ignore[arg-type]
    # The config's SdeSolver is a StrEnum: each member is the very string the sampler's Literal names.
    solver = cast(SamplerSdeSolver, config.sampling.sde_solver)
    with torch.inference_mode():
        return run_sampler(
            sampler,
            velocity,
            x,
            steps,
            generators,
            time_shift=config.sampling.time_shift,
            diffusion_norm=config.sampling.diffusion_norm,
            sde_solver=solver,
            last_step_size=config.sampling.last_step_size,
        )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats -> uint8 NHWC with the release's rounding ``clamp(127.5 x + 128)`` truncated."""
    img = torch.clamp(127.5 * x.float() + 128.0, 0, 255).to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def decode(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Network space -> pixels in [-1, 1]: identity for pixel models, de-normalise + decoder for latents."""
    cfg = model.config
    if cfg.space == "pixel":
        return x
    mean = torch.tensor(cfg.latent_mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.latent_std, device=x.device).view(1, -1, 1, 1)
    with torch.inference_mode():
        return cast(torch.Tensor, model.decoder(x * std / cfg.latent_multiplier + mean))


def check_snippets(snippets: np.ndarray | None, n: int, dim: int) -> torch.Tensor:
    arr = np.asarray(snippets, dtype=np.float32)
    if arr.ndim != 2 or arr.shape != (n, dim):
        raise DimensionMismatch(
            f"snippets have shape {arr.shape}; expected ({n}, {dim}): one unit vector of "
            f"length {dim} per seed"
        )
    if not np.all(np.isfinite(arr)):
        raise NonFiniteValue("snippets contain NaN or infinite values")
    return torch.from_numpy(arr)


def generate(
    model: LoadedModel,
    snippets: np.ndarray | None,
    seeds: list[int],
    steps: int | None = None,
    sampler: str | None = None,
    cfg_scale: float = 1.0,
) -> np.ndarray:
    """uint8 images [n, H, W, C] for unit snippets (or zero rows = null) and one seed per image."""
    if not seeds:
        raise InvalidInput("need at least one seed (one image per seed)")
    cfg = model.config
    cond = check_snippets(snippets, len(seeds), cfg.snippet_dim) if cfg.conditioning == "snippet" else None
    x = sample_tensor(model.net, cfg, cond, seeds, steps, sampler, cfg_scale)
    return to_uint8(decode(model, x))


def to_png(image: np.ndarray) -> bytes:
    """One uint8 [H, W, C] image as PNG bytes (grey for C = 1, RGB for C = 3)."""
    arr = np.asarray(image, dtype=np.uint8)
    pil = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[-1] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
