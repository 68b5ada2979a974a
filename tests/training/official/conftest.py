"""Release-layout files built once per session (tests/training/official/fixtures.py) and the imported
results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.training.official import fixtures as fx

# A B/1-width network with 2 blocks: every layer type of the release at a fraction of the cost.
SMALL_DEPTH = 2


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # The B/1 forward passes are the heaviest thing here; two threads keep a small machine usable.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="session")
def small_states() -> tuple[dict, dict]:
    """(ema, model) state dicts of the small network; 'model' differs so picking the wrong one shows."""
    shapes = fx.lightningdit_shapes(SMALL_DEPTH, 768, 12)
    return fx.random_network_state(shapes, seed=1), fx.random_network_state(shapes, seed=2)


@pytest.fixture(scope="session")
def small_bare(release_dir, small_states) -> Path:
    return fx.save_bare(small_states[0], release_dir / "small_bare.pth")


@pytest.fixture(scope="session")
def small_container(release_dir, small_states) -> Path:
    return fx.save_train_checkpoint(small_states[0], small_states[1], release_dir / "small_container.pth")


@pytest.fixture(scope="session")
def latent_stats(release_dir) -> tuple[Path, torch.Tensor, torch.Tensor]:
    path = release_dir / "latents_stats.pt"
    mean, std = fx.save_latent_stats(path)
    return path, mean, std


@pytest.fixture(scope="session")
def vavae_ckpt(release_dir) -> tuple[Path, dict]:
    state = fx.random_vavae_state(seed=3)
    return fx.save_vavae(state, release_dir / "vavae-imagenet256-f16d32-dinov2.pt"), state


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory, vavae_ckpt) -> Path:
    """The fixture VA-VAE imported once; tests hard-link its decoder file where they need it."""
    from training.official.importer import import_vae

    out = tmp_path_factory.mktemp("decoder")
    import_vae(vavae_ckpt[0], out)
    return out


def link_decoder(decoder_dir: Path, out: Path) -> Path:
    # Every model folder needs the decoder beside it; a hard link avoids copying 165 MB.
    out.mkdir(parents=True, exist_ok=True)
    os.link(decoder_dir / "vae_decoder.safetensors", out / "vae_decoder.safetensors")
    return out
