"""The embedded tiny VAE (``gmem/tiny-vae``): 32x32x1 mnist-5k digits <-> 8x8x4 latents.

A KL autoencoder in the LDM style, small enough to train on a laptop CPU in a
couple of minutes, so latent-space GMem runs end to end in tests. Encoder: two
stride-2 conv stages (32 -> 16 -> 8 px) to a diagonal Gaussian posterior
(mean, log-variance) of ``latent_channels``; decoder: the mirror with
nearest-neighbour upsampling. Objective: L1 + MSE reconstruction plus a small
KL weight (``beta``), which keeps the latents near N(0, 1) without blurring.

``python -m training train-vae`` writes a safetensors file whose metadata says
``format = gmem-vae`` (CONTRACT.md section 3), ``kind = gmem/tiny-vae`` and the
architecture, so :mod:`training.latent.autoencoders` can rebuild it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
import typer
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from shared.errors import GMemError, InvalidInput
from shared.fileio import atomic_path
from training.data import load_dataset, to_model_input

FORMAT = "gmem-vae"
FORMAT_VERSION = "1"
KIND = "gmem/tiny-vae"


@dataclass(frozen=True)
class TinyVAEConfig:
    """Sizes of the tiny VAE: image channels, latent channels, width, and the KL weight it was trained
    with."""

    image_channels: int = 1
    latent_channels: int = 4
    width: int = 16
    resolution: int = 32
    beta: float = 1e-4

    @property
    def downsample(self) -> int:
        return 4


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class TinyVAE(nn.Module):
    """``encode(x) -> (mean, logvar)`` at 1/4 resolution; ``decode(z) -> x`` in [-1, 1] (not clamped)."""

    def __init__(self, cfg: TinyVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TinyVAEConfig()
        w = cfg.width
        self.encoder = nn.Sequential(
            _conv_block(cfg.image_channels, w),
            _conv_block(w, w, 2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w, 2),
            _conv_block(2 * w, 2 * w),
            nn.Conv2d(2 * w, 2 * cfg.latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            _conv_block(cfg.latent_channels, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            _conv_block(2 * w, w),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            _conv_block(w, w),
            nn.Conv2d(w, cfg.image_channels, 3, padding=1),
        )

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the LDM posterior's clamp

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (deterministic, so caches are reproducible)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.decoder(z))


def vae_loss(vae: TinyVAE, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(L1 + MSE + beta * KL per element, reconstruction MSE) of one batch; z drawn from the posterior."""
    mean, logvar = vae.posterior(x)
    eps = torch.randn(mean.shape, generator=generator)
    z = mean + torch.exp(0.5 * logvar) * eps
    rec = vae.decode(z)
    mse = F.mse_loss(rec, x)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return F.l1_loss(rec, x) + mse + vae.cfg.beta * kl, float(mse.detach())


def train_tiny_vae(
    x: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    cfg: TinyVAEConfig | None = None,
    progress: bool = True,
) -> tuple[TinyVAE, list[float]]:
    """Train on images [N, C, 32, 32] in [-1, 1]; every batch and noise draw derives from (seed, step)."""

    torch.manual_seed(seed)
    cfg = cfg or TinyVAEConfig(image_channels=x.shape[1], resolution=x.shape[-1])
    vae = TinyVAE(cfg)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    history = []
    for step in tqdm(range(steps), desc="train-vae", unit="step", disable=not progress):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        loss, mse = vae_loss(vae, x[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
        sched.step()
        history.append(mse)
    return vae.eval().requires_grad_(False), history


@torch.no_grad()
def reconstruction_mse(vae: TinyVAE, x: torch.Tensor, batch: int = 500) -> float:
    """Mean squared error in [-1, 1] units of decode(encode(x)) (posterior mean, decoder clamped)."""
    total = 0.0
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        total += float(F.mse_loss(vae.decode(vae.encode(xb)).clamp(-1, 1), xb, reduction="sum"))
    return total / x.numel()


def save_tiny_vae(path: str | os.PathLike[str], vae: TinyVAE, extra: dict[str, Any] | None = None) -> None:
    """Weights + ``format = gmem-vae`` metadata, written atomically and durably."""

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "arch": json.dumps(asdict(vae.cfg), sort_keys=True),
        **{k: str(v) for k, v in (extra or {}).items()},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def build_tiny_vae(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> TinyVAE:
    """The module a ``gmem/tiny-vae`` file describes, weights loaded strictly."""
    cfg = TinyVAEConfig(**json.loads(meta.get("arch", "{}")))
    vae = TinyVAE(cfg)
    vae.load_state_dict(tensors, strict=True)
    return vae.eval().requires_grad_(False)


def train_vae_command(
    dataset: Annotated[
        str, typer.Option(help="mnist-5k[:train|:eval] or DIR/<class>/*.png", envvar="GMEM_DATASET")
    ],
    out: Annotated[Path, typer.Option(help="VAE file to write (format gmem-vae)", envvar="GMEM_OUT")],
    steps: Annotated[int, typer.Option(help="optimisation steps", envvar="GMEM_VAE_STEPS")] = 1000,
    batch_size: Annotated[int, typer.Option(help="batch size", envvar="GMEM_BATCH_SIZE")] = 64,
    lr: Annotated[
        float, typer.Option(help="Adam learning rate (cosine decay to 0)", envvar="GMEM_LR")
    ] = 2e-3,
    latent_channels: Annotated[int, typer.Option(help="latent channels", envvar="GMEM_VAE_CHANNELS")] = 4,
    seed: Annotated[int, typer.Option(help="seed", envvar="GMEM_SEED")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads", envvar="GMEM_THREADS")] = 1,
) -> None:
    """Train the embedded tiny VAE (32x32 -> 8x8 latents) and report its reconstruction error."""

    torch.set_num_threads(max(1, threads))
    try:
        if steps < 1:
            raise InvalidInput(f"--steps must be at least 1; got {steps}")
        ds = load_dataset(dataset)
        if ds.resolution % 4:
            raise InvalidInput(
                f"the tiny VAE downsamples by 4; dataset resolution {ds.resolution} is not a multiple"
            )
        x = to_model_input(ds.images)
        t0 = time.time()
        cfg = TinyVAEConfig(
            image_channels=x.shape[1], latent_channels=latent_channels, resolution=ds.resolution
        )
        vae, _ = train_tiny_vae(x, steps, batch_size, lr, seed, cfg)
        mse = reconstruction_mse(vae, x)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_tiny_vae(
            out, vae, {"dataset": ds.source, "steps": steps, "reconstruction_mse": f"{mse:.6f}", "seed": seed}
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    psnr = 10 * np.log10(4.0 / max(mse, 1e-12))  # peak-to-peak 2 in [-1, 1] units
    typer.echo(
        f"wrote {out}: {ds.resolution}x{ds.resolution}x{x.shape[1]} -> {ds.resolution // 4}x"
        f"{ds.resolution // 4}x{latent_channels}, reconstruction MSE {mse:.5f} (PSNR {psnr:.1f} dB) "
        f"on {len(ds)} images, {time.time() - t0:.0f} s"
    )
