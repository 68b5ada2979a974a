"""An imported model samples with the release's settings: the grid, the NFE, one network call per drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.training.official.conftest import SMALL_DEPTH, link_decoder
from training.files.modelfile import config_from_json, load_model, read_model_meta
from training.flow.generate import generate, noise_generator, sample_tensor
from training.flow.samplers import guided
from training.official.importer import import_network
from training.official.vae import to_uint8


class CountingNet(nn.Module):
    """A cheap stand-in network that records every forward call (batch size and t)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.calls: list[tuple[int, float]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], float(t[0])))
        bias = c[:, :32].reshape(-1, 32, 1, 1)
        return -self.scale * x * (0.5 + t.view(-1, 1, 1, 1)) + 2.0 * bias


@pytest.fixture(scope="session")
def imported(tmp_path_factory, small_bare, latent_stats, decoder_dir):
    out = link_decoder(decoder_dir, tmp_path_factory.mktemp("imported_small"))
    import_network(
        small_bare, out, latent_stats[0], preset_name="gmem-B/1-lightning", overrides={"depth": SMALL_DEPTH}
    )
    return out


@pytest.fixture(scope="session")
def release_config_of_file(imported):
    return config_from_json(read_model_meta(imported / "model.safetensors"))


def _snippet(n: int = 1) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, 768, generator=torch.Generator().manual_seed(4)), dim=1
    )


def test_default_sampler_is_heun_sde_on_the_release_grid_with_one_call_per_drift(release_config_of_file):
    cfg = release_config_of_file
    net = CountingNet()
    sample_tensor(net, cfg, _snippet(), seeds=[0])
    # 49 Heun steps x 2 drift evaluations + the final mean step: 99 drift evaluations, 99 forwards.
    assert len(net.calls) == 99
    times = sorted({round(t, 9) for _, t in net.calls})
    assert times == pytest.approx(np.linspace(0.0, 0.996, 50).tolist(), abs=1e-7)
    assert net.calls[-1][1] == pytest.approx(0.996) and net.calls[0][1] == 0.0
    assert all(b == 1 for b, _ in net.calls)


def _release_heun_sde(net, x, c, generator, steps=50, last=0.004):
    """The authors' algorithm as the release writes it (LINs-lab/GMem ``transport/integrators.py``), score by
    a second network call."""
    calls = 0

    def drift(x, t):
        nonlocal calls
        tt = torch.full((x.shape[0],), t)
        v = net(x, tt, c)
        score = (t * net(x, tt, c) - x) / (1 - t)  # the release's second forward, same inputs
        calls += 2
        return v + (1.0 - t) * score

    grid = np.linspace(0.0, 1.0 - last, steps)
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        dt = t1 - t0
        eps = torch.randn(x.shape[1:], generator=generator)[None]
        x_hat = x + math.sqrt(2 * (1 - t0)) * math.sqrt(dt) * eps
        k1 = drift(x_hat, t0)
        k2 = drift(x_hat + dt * k1, t1)
        x = x_hat + dt / 2 * (k1 + k2)
    return x + last * drift(x, grid[-1]), calls


def test_heun_sde_equals_the_release_algorithm_at_half_the_forwards(release_config_of_file):
    net, c = CountingNet(), _snippet()
    with torch.no_grad():
        ours = sample_tensor(net, release_config_of_file, c, seeds=[11])
        g = noise_generator(11)
        x0 = torch.randn(32, 16, 16, generator=g)[None]
        theirs, their_calls = _release_heun_sde(net, x0, c, g)
    assert their_calls == 198 and len(net.calls) == 99 + 198
    assert (ours - theirs).abs().max() < 1e-5 * max(1.0, float(theirs.abs().max()))


def test_ode_euler_uses_the_release_time_shift(release_config_of_file):
    net = CountingNet()
    sample_tensor(net, release_config_of_file, _snippet(), seeds=[0], steps=49, sampler="euler")
    s, grid = 0.3, np.linspace(0, 1, 50)
    shifted = s * grid / (1 + (s - 1) * grid)
    assert [t for _, t in net.calls] == pytest.approx(shifted[:-1].tolist(), abs=1e-7)


def test_cfg_is_one_forward_on_a_2n_batch_with_the_interval(release_config_of_file):
    cfg = release_config_of_file
    net = CountingNet()
    sample_tensor(net, cfg, _snippet(2), seeds=[0, 1], cfg_scale=7.75)
    assert len(net.calls) == 99 and all(b == 4 for b, _ in net.calls)
    c = _snippet()
    velocity = guided(net, c, 7.75, cfg.sampling.cfg_interval_start)
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        for t in (0.5, 0.95):
            tt = torch.tensor([t])
            v_c, v_u = net(x, tt, c), net(x, tt, torch.zeros_like(c))
            want = v_c if t < 0.89 else v_u + 7.75 * (v_c - v_u)
            assert torch.allclose(velocity(x, tt), want, atol=1e-6)


def test_generate_decodes_latents_through_the_vavae(imported, latent_stats):
    model = load_model(imported / "model.safetensors")
    seen: dict[str, torch.Tensor] = {}
    model.decoder.register_forward_hook(lambda mod, args, out: seen.update(z=args[0], img=out))
    c = _snippet().numpy()
    images = generate(model, c, seeds=[3], steps=2)
    assert images.shape == (1, 256, 256, 3) and images.dtype == np.uint8
    # Same thing by hand: sample, undo the latent normalisation with the release's stats, map pixels.
    _, mean, std = latent_stats
    with torch.no_grad():
        x = sample_tensor(model.net, model.config, torch.from_numpy(c), seeds=[3], steps=2)
    assert torch.allclose(seen["z"], x * std + mean, atol=1e-6)
    assert np.array_equal(to_uint8(seen["img"]).numpy(), images)


def test_sample_command_renders_an_imported_model(imported, tmp_path):
    """The in-process `sample` command serves the imported folder unchanged (real process)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.training.official import fixtures as fx
    from training.official.importer import import_bank

    bank_dir = tmp_path / "bank"
    bank_dir.mkdir()
    import_bank(fx.save_full_bank(fx.raw_cls_features(200, seed=8), tmp_path / "bank.pth"), bank_dir, rank=8)
    out = tmp_path / "grid.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "sample",
            "--model",
            str(imported / "model.safetensors"),
            "--bank",
            str(bank_dir / "bank.safetensors"),
            "--n",
            "1",
            "--seed",
            "0",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
    assert image.std() > 1.0  # a decoded sample, not a blank canvas
