"""What `train --space latent` and `train --init` add to pixel-space training.

- :func:`load_latent_data`: the cache (training/latent/cache.py) as training data:
  latents normalised per channel, ``x = (z - mean) / std * multiplier`` (the release's
  ``img_latent_dataset``; the VA-VAE's shipped statistics when it has them, else the cache's),
  each paired with its own image's snippet (as the release
  trains; the bank is checked to share the encoder and dimension), the flipped copies
  as extra rows when cached (latent, snippet and REPA target of the same variant, unlike
  the release's three independent coin flips), and the REPA targets resampled to the
  network's token grid;
- :func:`latent_config`: a preset placed in the autoencoder's latent space, with the
  cache's statistics and the autoencoder's spec recorded for decoding;
- :func:`init_from_model`: paper section 5.3, fine-tuning a trained network on a new
  dataset with its own bank: the network and its weights are kept, and the snippet
  dimension, encoder and input shape must match.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from shared.errors import IncompatibleArtifacts, InvalidInput
from shared.factors import BankMeta, load_factors
from training.data import TrainData
from training.files.modelfile import config_from_json, read_model_meta
from training.latent.autoencoders import Autoencoder, load_autoencoder
from training.latent.cache import read_cache, read_manifest, tensor_shape
from training.network.config import GMemConfig, preset
from training.repa import REPA_PRESETS, resample_tokens


def latent_stats(manifest: dict[str, Any], ae: Autoencoder) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) the network's space is defined by: the autoencoder's own when it ships
    them (the VA-VAE release's ``latents_stats.pt``, which its networks were trained with), else the
    cache's."""
    if ae.latent_stats is not None:
        return list(ae.latent_stats[0]), list(ae.latent_stats[1])
    return list(manifest["latent_mean"]), list(manifest["latent_std"])


def check_bank(bank_path: str, manifest: dict[str, Any]) -> BankMeta:
    """The bank's metadata, after checking it was made with the cache's encoder and dimension."""
    meta = load_factors(bank_path).meta
    if meta.encoder != manifest["encoder"] or meta.feature_dim != int(manifest["feature_dim"]):
        raise IncompatibleArtifacts(
            f"bank {bank_path} holds {meta.encoder!r} snippets of dimension {meta.feature_dim}; the cache's "
            f"snippets are {manifest['encoder']!r}, dimension {manifest['feature_dim']}: "
            f"build both with one encoder"
        )
    return meta


def load_latent_data(
    cache: str, vae: str, repa: bool, grid: int | None = None, ae: Autoencoder | None = None
) -> tuple[TrainData, dict[str, Any], Autoencoder]:
    """(TrainData, manifest, autoencoder) from a finished cache; ``grid`` is the network's token grid for
    REPA."""

    manifest = read_manifest(cache)
    ae = ae or load_autoencoder(vae)
    if list(manifest["latent_shape"])[0] != ae.latent_channels:
        raise IncompatibleArtifacts(
            f"cache {cache} holds {manifest['latent_shape']} latents; --vae {vae} has "
            f"{ae.latent_channels} latent channels: cache with this autoencoder"
        )
    if repa and not manifest.get("repa"):
        raise InvalidInput(
            f"--repa needs the encoder's patch features: cache {cache} was written with --no-repa"
        )
    keys = ["latents", "snippets"] + (["features"] if repa else [])
    if manifest.get("flip"):
        keys += [k + "_flip" for k in keys]
    t = read_cache(cache, tuple(keys))
    stats = latent_stats(manifest, ae)
    mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
    both = ("", "_flip") if manifest.get("flip") else ("",)
    x = torch.cat([(t["latents" + s] - mean) / std for s in both])
    cond = torch.cat([t["snippets" + s] for s in both])
    target = None
    if repa:
        target = torch.cat([t["features" + s].float() for s in both])
        if grid is not None:
            target = resample_tokens(target, grid)
    n = int(manifest["n"])
    preview = np.linspace(0, n - 1, 16).round().astype(int).tolist()
    data = TrainData(
        x=x,
        cond=cond,
        source=str(manifest["dataset"]),
        preview_ids=preview,
        repa=target,
        decode=lambda z: ae.decode(z * std.to(z.device) + mean.to(z.device)),
        # The cache holds f(x)/|f(x)| of every image as encoded (training/latent/cache.py), not bank rows.
        snippets={"kind": "exact", "encoder": str(manifest["encoder"]), "from": "latent cache"},
    )
    return data, manifest, ae


def latent_config(
    preset_name: str,
    manifest: dict[str, Any],
    ae: Autoencoder,
    bank_meta: BankMeta | None,
    repa_dim: int = 0,
    **overrides: Any,
) -> GMemConfig:
    """Preset in the autoencoder's latent space: shape and statistics from the cache, decoder spec
    recorded."""
    c, h, _ = manifest["latent_shape"]
    set_ = {k: v for k, v in overrides.items() if v is not None}
    mean, std = latent_stats(manifest, ae)
    set_.update(
        space="latent",
        input_size=int(h),
        in_channels=int(c),
        latent_multiplier=1.0,
        latent_mean=tuple(float(v) for v in mean),
        latent_std=tuple(float(v) for v in std),
        decoder=ae.spec(),
        repa_dim=repa_dim,
    )
    if bank_meta is not None:
        set_.update(snippet_dim=bank_meta.feature_dim, encoder=bank_meta.encoder)
    try:
        return preset(preset_name, **set_)
    except ValueError as exc:
        raise InvalidInput(
            f"preset {preset_name!r} does not fit latents {manifest['latent_shape']}: {exc}"
        ) from exc


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, StrEnum) else value


def init_from_model(path: str, cfg: GMemConfig) -> tuple[GMemConfig, dict[str, torch.Tensor]]:
    """(config to train, weights) for ``--init MODEL``: the model's network on this run's data and bank.

    Shape, snippet dimension and encoder must match; the run's data-space fields
    (latent statistics, decoder, REPA projector when the model has one) are taken from the run.
    """
    old = config_from_json(read_model_meta(path))
    # str() first: the options are StrEnums, whose repr would show the class, not the value.
    problems = [
        f"{k}: model {_plain(getattr(old, k))!r}, this run {_plain(getattr(cfg, k))!r}"
        for k in ("space", "input_size", "in_channels", "snippet_dim", "encoder", "conditioning")
        if getattr(old, k) != getattr(cfg, k)
    ]
    if problems:
        raise IncompatibleArtifacts(
            f"--init {path} does not fit this run ({'; '.join(problems)}); fine-tuning keeps "
            "the network, so the new bank must use the same encoder and the data the same shape"
        )
    keep = {f.name for f in dataclasses.fields(GMemConfig)} - {
        "latent_mean",
        "latent_std",
        "latent_multiplier",
        "decoder",
        "default_sampler",
        "default_steps",
    }
    merged = dataclasses.replace(cfg, **{k: getattr(old, k) for k in keep})
    if cfg.repa_dim and not old.repa_dim:
        raise InvalidInput(f"--init {path} has no REPA projector; fine-tune it without --repa")
    return merged, load_file(str(path))


def prepare_latent(
    space: str,
    vae: str | None,
    cache: Any,
    bank: Any,
    preset_name: str,
    repa: str | None,
    repa_weight: float | None,
    repa_depth: int | None,
    fields: dict[str, Any],
) -> tuple[TrainData, BankMeta | None, GMemConfig, float]:
    """(data, bank meta, config, REPA lambda) of a `train --space latent` run."""

    if space != "latent":
        raise InvalidInput("--repa needs --space latent: the REPA targets come from the cache")
    if vae is None or cache is None:
        raise InvalidInput(
            "--space latent needs --vae FILE_OR_DIR and --cache DIR (python -m training cache)"
        )
    if fields.get("conditioning", "snippet") == "snippet" and bank is None:
        raise InvalidInput("snippet conditioning needs --bank FILE (built with the cache's encoder)")
    weight, depth = 0.0, None
    if repa is not None:
        if repa not in REPA_PRESETS:
            raise InvalidInput(f"unknown --repa preset {repa!r}; choose one of {', '.join(REPA_PRESETS)}")
        chosen = REPA_PRESETS[repa]
        weight, depth = chosen.weight, chosen.encoder_depth
    if repa_weight is not None:
        weight = repa_weight
    if repa_depth is not None:
        depth = repa_depth
    if weight < 0:
        raise InvalidInput(f"--repa-weight must be >= 0; got {weight}")
    manifest = read_manifest(cache)
    if repa is not None and REPA_PRESETS[repa].encoder != manifest["encoder"]:
        raise IncompatibleArtifacts(
            f"REPA preset {repa!r} aligns to {REPA_PRESETS[repa].encoder!r}; the cache's "
            f"features are {manifest['encoder']!r} (use the preset of that encoder)"
        )
    bank_meta = check_bank(str(bank), manifest) if bank is not None else None
    ae = load_autoencoder(vae)
    use_repa = weight > 0
    overrides = dict(fields)
    if depth is not None:
        overrides["encoder_depth"] = depth
    repa_dim = 0
    if use_repa:
        repa_dim = int(tensor_shape(cache, "features")[-1])
    cfg = latent_config(preset_name, manifest, ae, bank_meta, repa_dim=repa_dim, **overrides)
    if use_repa and not 1 <= cfg.encoder_depth <= cfg.depth:
        raise InvalidInput(
            f"--repa-depth {cfg.encoder_depth} must be between 1 and the network's {cfg.depth} blocks"
        )
    data, _, _ = load_latent_data(str(cache), vae, use_repa, grid=cfg.grid_size, ae=ae)
    return data, bank_meta, cfg, weight
