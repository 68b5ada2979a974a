"""Import the paper authors' GMem release (LINs-lab/GMem) into this project's formats.

``python -m training import-official`` converts whichever parts it is given
(the network, bank and VA-VAE files its README and Hugging Face cards list):

- ``--network NET.pth``: LightningDiT-XL/1 or B/1 + S-Adapter, bare or
  ``{"model", "ema", "config"}`` -> ``DIR/model.safetensors`` (CONTRACT.md section 5:
  latent space 16x16x32, VA-VAE decoding, the release's sampler settings);
- ``--vae VAE.pt``: the VA-VAE f16d32 Lightning checkpoint -> ``DIR/vae_decoder.safetensors``;
- ``--latent-stats STATS.pt``: per-channel latent mean/std (needed with ``--network``);
- ``--bank BANK.pth``: the full bank ``[N, 768]`` of raw DINOv2 CLS tokens (L2-normalised
  then factorised, losslessly at rank 768 unless ``--rank`` is given) or the SVD dict
  (imported as is, ``normalized=false``) -> ``DIR/bank.safetensors``, with a table of the
  bank's size and fidelity at each rank.

Foreign pickles are read with ``torch.load(weights_only=True)`` only. Every tensor our
network needs must be present with its exact shape; missing, unexpected and misshapen
keys are reported by name. ``projector.*`` (REPA, train-time only) is ignored and
reported when the chosen preset has no projector; ``feat_rope.*`` is compared against
our own recomputation of the 2-D axial RoPE tables before it is loaded.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from shared.errors import ArtifactFileError, GMemError, IncompatibleArtifacts
from shared.factors import load_factors
from training.bank.importer import BankImport, run_import
from training.bank.storage import format_report
from training.files.modelfile import save_model
from training.files.statedict import state_dict_problems
from training.latent.autoencoders import save_vavae
from training.latent.vavae import autoencoder_state_from_checkpoint
from training.network.config import PRESETS, GMemConfig, SamplingDefaults, SdeSolver, preset
from training.network.layers import AxialRoPE
from training.network.model import GMemDiT
from training.official.vae import decoder_state_from_checkpoint, save_decoder

# Release networks -> our presets (LINs-lab/GMem ``models/lightningdit.py``, the model constructors).
# Both are LightningDiT */1 with RMSNorm, SwiGLU, RoPE.
RELEASE_PRESETS = ("gmem-XL/1", "gmem-B/1-lightning")
LATENT_CHANNELS = 32
DECODER_FILE = "vae_decoder.safetensors"
VAE_FILE = "vae.safetensors"  # encoder + decoder (+ latent stats), for `cache --vae`
MODEL_FILE = "model.safetensors"
BANK_FILE = "bank.safetensors"
DINOV2_ID = "timm/vit_base_patch14_dinov2"
# The release bank holds one CLS token per ImageNet-1k training image, centre-cropped to 256 px.
BANK_SOURCE = "imagenet-1k/train@256"
# Sampling settings of the release (LINs-lab/GMem ``transport/integrators.py``, ``transport/transport.py``
# and ``models/lightningdit.py``'s forward with CFG): SDE Heun on the 50-point grid
# linspace(0, 1 - 0.004, 50),
# i.e. 49 Heun steps (our `steps` counts intervals) plus a final noise-free mean step of 0.004: 99 drift
# evaluations; w(t) = 1 * (1 - t). The ODE configs use Euler on linspace(0, 1, 50) with time shift 0.3
# (the shift never reaches the SDE path, there or here). CFG is off (scale 1) unless asked; its interval
# keeps guidance to t >= 0.89.
RELEASE_SAMPLING = SamplingDefaults(
    sampler="sde",
    sde_solver=SdeSolver.heun,
    steps=49,
    diffusion_norm=1.0,
    last_step_size=0.004,
    time_shift=0.3,
    cfg_interval_start=0.89,
)
ROPE_TOLERANCE = 1e-5


@dataclass
class PartReport:
    """One imported part, for the summary table."""

    part: str
    source: str
    detail: str
    tensors: int
    parameters: int
    out: str
    notes: list[str] = field(default_factory=list)
    bank: BankImport | None = None  # for the bank: its size and fidelity at each rank


# ----------------------------------------------------------------------------- reading foreign files


def read_release_file(path: str | Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU (memory-mapped for zip-format files)."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactFileError(f"{what}: no such file {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as exc:
        raise ArtifactFileError(
            f"{what}: {p} holds objects other than tensors and plain containers, and is not unpickled "
            f"(weights_only=True keeps foreign code from running). Re-save it as a state dict. ({exc})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ArtifactFileError(f"{what}: {p} is not a readable torch.save file ({exc})") from exc


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    # DDP and accelerate each wrap the model, so "module." can appear more than once
    # (LINs-lab/GMem ``utils/loading.py``).
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def select_network_state(
    obj: Any, ema: bool = True, where: str = "network"
) -> tuple[dict[str, torch.Tensor], str]:
    """The network weights inside a release file: ``ema`` or ``model`` of a training container, or the bare
    dict."""
    if not isinstance(obj, Mapping):
        raise IncompatibleArtifacts(
            f"{where}: expected a state dict or {{'model', 'ema', 'config'}}, found {type(obj).__name__}"
        )
    if "ema" in obj or "model" in obj:
        key = "ema" if ema else "model"
        if key not in obj:
            other = "--no-ema" if ema else "--ema"
            raise IncompatibleArtifacts(
                f"{where}: the checkpoint has {sorted(obj)} but no {key!r}; try {other}"
            )
        state, detail = obj[key], f"training checkpoint, {key!r} weights"
    else:
        state, detail = obj, "bare state dict"
    if not isinstance(state, Mapping):
        raise IncompatibleArtifacts(f"{where}: {detail} is a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise IncompatibleArtifacts(f"{where}: entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    return _strip_prefixes(state), detail


# ----------------------------------------------------------------------------- network


def detect_preset(state: Mapping[str, torch.Tensor], where: str = "network") -> str:
    """The release preset whose width and depth match the state dict's shapes."""
    if "pos_embed" not in state:
        raise IncompatibleArtifacts(f"{where}: missing 'pos_embed'; this is not a LightningDiT GMem network")
    hidden = int(state["pos_embed"].shape[-1])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name in RELEASE_PRESETS:
        if (PRESETS[name].hidden_size, PRESETS[name].depth) == (hidden, depth):
            return name
    known = ", ".join(
        f"{n} (hidden {PRESETS[n].hidden_size}, depth {PRESETS[n].depth})" for n in RELEASE_PRESETS
    )
    raise IncompatibleArtifacts(
        f"{where}: hidden size {hidden} and depth {depth} match no release network; "
        f"known: {known}. Pass --preset to force one."
    )


def _collapse_blocks(keys: list[str], universe: Mapping[str, Any]) -> list[str]:
    """Name whole absent/extra transformer blocks once ("blocks.12-27.*") instead of key by key."""

    def block_of(k: str) -> int | None:
        parts = k.split(".")
        return int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None

    per_block: dict[int, int] = {}
    for k in universe:
        if (b := block_of(k)) is not None:
            per_block[b] = per_block.get(b, 0) + 1
    hits: dict[int, list[str]] = {}
    for k in keys:
        if (b := block_of(k)) is not None:
            hits.setdefault(b, []).append(k)
    whole = sorted(b for b, ks in hits.items() if len(ks) == per_block.get(b, -1))
    out = [k for k in keys if block_of(k) not in whole]
    if whole:
        runs, start = [], whole[0]
        for prev, cur in zip(whole, whole[1:] + [-1], strict=True):
            if cur != prev + 1:  # a run of consecutive block indices ends at prev
                runs.append(f"blocks.{start}.*" if start == prev else f"blocks.{start}-{prev}.*")
                start = cur
        out.insert(0, f"{', '.join(runs)} (whole blocks)")
    return out


def match_network_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], where: str = "network"
) -> list[str]:
    """Check names and shapes against our network; returns the ignored ``projector.*`` keys.

    Raises IncompatibleArtifacts naming every missing, unexpected or misshapen key.
    """
    ignored = sorted(k for k in state if k not in expected and k.startswith("projector."))
    problems = state_dict_problems(
        {k: v for k, v in state.items() if k not in ignored}, expected, _collapse_blocks
    )
    if problems:
        raise IncompatibleArtifacts(
            f"{where}: does not fit our network ({'; '.join(problems)}). "
            "Check --preset and that the file is a GMem LightningDiT network."
        )
    return ignored


def check_rope_tables(
    state: Mapping[str, torch.Tensor], head_dim: int, grid: int, where: str = "network"
) -> float:
    """Max deviation of the stored ``feat_rope`` tables from our recomputation; refuses a different layout."""
    ours = AxialRoPE(head_dim, grid)
    worst = 0.0
    for name in ("freqs_cos", "freqs_sin"):
        stored = state.get(f"feat_rope.{name}")
        if stored is None:
            continue
        worst = max(worst, float((stored.float() - getattr(ours, name)).abs().max()))
    if worst > ROPE_TOLERANCE:
        raise IncompatibleArtifacts(
            f"{where}: feat_rope tables differ from the 2-D axial RoPE we compute by {worst:.3g} "
            f"(tolerance {ROPE_TOLERANCE}); the checkpoint uses another rotary layout "
            f"and would not run correctly"
        )
    return worst


def release_config(
    preset_name: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    decoder_path: str | Path = DECODER_FILE,
    **overrides: Any,
) -> GMemConfig:
    """Our GMemConfig for a release network: latent 16x16x32, decoding through the VA-VAE at
    ``decoder_path``."""
    return preset(
        preset_name,
        latent_mean=tuple(float(v) for v in mean.reshape(-1)),
        latent_std=tuple(float(v) for v in std.reshape(-1)),
        latent_multiplier=1.0,
        # Absolute, so any working directory finds it; training.official.vae falls back to the same name
        # beside the model file when the folder has been moved.
        decoder={"kind": "vavae-f16d32", "weights": str(decoder_path)},
        sampling=RELEASE_SAMPLING,
        # The release trains no CFG null: its adapter dropout never zeroes a whole snippet, yet CFG uses the
        # zero vector (LINs-lab/GMem models/feature_embedder.py, engine/evaluation.py:231-232).
        **{"p_uncond": 0.0, **overrides},
    )


def convert_network(
    state: Mapping[str, torch.Tensor], config: GMemConfig, where: str = "network"
) -> tuple[GMemDiT, list[str], float]:
    """Load release weights into our GMemDiT for ``config`` (strict); returns (net, ignored keys, rope
    deviation)."""
    with torch.device("meta"):
        net = GMemDiT(config)
    expected = {k: v.shape for k, v in net.state_dict().items()}
    ignored = match_network_keys(state, expected, where)
    rope_dev = check_rope_tables(state, config.head_dim, config.grid_size, where) if config.rope else 0.0
    weights = {k: v.float().contiguous() for k, v in state.items() if k in expected}
    net.load_state_dict(weights, strict=True, assign=True)
    net.requires_grad_(False)
    return net.eval(), ignored, rope_dev


def read_latent_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents_stats.pt``: {'mean': [1,32,1,1], 'std': [1,32,1,1]}, finite, std > 0."""
    obj = read_release_file(path, "latent stats")
    if not isinstance(obj, Mapping) or not {"mean", "std"} <= set(obj):
        raise IncompatibleArtifacts(
            f"latent stats: {path} must hold {{'mean', 'std'}}; "
            f"found {sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__}"
        )
    out = []
    for key in ("mean", "std"):
        t = obj[key]
        if not isinstance(t, torch.Tensor) or t.numel() != LATENT_CHANNELS:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise IncompatibleArtifacts(
                f"latent stats: {key!r} is {shape}; expected [1, {LATENT_CHANNELS}, 1, 1]"
            )
        t = t.double().reshape(-1)
        if not torch.isfinite(t).all():
            raise IncompatibleArtifacts(f"latent stats: {key!r} holds NaN or infinite values")
        out.append(t)
    if (out[1] <= 0).any():
        raise IncompatibleArtifacts("latent stats: 'std' must be positive in every channel")
    return out[0], out[1]


def import_network(
    path: Path,
    out_dir: Path,
    stats: Path,
    ema: bool = True,
    preset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PartReport:
    """Release network -> DIR/model.safetensors (our model file, latent space, release sampler settings).

    ``overrides`` replace preset fields (tests use a B/1-width network of fewer blocks).
    """
    state, detail = select_network_state(read_release_file(path, "network"), ema, str(path))
    name = preset_name or detect_preset(state, str(path))
    mean, std = read_latent_stats(stats)
    config = release_config(name, mean, std, (out_dir / DECODER_FILE).resolve(), **(overrides or {}))
    net, ignored, rope_dev = convert_network(state, config, str(path))
    save_model(
        out_dir / MODEL_FILE,
        net,
        config,
        extra={
            "source": "LINs-lab/GMem release",
            "source_file": path.name,
            "source_weights": detail,
        },
    )
    notes = [f"preset {name}", f"feat_rope matches recomputation (max dev {rope_dev:.1e})"]
    if ignored:
        notes.append(f"ignored {len(ignored)} REPA projector tensors (projector.*, train-time only)")
    params = sum(p.numel() for p in net.parameters())
    return PartReport(
        "network", path.name, detail, len(state) - len(ignored), params, str(out_dir / MODEL_FILE), notes
    )


# ----------------------------------------------------------------------------- VA-VAE and bank


def import_vae(path: Path, out_dir: Path, stats: Path | None = None) -> PartReport:
    """VA-VAE Lightning checkpoint -> DIR/vae_decoder.safetensors (decoding) and DIR/vae.safetensors.

    ``vae.safetensors`` is the whole autoencoder (encoder, quant convs, decoder) with the
    release's latent mean/std when ``stats`` is given: what ``cache --vae`` encodes with.
    """
    obj = read_release_file(path, "VA-VAE")
    state, ignored = decoder_state_from_checkpoint(obj, str(path))
    full = autoencoder_state_from_checkpoint(obj, str(path))
    save_decoder(state, out_dir / DECODER_FILE)
    save_vavae(full, out_dir / VAE_FILE, read_latent_stats(stats) if stats is not None else None)
    ignored = [k for k in ignored if k not in full]
    groups = sorted({k.split(".")[0] for k in ignored})
    notes = [f"ignored {len(ignored)} tensors ({', '.join(groups)})"] if ignored else []
    notes.append(
        f"encoder + decoder -> {out_dir / VAE_FILE}" + (" with the release's latent stats" if stats else "")
    )
    return PartReport(
        "vae decoder",
        path.name,
        "Lightning checkpoint",
        len(state),
        sum(t.numel() for t in state.values()),
        str(out_dir / DECODER_FILE),
        notes,
    )


def import_bank(path: Path, out_dir: Path, rank: int | None) -> PartReport:
    """Full bank or SVD dict -> DIR/bank.safetensors through training.bank.importer (lossless without
    ``rank``: the release's FID needs the snippets the network was trained on, not a truncation)."""
    target = out_dir / BANK_FILE
    result = run_import(path, target, rank=rank, encoder=DINOV2_ID, source=BANK_SOURCE)
    meta = result.meta
    layout = meta.extra.get("official_layout", "?")
    detail = {
        "full": "full bank [N, 768], rows L2-normalised then factorised",
        "svd": "SVD dict, imported as is",
    }.get(layout, layout)
    written = result.storage.written
    notes = [
        f"rank {meta.rank} of d = {meta.feature_dim} ({result.rank_note})",
        f"normalized={str(meta.normalized).lower()}",
        "explained variance unknown (the SVD dict keeps no trace of the dropped directions)"
        if math.isnan(meta.explained_variance)
        else f"explained variance {meta.explained_variance:.4f}",
        f"{written.file_bytes:,} bytes, {written.dense_ratio:.3f} x the dense snippets; read back: "
        f"min cos {result.storage.file_min_cosine:.6f} over {result.storage.sample:,} rows",
    ]
    size = load_factors(target).size
    return PartReport("bank", path.name, detail, size, size * meta.rank, str(target), notes, bank=result)


# ----------------------------------------------------------------------------- command


def print_summary(reports: list[PartReport]) -> None:
    """A rich table: what came from where, and what was left out."""
    table = Table(title="import-official")
    for col in ("part", "source", "container", "tensors/rows", "values", "written", "notes"):
        table.add_column(col)
    for r in reports:
        table.add_row(
            r.part, r.source, r.detail, str(r.tensors), f"{r.parameters:,}", r.out, "; ".join(r.notes)
        )
    Console().print(table)
    for r in reports:
        if r.bank is not None:
            typer.echo(format_report(r.bank.storage, r.bank.rank_note))


def import_official_command(
    out: Annotated[
        Path, typer.Option(help="Output folder (created if missing).", envvar="GMEM_OFFICIAL_OUT")
    ],
    network: Annotated[
        Path | None,
        typer.Option(
            help="Release network .pth (bare or {model, ema, config}).", envvar="GMEM_OFFICIAL_NETWORK"
        ),
    ] = None,
    ema: Annotated[
        bool,
        typer.Option(
            "--ema/--no-ema",
            help="From a training checkpoint take 'ema' (default, as the authors evaluate) or 'model'.",
            envvar="GMEM_OFFICIAL_EMA",
        ),
    ] = True,
    vae: Annotated[
        Path | None,
        typer.Option(
            help="VA-VAE checkpoint vavae-imagenet256-f16d32-dinov2.pt.", envvar="GMEM_OFFICIAL_VAE"
        ),
    ] = None,
    latent_stats: Annotated[
        Path | None,
        typer.Option(help="latents_stats.pt (required with --network).", envvar="GMEM_OFFICIAL_LATENT_STATS"),
    ] = None,
    bank: Annotated[
        Path | None,
        typer.Option(help="Full bank [N, 768] tensor or SVD dict .pth.", envvar="GMEM_OFFICIAL_BANK"),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            help="Bank rank; default lossless (full bank: rank d = 768, SVD dict: its own rank); "
            "smaller truncates.",
            envvar="GMEM_OFFICIAL_RANK",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="gmem-XL/1 or gmem-B/1-lightning; default: from shapes.", envvar="GMEM_OFFICIAL_PRESET"
        ),
    ] = None,
) -> None:
    """Convert the paper authors' released GMem (network, VA-VAE, latent stats, bank) for serving."""
    try:
        if not any((network, vae, bank)):
            raise typer.BadParameter("give at least one of --network, --vae, --bank")
        if network is not None and latent_stats is None:
            raise typer.BadParameter(
                "--network needs --latent-stats (latents_stats.pt from "
                "hustvl/vavae-imagenet256-f16d32-dinov2): the model file records them"
            )
        if preset is not None and preset not in RELEASE_PRESETS + ("gmem-B/1",):
            raise typer.BadParameter(f"--preset {preset!r}: choose gmem-XL/1, gmem-B/1-lightning or gmem-B/1")
        out.mkdir(parents=True, exist_ok=True)
        reports: list[PartReport] = []
        if vae is not None:
            typer.echo(f"importing {vae} ...", err=True)
            reports.append(import_vae(vae, out, latent_stats))
        if network is not None:
            assert latent_stats is not None  # refused above without it
            typer.echo(f"importing {network} ...", err=True)
            reports.append(import_network(network, out, latent_stats, ema, preset))
        if bank is not None:
            typer.echo(f"importing {bank} ...", err=True)
            reports.append(import_bank(bank, out, rank))
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    print_summary(reports)
    if network is not None and not (out / DECODER_FILE).exists():
        typer.echo(
            f"note: {out / DECODER_FILE} is missing; the model decodes through it. "
            "Run again with --vae vavae-imagenet256-f16d32-dinov2.pt --out same folder.",
            err=True,
        )


__all__ = [
    "import_official_command",
    "read_release_file",
    "select_network_state",
    "detect_preset",
    "match_network_keys",
    "check_rope_tables",
    "convert_network",
    "release_config",
    "read_latent_stats",
    "RELEASE_PRESETS",
    "RELEASE_SAMPLING",
]
