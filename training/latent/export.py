"""``python -m training export-official``: our latent GMem network in the authors' release layout.

The inverse of ``import-official --network``: a model file of a release-layout network
(LightningDiT */1 on VA-VAE latents 16x16x32, RMSNorm, SwiGLU, RoPE, linear S-Adapter,
768-d DINOv2 snippets, the REPA projector ``H -> 2048 -> 2048 -> 768``) is written as the
bare state dict the release loads with ``load_state_dict(strict=True)``
(official-gmem-facts.md section 2d: ``projector.*`` and ``feat_rope.*`` included, no
``module.`` prefix), plus ``latents_stats.pt`` ``{"mean", "std"}`` of shape [1, 32, 1, 1]
from the model file's normalisation. Both are ``torch.save`` files of plain tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from safetensors.torch import load_file

from shared.errors import GMemError, IncompatibleArtifacts
from shared.fileio import atomic_path
from training.files.modelfile import config_from_json, read_model_meta
from training.network.config import GMemConfig

# Field -> value every release network has (facts 2a, 2b); anything else cannot load into their code.
RELEASE_LAYOUT = dict(
    space="latent",
    input_size=16,
    in_channels=32,
    patch_size=1,
    mlp="swiglu",
    norm="rmsnorm",
    rope=True,
    qk_norm=False,
    learn_sigma=False,
    adapter="linear",
    conditioning="snippet",
    snippet_dim=768,
    repa_dim=768,
    repa_hidden=2048,
    mlp_ratio=4.0,
)


def check_release_layout(cfg: GMemConfig, where: str) -> None:
    """IncompatibleArtifacts naming every field that differs from the release's layout."""
    diffs = [
        f"{k}: {getattr(cfg, k)!r} (release {v!r})" for k, v in RELEASE_LAYOUT.items() if getattr(cfg, k) != v
    ]
    if cfg.latent_mean is None or cfg.latent_std is None:
        diffs.append("latent_mean/latent_std missing")
    if diffs:
        raise IncompatibleArtifacts(
            f"{where} is not in the release's layout ({'; '.join(diffs)}); export needs a "
            "gmem-XL/1 or gmem-B/1 network trained with REPA on VA-VAE latents"
        )


def export_official(model: Path, out: Path, stats_out: Path | None = None) -> tuple[int, Path]:
    """Write the release-layout state dict (and latent stats); returns (tensor count, stats path)."""
    cfg = config_from_json(read_model_meta(model))
    check_release_layout(cfg, str(model))
    state = {k: v.float().contiguous() for k, v in load_file(str(model)).items()}
    mean = torch.tensor(cfg.latent_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.latent_std, dtype=torch.float32).view(1, -1, 1, 1)
    stats_out = stats_out or out.with_name("latents_stats.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    with atomic_path(stats_out) as tmp:
        torch.save({"mean": mean, "std": std}, tmp)
    return len(state), stats_out


def export_official_command(
    model: Annotated[
        Path,
        typer.Option(help="our model file (release layout, e.g. gmem-XL/1 with REPA)", envvar="GMEM_MODEL"),
    ],
    out: Annotated[
        Path, typer.Option(help="release network .pth to write (bare state dict)", envvar="GMEM_OUT")
    ],
    latent_stats_out: Annotated[
        Path | None,
        typer.Option(help="latents_stats.pt (default: beside --out)", envvar="GMEM_LATENT_STATS_OUT"),
    ] = None,
) -> None:
    """Export a latent GMem network to the authors' release layout (loadable by their code, strict)."""
    try:
        n, stats = export_official(model, out, latent_stats_out)
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {out} ({n} tensors, release key layout) and {stats}")
