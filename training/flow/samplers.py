"""Samplers: pure functions of (velocity function, x, time grid, one torch.Generator per image).

Time runs from 0 (noise) to 1 (data). ``velocity_fn(x, t) -> v`` with ``t`` a
tensor of shape [N]. No sampler keeps state between calls and every random draw
of image k comes from its own generator (drawn on the CPU, moved to x's device),
so a batch of k images equals k single runs.

- ``euler``, ``heun``: ODE ``dx = v dt`` (Heun: trapezoidal, 2 network calls per step).
- ``sde``: ``dx = [v + w(t) s] dt + sqrt(2 w(t)) dW`` with diffusion ``w(t) = norm * (1 - t)``
  and the score from the velocity ``s = (t v - x) / (1 - t)``, so the drift is
  ``v + norm * (t v - x)`` (finite at t = 1) and costs ONE network call per
  evaluation (the release calls the network twice there, see facts 3b).
  Solvers: Euler-Maruyama (ours, default; the last step adds no noise) or the
  release's Heun SDE on ``linspace(0, 1 - h, steps + 1)`` with a final
  noise-free "mean" step of size h (``h = 0.004``): 2 steps + 1 calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SamplerName = Literal["euler", "heun", "sde"]
SdeSolver = Literal["euler", "heun"]
SAMPLER_NAMES: tuple[str, ...] = ("euler", "heun", "sde")


def time_grid(steps: int, shift: float = 1.0, end: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times from 0 to ``end``, shifted by ``t' = s t / (1 + (s - 1) t)`` (s = 1: uniform)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    t = torch.linspace(0.0, end, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t


def per_image_noise(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One N(0, I) draw per image, each from its own CPU generator, stacked and moved to ``like``."""
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} generators for {like.shape[0]} images")
    z = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators])
    return z.to(device=like.device, dtype=like.dtype)


def _t(value: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def euler(velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor,
          generators: Sequence[torch.Generator] = ()) -> torch.Tensor:
    """Euler ODE: ``x <- x + (t1 - t0) v(x, t0)``; one call per step."""
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        x = x + (t1 - t0) * velocity_fn(x, _t(t0, x))
    return x


def heun(velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor,
         generators: Sequence[torch.Generator] = ()) -> torch.Tensor:
    """Heun ODE (trapezoidal predictor-corrector); two calls per step."""
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        dt = t1 - t0
        v0 = velocity_fn(x, _t(t0, x))
        v1 = velocity_fn(x + dt * v0, _t(t1, x))
        x = x + 0.5 * dt * (v0 + v1)
    return x


def sde_drift(velocity_fn: VelocityFn, x: torch.Tensor, t: float, norm: float) -> torch.Tensor:
    """``v + w(t) s`` with ``w = norm (1 - t)``, ``s = (t v - x)/(1 - t)``: ``v + norm (t v - x)``."""
    v = velocity_fn(x, _t(t, x))
    return v + norm * (t * v - x)


def euler_maruyama(velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor,
                   generators: Sequence[torch.Generator], norm: float = 1.0) -> torch.Tensor:
    """Euler-Maruyama SDE; the final step is the mean (no noise), one call per step."""
    steps = len(grid) - 1
    for i, (t0, t1) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)):
        dt = t1 - t0
        x = x + dt * sde_drift(velocity_fn, x, t0, norm)
        if i < steps - 1:
            x = x + (2 * norm * (1 - t0) * dt) ** 0.5 * per_image_noise(x, generators)
    return x


def heun_sde(velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor,
             generators: Sequence[torch.Generator], norm: float = 1.0, last_step_size: float = 0.004) -> torch.Tensor:
    """The release's Heun SDE: noise, then a Heun drift step; then ``x + h drift(x, 1 - h)`` without noise."""
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        dt = t1 - t0
        x_hat = x + (2 * norm * (1 - t0) * dt) ** 0.5 * per_image_noise(x, generators)
        k1 = sde_drift(velocity_fn, x_hat, t0, norm)
        k2 = sde_drift(velocity_fn, x_hat + dt * k1, t1, norm)
        x = x_hat + 0.5 * dt * (k1 + k2)
    return x + last_step_size * sde_drift(velocity_fn, x, float(grid[-1]), norm)


def run_sampler(
    name: str,
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    steps: int,
    generators: Sequence[torch.Generator],
    *,
    time_shift: float = 1.0,
    diffusion_norm: float = 1.0,
    sde_solver: SdeSolver = "euler",
    last_step_size: float = 0.004,
) -> torch.Tensor:
    """Integrate from noise ``x`` (t = 0) to data (t = 1) with the named sampler and ``steps`` steps."""
    if name == "euler":
        return euler(velocity_fn, x, time_grid(steps, time_shift), generators)
    if name == "heun":
        return heun(velocity_fn, x, time_grid(steps, time_shift), generators)
    if name == "sde" and sde_solver == "euler":
        return euler_maruyama(velocity_fn, x, time_grid(steps), generators, diffusion_norm)
    if name == "sde" and sde_solver == "heun":
        grid = time_grid(steps, end=1.0 - last_step_size)
        return heun_sde(velocity_fn, x, grid, generators, diffusion_norm, last_step_size)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")


def network_calls(name: str, steps: int, sde_solver: SdeSolver = "euler") -> int:
    """NFE (network forward passes per image, CFG not counted) of a sampler at ``steps``."""
    if name == "heun" or (name == "sde" and sde_solver == "heun"):
        return 2 * steps + (1 if name == "sde" else 0)
    return steps


def guided(net_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], c: torch.Tensor,
           scale: float = 1.0, interval_start: float = 0.0) -> VelocityFn:
    """Velocity function of snippets ``c`` with classifier-free guidance (null = zero snippet).

    ``v = v_u + scale (v_c - v_u)`` from one forward on a 2N batch; for
    ``t < interval_start`` the conditional velocity alone (the release's interval).
    """
    if scale == 1.0:
        return lambda x, t: net_fn(x, t, c)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)]))
        v_c, v_u = out.chunk(2)
        if float(t[0]) < interval_start:
            return v_c
        return v_u + scale * (v_c - v_u)

    return velocity
