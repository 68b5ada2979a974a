"""Samplers: exactness on simple fields, per-image determinism, SDE noise ownership, CFG."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.model_fixtures import one_torch_thread  # noqa: F401
from training.flow.generate import sample_tensor
from training.flow.samplers import (
    euler,
    euler_maruyama,
    guided,
    heun,
    heun_sde,
    network_calls,
    per_image_noise,
    run_sampler,
    time_grid,
)
from training.flow.transport import PATH
from training.network.config import preset
from training.network.model import GMemDiT

TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, input_size=16, snippet_dim=8, init="xavier")


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = preset("gmem-tiny", **TINY)  # xavier init: a non-trivial velocity field
    return GMemDiT(cfg).eval(), cfg


@settings(max_examples=30, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.integers(1, 6))
def test_heun_is_exact_for_a_velocity_linear_in_time(a, b, steps):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    out = heun(lambda x, t: a + b * t[:, None].to(x.dtype) + 0 * x, x0, time_grid(steps))
    assert torch.allclose(out, torch.full_like(x0, a + b / 2), atol=1e-12)  # integral of a + b t over [0, 1]


def test_euler_is_exact_for_constant_velocity_and_follows_the_grid():
    x0 = torch.randn(2, 4)
    assert torch.allclose(euler(lambda x, t: torch.ones_like(x), x0, time_grid(7)), x0 + 1)
    seen = []
    euler(lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x), x0, time_grid(4, shift=0.3))
    assert seen[0] == 0.0 and all(a < b for a, b in zip(seen, seen[1:], strict=False))
    assert seen[1] < 0.25  # shift 0.3 packs steps near t = 0 (noise)


def test_ode_on_the_exact_velocity_of_a_point_mass_reaches_it():
    target = torch.tensor([[0.5, -1.0]])
    # the marginal velocity of a point mass: v(x, t) = (target - x) / (1 - t); its last Euler step lands on it
    full = euler(lambda x, t: (target - x) / (1 - t[:, None]), torch.randn(1, 2), time_grid(5))
    assert torch.allclose(full, target, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "heun", "sde"])
def test_batch_equals_single_runs_bit_for_bit(tiny, sampler):
    net, cfg = tiny
    c = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    batch = sample_tensor(net, cfg, c, [5, 6, 7, 8], steps=3, sampler=sampler)
    singles = torch.cat(
        [sample_tensor(net, cfg, c[i : i + 1], [5 + i], steps=3, sampler=sampler) for i in range(4)]
    )
    assert torch.equal(batch, singles)


def test_batch_equals_singles_with_cfg(tiny):
    net, cfg = tiny
    c = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    batch = sample_tensor(net, cfg, c, [1, 2, 3], steps=2, sampler="sde", cfg_scale=3.0)
    singles = torch.cat(
        [
            sample_tensor(net, cfg, c[i : i + 1], [1 + i], steps=2, sampler="sde", cfg_scale=3.0)
            for i in range(3)
        ]
    )
    assert torch.equal(batch, singles)


def test_same_seed_same_output_and_other_seed_differs(tiny):
    net, cfg = tiny
    c = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    a = sample_tensor(net, cfg, c, [42], steps=3, sampler="sde")
    assert torch.equal(a, sample_tensor(net, cfg, c, [42], steps=3, sampler="sde"))
    assert not torch.equal(a, sample_tensor(net, cfg, c, [43], steps=3, sampler="sde"))


def test_sde_noise_comes_from_each_images_own_generator():
    x = torch.zeros(2, 3)
    v = lambda x, t: torch.zeros_like(x)  # noqa: E731
    a = euler_maruyama(v, x, time_grid(4), gens(1, 2))
    b = euler_maruyama(v, x, time_grid(4), gens(1, 99))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    # the draws are exactly those of the generators, in order
    g = gens(1)
    expected = torch.zeros(3)
    noisy = time_grid(4).tolist()[:-2]  # three noisy steps, then the noise-free last one
    for t0 in noisy:
        dt = 0.25
        expected = expected + dt * (-1.0 * expected)  # drift v + (t v - x) = -x for v = 0
        expected = expected + (2 * (1 - t0) * dt) ** 0.5 * torch.randn(3, generator=g[0])
    expected = expected + 0.25 * (-expected)  # last step: mean only
    assert torch.allclose(a[0], expected, atol=1e-6)
    assert len(noisy) == 3


def test_sde_with_zero_diffusion_is_the_euler_ode():
    x = torch.randn(2, 3)
    v = lambda x, t: torch.sin(x) + t[:, None]  # noqa: E731
    assert torch.allclose(euler_maruyama(v, x, time_grid(5), gens(0, 1), norm=0.0), euler(v, x, time_grid(5)))


def test_sde_drift_matches_the_score_formula():
    x, v, t = torch.randn(4, 3), torch.randn(4, 3), 0.3
    score = PATH.score(x, v, torch.full((4,), t))
    w = 1.0 * (1 - t)
    from training.flow.samplers import sde_drift

    assert torch.allclose(sde_drift(lambda *_: v, x, t, 1.0), v + w * score, atol=1e-6)


def test_heun_sde_calls_and_last_mean_step():
    calls = []

    def v(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    out = run_sampler("sde", v, torch.zeros(1, 2), 49, gens(0), sde_solver="heun")
    assert len(calls) == network_calls("sde", 49, "heun") == 99
    assert (
        abs(calls[-1] - 0.996) < 1e-6 and abs(calls[-2] - 0.996) < 1e-6
    )  # Heun end point, then the mean step
    assert out.shape == (1, 2)
    assert torch.equal(
        heun_sde(v, torch.zeros(1, 2), time_grid(3, end=0.996), gens(7)),
        heun_sde(v, torch.zeros(1, 2), time_grid(3, end=0.996), gens(7)),
    )


def test_per_image_noise_needs_one_generator_per_image():
    with pytest.raises(ValueError, match="one generator per image"):
        per_image_noise(torch.zeros(2, 3), gens(1))


def test_guidance_is_one_forward_on_a_2n_batch_with_zero_null():
    seen = []

    def net(x, t, c):
        seen.append(c.clone())
        return c.sum(1, keepdim=True).expand(-1, 2) + 0 * x

    c = torch.ones(3, 4)
    v = guided(net, c, scale=2.0)(torch.zeros(3, 2), torch.full((3,), 0.5))
    assert len(seen) == 1 and seen[0].shape == (6, 4) and torch.count_nonzero(seen[0][3:]) == 0
    assert torch.allclose(v, torch.full((3, 2), 8.0))  # v_u + 2 (v_c - v_u) = 0 + 2 * 4
    early = guided(net, c, scale=2.0, interval_start=0.89)(torch.zeros(3, 2), torch.full((3,), 0.5))
    assert torch.allclose(early, torch.full((3, 2), 4.0))  # before the interval: conditional only


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="euler, heun, sde"):
        run_sampler("ddim", lambda x, t: x, torch.zeros(1, 1), 2, gens(0))


def _field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A row-wise nonlinear velocity field: each row depends only on itself and its own t."""
    return torch.tanh(x * 1.7) - x * t.view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize(
    "name,solver", [("euler", "euler"), ("heun", "euler"), ("sde", "euler"), ("sde", "heun")]
)
def test_states_stepped_together_in_one_batch_equal_run_sampler_alone(name, solver):
    """Jobs at different steps, step counts and samplers share each evaluation, bit for bit."""
    from training.flow.samplers import SamplerOptions, SamplerState

    opts = SamplerOptions(sde_solver=solver)
    shapes = (1, 4, 4)
    jobs = [(name, 7, [3, 4]), ("euler", 5, [9]), (name, 11, [1])]
    alone = [
        run_sampler(
            s,
            _field,
            torch.randn(len(seeds), *shapes, generator=gens(seeds[0] + 100)[0]),
            nsteps,
            gens(*seeds),
            sde_solver=solver,
        )
        for s, nsteps, seeds in jobs
    ]
    states = []
    for i, (s, nsteps, seeds) in enumerate(jobs):
        states.append(
            (
                i,
                SamplerState(
                    s,
                    torch.randn(len(seeds), *shapes, generator=gens(seeds[0] + 100)[0]),
                    nsteps,
                    gens(*seeds),
                    opts,
                ),
            )
        )
    joined: list[tuple[int, SamplerState]] = [states[0]]
    waiting = states[1:]
    forwards = 0
    while joined:
        # Another job joins every second forward, wherever the running ones are.
        if waiting and forwards % 2 == 1:
            joined.append(waiting.pop(0))
        xs = [state.pending[0] for _, state in joined]
        ts = [torch.full((state.pending[0].shape[0],), state.pending[1]) for _, state in joined]
        v = _field(torch.cat(xs), torch.cat(ts))
        at = 0
        for _, state in joined:
            n = state.pending[0].shape[0]
            state.advance(v[at : at + n])
            at += n
        forwards += 1
        joined = [(i, state) for i, state in joined if not state.done]
    for i, state in states:
        assert state.done and state.step == jobs[i][1]
        assert torch.equal(state.result, alone[i])
    assert states[0][1].calls == network_calls(name, 7, solver)
