"""Samplers: steppable per-image state machines over a velocity function, plus ``run_sampler``.

Time runs from 0 (noise) to 1 (data). ``velocity_fn(x, t) -> v`` with ``t`` a
tensor of shape [N]. Every random draw of image k comes from its own generator
(drawn on the CPU, moved to x's device), so a batch of k images equals k single runs.

- ``euler``, ``heun``: ODE ``dx = v dt`` (Heun: trapezoidal, 2 network calls per step).
- ``sde``: ``dx = [v + w(t) s] dt + sqrt(2 w(t)) dW`` with diffusion ``w(t) = norm * (1 - t)``
  and the score from the velocity ``s = (t v - x) / (1 - t)``, so the drift is
  ``v + norm * (t v - x)`` (finite at t = 1) and costs ONE network call per
  evaluation (the release calls the network twice there, see facts 3b).
  Solvers: Euler-Maruyama (ours, default; the last step adds no noise) or the
  release's Heun SDE on ``linspace(0, 1 - h, steps + 1)`` with a final
  noise-free "mean" step of size h (``h = 0.004``): 2 steps + 1 calls.

Steppable form. Each sampler is a program (a Python generator) that yields the
``(x, t)`` it needs a velocity for and receives ``v``; ``SamplerState`` wraps one
program per group of images (a job). A scheduler can therefore evaluate the
velocities of many states, at different times, samplers and step counts, in one
network forward, and feed each state its own rows: the arithmetic each state does
is exactly the one ``run_sampler`` does, so the results are the same bits whenever
the network's rows do not depend on their batch neighbours. ``run_sampler`` is the
same program driven by one velocity function.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, cast

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SdeSolver = Literal["euler", "heun"]


class Sampler(StrEnum):
    SDE = "sde"
    EULER = "euler"
    HEUN = "heun"


SamplerName = Literal["euler", "heun", "sde"]
SAMPLER_NAMES: tuple[str, ...] = tuple(s.value for s in (Sampler.EULER, Sampler.HEUN, Sampler.SDE))

# A sampler program yields (x, t) and is sent v(x, t); it returns the final x.
Program = Generator[tuple[torch.Tensor, float], torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SamplerOptions:
    """Per-model sampler settings (GMemConfig fields of the same names)."""

    time_shift: float = 1.0
    diffusion_norm: float = 1.0
    sde_solver: SdeSolver = "euler"
    last_step_size: float = 0.004


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
        raise ValueError(
            f"need one generator per image: {len(generators)} generators for {like.shape[0]} images"
        )
    z = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators])
    return z.to(device=like.device, dtype=like.dtype)


def _t(value: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def _pairs(grid: torch.Tensor) -> zip[tuple[float, float]]:
    return zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)


# ------------------------------------------------------------------ programs


def _euler(
    x: torch.Tensor, grid: torch.Tensor, generators: Sequence[torch.Generator], norm: float
) -> Program:
    """Euler ODE: ``x <- x + (t1 - t0) v(x, t0)``; one call per step."""
    for t0, t1 in _pairs(grid):
        v = yield x, t0
        x = x + (t1 - t0) * v
    return x


def _heun(x: torch.Tensor, grid: torch.Tensor, generators: Sequence[torch.Generator], norm: float) -> Program:
    """Heun ODE (trapezoidal predictor-corrector); two calls per step."""
    for t0, t1 in _pairs(grid):
        dt = t1 - t0
        v0 = yield x, t0
        v1 = yield x + dt * v0, t1
        x = x + 0.5 * dt * (v0 + v1)
    return x


def _drift(v: torch.Tensor, x: torch.Tensor, t: float, norm: float) -> torch.Tensor:
    """``v + w(t) s`` with ``w = norm (1 - t)``, ``s = (t v - x)/(1 - t)``: ``v + norm (t v - x)``."""
    return v + norm * (t * v - x)


def _euler_maruyama(
    x: torch.Tensor, grid: torch.Tensor, generators: Sequence[torch.Generator], norm: float
) -> Program:
    """Euler-Maruyama SDE; the final step is the mean (no noise), one call per step."""
    steps = len(grid) - 1
    for i, (t0, t1) in enumerate(_pairs(grid)):
        dt = t1 - t0
        v = yield x, t0
        x = x + dt * _drift(v, x, t0, norm)
        if i < steps - 1:
            x = x + (2 * norm * (1 - t0) * dt) ** 0.5 * per_image_noise(x, generators)
    return x


def _heun_sde(
    x: torch.Tensor,
    grid: torch.Tensor,
    generators: Sequence[torch.Generator],
    norm: float,
    last_step_size: float,
) -> Program:
    """The release's Heun SDE: noise, then a Heun drift step; then ``x + h drift(x, 1 - h)`` without noise."""
    for t0, t1 in _pairs(grid):
        dt = t1 - t0
        x_hat = x + (2 * norm * (1 - t0) * dt) ** 0.5 * per_image_noise(x, generators)
        v = yield x_hat, t0
        k1 = _drift(v, x_hat, t0, norm)
        x_pred = x_hat + dt * k1
        v = yield x_pred, t1
        k2 = _drift(v, x_pred, t1, norm)
        x = x_hat + 0.5 * dt * (k1 + k2)
    t_end = float(grid[-1])
    v = yield x, t_end
    return x + last_step_size * _drift(v, x, t_end, norm)


def _sde(x: torch.Tensor, steps: int, generators: Sequence[torch.Generator], o: SamplerOptions) -> Program:
    if o.sde_solver == "euler":
        return _euler_maruyama(x, time_grid(steps), generators, o.diffusion_norm)
    if o.sde_solver == "heun":
        grid = time_grid(steps, end=1.0 - o.last_step_size)
        return _heun_sde(x, grid, generators, o.diffusion_norm, o.last_step_size)
    raise ValueError(f"unknown SDE solver {o.sde_solver!r}; choose euler or heun")


# The one dispatch table: sampler -> program builder (x, steps, generators, options).
PROGRAMS: dict[Sampler, Callable[[torch.Tensor, int, Sequence[torch.Generator], SamplerOptions], Program]] = {
    Sampler.EULER: lambda x, steps, g, o: _euler(x, time_grid(steps, o.time_shift), g, o.diffusion_norm),
    Sampler.HEUN: lambda x, steps, g, o: _heun(x, time_grid(steps, o.time_shift), g, o.diffusion_norm),
    Sampler.SDE: _sde,
}


def _sampler(name: str) -> Sampler:
    try:
        return Sampler(name)
    except ValueError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}") from None


def network_calls(name: str, steps: int, sde_solver: SdeSolver = "euler") -> int:
    """NFE (network forward passes per image, CFG not counted) of a sampler at ``steps``."""
    if name == "heun" or (name == "sde" and sde_solver == "heun"):
        return 2 * steps + (1 if name == "sde" else 0)
    return steps


class SamplerState:
    """One group of images on its way from noise to data, advanced one velocity evaluation at a time.

    ``pending`` is the ``(x, t)`` the next evaluation needs (None once done);
    ``advance(v)`` feeds it; ``step`` counts completed sampler steps (0..steps).
    """

    def __init__(
        self,
        name: str,
        x: torch.Tensor,
        steps: int,
        generators: Sequence[torch.Generator],
        options: SamplerOptions | None = None,
    ) -> None:
        self.sampler = _sampler(name)
        self.options = options or SamplerOptions()
        self.steps = int(steps)
        self.calls = network_calls(self.sampler, self.steps, self.options.sde_solver)
        self.evaluated = 0
        self.result: torch.Tensor | None = None
        self.last: tuple[torch.Tensor, float, torch.Tensor] | None = None  # (x, t, v) of the last evaluation
        self._program = PROGRAMS[self.sampler](x, self.steps, generators, self.options)
        self.pending: tuple[torch.Tensor, float] | None = next(self._program)

    @property
    def done(self) -> bool:
        return self.pending is None

    @property
    def step(self) -> int:
        """Completed steps; ``steps`` once done (a trailing mean step counts with the last one)."""
        if self.done:
            return self.steps
        return min(self.steps, self.evaluated * self.steps // self.calls)

    def advance(self, v: torch.Tensor) -> None:
        """Give the velocity at ``pending``; moves to the next evaluation or to ``result``."""
        if self.pending is None:
            raise RuntimeError("the sampler has already finished")
        x, t = self.pending
        self.last = (x, t, v)
        self.evaluated += 1
        try:
            self.pending = self._program.send(v)
        except StopIteration as stop:
            self.pending, self.result = None, stop.value

    def clean_estimate(self) -> torch.Tensor | None:
        """The current prediction of the clean image, ``x + (1 - t) v`` (flow matching), for previews."""
        if self.last is None:
            return None
        x, t, v = self.last
        return x + (1.0 - t) * v


def step(state: SamplerState, velocity_fn: VelocityFn) -> None:
    """Advance ``state`` by one velocity evaluation of ``velocity_fn``."""
    if state.pending is None:
        raise RuntimeError("the sampler has already finished")
    x, t = state.pending
    state.advance(velocity_fn(x, _t(t, x)))


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
    options = SamplerOptions(time_shift, diffusion_norm, sde_solver, last_step_size)
    state = SamplerState(name, x, steps, generators, options)
    while not state.done:
        step(state, velocity_fn)
    assert state.result is not None
    return state.result


def _drive(program: Program, velocity_fn: VelocityFn) -> torch.Tensor:
    try:
        x, t = next(program)
        while True:
            x, t = program.send(velocity_fn(x, _t(t, x)))
    except StopIteration as stop:
        return cast(torch.Tensor, stop.value)


def euler(
    velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor, generators: Sequence[torch.Generator] = ()
) -> torch.Tensor:
    """Euler ODE on ``grid``."""
    return _drive(_euler(x, grid, generators, 1.0), velocity_fn)


def heun(
    velocity_fn: VelocityFn, x: torch.Tensor, grid: torch.Tensor, generators: Sequence[torch.Generator] = ()
) -> torch.Tensor:
    """Heun ODE on ``grid``."""
    return _drive(_heun(x, grid, generators, 1.0), velocity_fn)


def sde_drift(velocity_fn: VelocityFn, x: torch.Tensor, t: float, norm: float) -> torch.Tensor:
    """The SDE drift at ``(x, t)``: one network call."""
    return _drift(velocity_fn(x, _t(t, x)), x, t, norm)


def euler_maruyama(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generators: Sequence[torch.Generator],
    norm: float = 1.0,
) -> torch.Tensor:
    """Euler-Maruyama SDE on ``grid``."""
    return _drive(_euler_maruyama(x, grid, generators, norm), velocity_fn)


def heun_sde(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generators: Sequence[torch.Generator],
    norm: float = 1.0,
    last_step_size: float = 0.004,
) -> torch.Tensor:
    """The release's Heun SDE on ``grid``."""
    return _drive(_heun_sde(x, grid, generators, norm, last_step_size), velocity_fn)


def cfg_active(
    t: float, scale: float, interval_start: float = 0.0, interval: tuple[float, float] | None = None
) -> bool:
    """Whether classifier-free guidance applies at time ``t`` (the unconditional pass is needed)."""
    if scale == 1.0 or t < interval_start:
        return False
    return interval is None or interval[0] <= t <= interval[1]


def combine_cfg(v_c: torch.Tensor, v_u: torch.Tensor, scale: float) -> torch.Tensor:
    """``v_u + scale (v_c - v_u)``."""
    return v_u + scale * (v_c - v_u)


def guided(
    net_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    c: torch.Tensor,
    scale: float = 1.0,
    interval_start: float = 0.0,
) -> VelocityFn:
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
        return combine_cfg(v_c, v_u, scale)

    return velocity
