"""The model file (CONTRACT.md section 5): network weights in safetensors plus a JSON config.

``__metadata__``: ``format = gmem-model``, ``format_version = 1`` and ``config``,
the JSON of :class:`training.network.config.GMemConfig` plus ``id``, ``normalization``
(how the network's pixel or latent space maps to pixels) and whatever the
writer adds (training summary, bank it was trained with). Readers refuse any
other format or version, naming both.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shared.errors import IncompatibleArtifacts, ModelFileError
from shared.factors import BankMeta
from shared.fileio import atomic_path
from training.latent.autoencoders import load_model_decoder
from training.network.config import SAMPLING_KEYS, GMemConfig, SamplingDefaults
from training.network.model import GMemDiT, count_parameters

FORMAT = "gmem-model"
FORMAT_VERSION = "1"


@dataclass
class LoadedModel:
    """A network ready to sample: eval mode, its config, the file's config JSON and (latent space) decoder."""

    net: GMemDiT
    config: GMemConfig
    meta: dict[str, Any]
    decoder: Any = None
    path: str = ""

    @property
    def id(self) -> str:
        return str(self.meta.get("id", self.config.name))

    @property
    def parameters(self) -> int:
        return count_parameters(self.net)


def config_to_json(config: GMemConfig) -> dict[str, Any]:
    """The config as the model file's flat JSON object (option sets as their strings)."""
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "sampling"}
    data.update({key: getattr(config.sampling, name) for name, key in SAMPLING_KEYS.items()})
    return {k: (v.value if isinstance(v, StrEnum) else copy.deepcopy(v)) for k, v in data.items()}


def normalization(config: GMemConfig) -> dict[str, Any]:
    """How the network's space maps to pixels: the "normalisation" the model file's config records."""
    if config.space == "pixel":
        return {
            "space": "pixel",
            "range": [-1.0, 1.0],
            "encode": "x = pixel / 127.5 - 1",
            "decode": "pixel = clamp(127.5 x + 128, 0, 255)",
        }
    return {
        "space": "latent",
        "encode": "x = (z - latent_mean) / latent_std * latent_multiplier",
        "decode": "z = x * latent_std / latent_multiplier + latent_mean, then the decoder",
        "latent_mean": config.latent_mean,
        "latent_std": config.latent_std,
        "latent_multiplier": config.latent_multiplier,
    }


def config_from_json(data: dict[str, Any]) -> GMemConfig:
    """GMemConfig from the file's config JSON; keys that are not config fields (id, train, ...) are
    ignored."""
    fields = {f.name for f in dataclasses.fields(GMemConfig)} - {"sampling"}
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in fields}
    for key in ("latent_mean", "latent_std"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(float(v) for v in kwargs[key])
    sampling = {name: data[key] for name, key in SAMPLING_KEYS.items() if key in data}
    try:
        return GMemConfig(**kwargs, sampling=SamplingDefaults(**sampling)).validate()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"model config is not a valid GMem network: {exc}") from exc


def save_model(
    path: str | os.PathLike[str],
    net: torch.nn.Module,
    config: GMemConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights + metadata atomically and durably (shared.fileio); ``extra`` goes into the config
    JSON."""
    meta = {
        "id": config.name,
        **config_to_json(config),
        "normalization": normalization(config),
        **(extra or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(
            tensors,
            tmp,
            metadata={
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "config": json.dumps(meta, sort_keys=True),
            },
        )


def read_model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config JSON of a model file, after checking format and version (no weights read)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            md = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{p}: not a readable safetensors model file ({exc})") from exc
    fmt, ver = md.get("format"), md.get("format_version")
    if fmt != FORMAT or ver != FORMAT_VERSION:
        raise ModelFileError(
            f"{p}: format={fmt!r} format_version={ver!r}; this reader knows "
            f"format={FORMAT!r} format_version={FORMAT_VERSION!r}"
        )
    try:
        return cast("dict[str, Any]", json.loads(md["config"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{p}: missing or unreadable 'config' metadata ({exc})") from exc


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Open a model file: check format, build the network from its config, load weights strictly."""
    meta = read_model_meta(path)
    config = config_from_json(meta)
    net = GMemDiT(config)
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        net.load_state_dict(state, strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise ModelFileError(f"{path}: weights do not match the network its config describes: {exc}") from exc
    net.to(device).eval()
    decoder = None
    if config.space == "latent":
        decoder = load_model_decoder(config.decoder, device=device, base_dir=Path(path).parent)
    return LoadedModel(net=net, config=config, meta=meta, decoder=decoder, path=str(path))


def check_compatible(model_meta: GMemConfig | dict[str, Any], bank_meta: BankMeta) -> None:
    """Raise IncompatibleArtifacts when the model's snippet dim or encoder differs from the bank's."""
    cfg = model_meta if isinstance(model_meta, GMemConfig) else config_from_json(model_meta)
    if cfg.conditioning != "snippet":
        return
    problems = []
    if cfg.snippet_dim != bank_meta.feature_dim:
        problems.append(f"snippet dimension: model {cfg.snippet_dim}, bank {bank_meta.feature_dim}")
    if cfg.encoder != bank_meta.encoder:
        problems.append(f"encoder: model {cfg.encoder!r}, bank {bank_meta.encoder!r}")
    if problems:
        raise IncompatibleArtifacts(
            "model and bank do not fit together (" + "; ".join(problems) + "); use the bank built with the "
            "encoder the model was trained on, or train a model on this bank"
        )
