"""Real latent-space artifacts built once per session: the shipped tiny VAE, a cache, a short latent run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from training.cli import build_app

ROOT = Path(__file__).resolve().parents[3]
VAE = ROOT / "artifacts" / "mnist-5k" / "vae.safetensors"
BANK = ROOT / "artifacts" / "mnist-5k" / "bank.safetensors"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def run_cli(*args: str):
    return CliRunner().invoke(build_app(), [*args])


def latent_train_args(cache_dir: Path, out: Path, bank: Path = BANK) -> list[str]:
    """`train --space latent` on the shared cache and bank, writing ``out``; callers add their options."""
    return ["train", "--space", "latent", "--vae", str(VAE), "--cache", str(cache_dir), "--bank", str(bank),
            "--out", str(out)]  # fmt: skip


# The short REPA run every latent test starts from (and the resume test repeats).
SHORT_RUN = ["--steps", "24", "--batch-size", "16", "--preset", "gmem-tiny-latent", "--repa", "mnist",
             "--sample-every", "12", "--ckpt-every", "12", "--threads", "1", "--default-steps", "4",
             "--default-sampler", "euler"]  # fmt: skip


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The cache of mnist-5k:train (the bank's rows) with REPA features, through the command."""
    out = tmp_path_factory.mktemp("cache") / "c"
    res = run_cli(
        "cache",
        "--dataset",
        "mnist-5k:train",
        "--vae",
        str(VAE),
        "--encoder",
        "gmem/mnist-ssl",
        "--out",
        str(out),
        "--shard-size",
        "1000",
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def latent_model(tmp_path_factory, cache_dir) -> Path:
    """24 steps of `train --space latent` with REPA: a model file plus its run folder."""
    out = tmp_path_factory.mktemp("latent") / "model.safetensors"
    res = run_cli(*latent_train_args(cache_dir, out), *SHORT_RUN)
    assert res.exit_code == 0, res.output
    return out
