"""One small interface over every autoencoder latent GMem trains and samples through.

:class:`Autoencoder` has ``encode(images) -> z`` and ``decode(z) -> images`` (images
NCHW in [-1, 1], ``z`` the autoencoder's own un-normalised latent), its sizes, and
``scaling_factor`` / ``shift_factor`` (diffusers' convention, 1 and 0 where the
autoencoder has none). The per-channel mean/std that GMem normalises with live in
the cache and the model file (``x = (z - mean) / std * multiplier``); the VA-VAE
file also carries the release's statistics.

``load_autoencoder(spec)`` takes what ``--vae`` takes and what a model file's
``decoder`` field records (``{"kind", "weights"}``):

- a ``gmem-vae`` safetensors file: the embedded tiny VAE (``kind = gmem/tiny-vae``)
  or the VA-VAE f16d32 converted by ``import-official --vae`` (``kind = vavae-f16d32``,
  encoder + decoder, optionally with ``latent_mean`` / ``latent_std``);
- a decoder-only VA-VAE file (``format = gmem-vae-decoder``): decode only;
- a local diffusers ``AutoencoderKL`` folder (``config.json`` + weights), loaded with
  ``local_files_only=True``: nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shared.errors import BankFileError, IncompatibleArtifacts
from shared.fileio import atomic_path
from training.files.statedict import state_dict_problems
from training.latent import vae_tiny
from training.latent.vavae import VAVAE, vavae_shapes
from training.official import vae
from training.official.vae import load_decoder

DIFFUSERS_KIND = "diffusers-autoencoderkl"
VAVAE_KIND = "vavae-f16d32"


@dataclass
class Autoencoder:
    """encode/decode between [-1, 1] images and latents, plus what the model file records about it."""

    kind: str
    module: torch.nn.Module
    image_channels: int
    latent_channels: int
    downsample: int
    path: str
    encode_fn: Callable[[torch.Tensor], torch.Tensor] | None
    decode_fn: Callable[[torch.Tensor], torch.Tensor]
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    latent_stats: tuple[list[float], list[float]] | None = None  # shipped with the autoencoder (VA-VAE)
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] -> latents [N, c, H/f, W/f] (posterior mean, un-normalised)."""
        if self.encode_fn is None:
            raise IncompatibleArtifacts(
                f"{self.path} holds only a decoder; encoding needs the full autoencoder "
                "(for VA-VAE: `python -m training import-official --vae ...` writes vae.safetensors)"
            )
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise IncompatibleArtifacts(
                f"{self.kind} encodes images [N, {self.image_channels}, H, W]; got {list(images.shape)}"
            )
        return self.encode_fn(images.to(self.device, torch.float32)).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (un-normalised) -> images [N, C, H, W], nominally in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise IncompatibleArtifacts(
                f"{self.kind} decodes latents [N, {self.latent_channels}, h, w]; got {list(z.shape)}"
            )
        return self.decode_fn(z.to(self.device, torch.float32)).float()

    __call__ = decode  # training.flow.generate.decode calls model.decoder(z)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> Autoencoder:
        self.module.to(device)
        return self

    def spec(self) -> dict[str, Any]:
        """What a model file's ``decoder`` field records: kind, absolute weights path, pixel sizes."""
        return {
            "kind": self.kind,
            "weights": str(Path(self.path).resolve()),
            "scale": self.downsample,
            "out_channels": self.image_channels,
            "latent_channels": self.latent_channels,
        }


def _read_meta(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise BankFileError(f"{path}: not a readable safetensors autoencoder file ({exc})") from exc


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _tiny(path: Path, meta: dict[str, str]) -> Autoencoder:
    tensors = _read_tensors(path)
    try:
        vae = vae_tiny.build_tiny_vae(tensors, meta)
    except (RuntimeError, TypeError) as exc:
        raise IncompatibleArtifacts(
            f"{path}: weights do not fit the tiny VAE its metadata describes ({exc})"
        ) from exc
    return Autoencoder(
        vae_tiny.KIND,
        vae,
        vae.cfg.image_channels,
        vae.cfg.latent_channels,
        vae.cfg.downsample,
        str(path),
        vae.encode,
        vae.decode,
        info={k: v for k, v in meta.items() if k != "arch"},
    )


def _vavae(path: Path, meta: dict[str, str]) -> Autoencoder:

    tensors = _read_tensors(path)
    stats = None
    if "latent_mean" in tensors and "latent_std" in tensors:
        stats = (
            tensors.pop("latent_mean").double().reshape(-1).tolist(),
            tensors.pop("latent_std").double().reshape(-1).tolist(),
        )
    problems = state_dict_problems(tensors, vavae_shapes())
    if problems:
        raise IncompatibleArtifacts(f"{path}: not a VA-VAE f16d32 autoencoder ({'; '.join(problems)})")
    with torch.device("meta"):
        module = VAVAE()
    module.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    module.eval().requires_grad_(False)
    return Autoencoder(
        VAVAE_KIND, module, 3, 32, 16, str(path), module.encode, module.decode, latent_stats=stats
    )


def _vavae_decoder_only(path: Path) -> Autoencoder:

    module = load_decoder(path)
    return Autoencoder(VAVAE_KIND, module, 3, 32, 16, str(path), None, module.decode)


def _diffusers(folder: Path) -> Autoencoder:
    # diffusers is imported only here: it is needed for foreign autoencoders alone and takes seconds
    # to import.
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)  # type: ignore[no-untyped-call]  # unannotated in diffusers
    except (OSError, ValueError) as exc:
        raise BankFileError(f"{folder}: not a loadable diffusers AutoencoderKL folder ({exc})") from exc
    vae.eval().requires_grad_(False)
    cfg = vae.config
    down = 2 ** (len(cfg.block_out_channels) - 1)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, vae.encode(x).latent_dist.mean)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, vae.decode(z).sample)

    return Autoencoder(
        DIFFUSERS_KIND,
        vae,
        int(cfg.in_channels),
        int(cfg.latent_channels),
        down,
        str(folder),
        encode,
        decode,
        scaling_factor=float(cfg.scaling_factor or 1.0),
        shift_factor=float(getattr(cfg, "shift_factor", None) or 0.0),
    )


def resolve(
    spec: str | os.PathLike[str] | Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The file or folder a ``--vae`` value or a model file's decoder spec names.

    A relative path is taken relative to ``base_dir`` (the model file's folder); an absolute
    path that no longer exists falls back to the same name in ``base_dir``.
    """
    if isinstance(spec, Mapping):
        if not spec.get("weights"):
            raise IncompatibleArtifacts(f"the model's decoder spec {dict(spec)} names no weights file")
        spec = spec["weights"]
    path = Path(cast("str | os.PathLike[str]", spec))
    if base_dir is not None and not path.is_absolute():
        return Path(base_dir) / path
    if base_dir is not None and not path.exists() and (Path(base_dir) / path.name).exists():
        return Path(base_dir) / path.name
    return path


def load_autoencoder(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    device: str | torch.device = "cpu",
    base_dir: str | os.PathLike[str] | None = None,
) -> Autoencoder:
    """Open a tiny-VAE file, a converted VA-VAE (full or decoder-only) or a local diffusers folder."""
    path = resolve(spec, base_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BankFileError(
                f"{path}: a folder given as --vae must be a diffusers AutoencoderKL "
                "(config.json + weights, as written by save_pretrained)"
            )
        return _diffusers(path).to(device)
    if not path.is_file():
        raise BankFileError(f"{path}: no such autoencoder file or folder")
    meta = _read_meta(path)
    fmt, kind = meta.get("format"), meta.get("kind")
    if fmt == vae_tiny.FORMAT and meta.get("format_version") == vae_tiny.FORMAT_VERSION:
        if kind == vae_tiny.KIND:
            return _tiny(path, meta).to(device)
        if kind == VAVAE_KIND:
            return _vavae(path, meta).to(device)
        raise IncompatibleArtifacts(
            f"{path}: gmem-vae kind {kind!r} is unknown; known: {vae_tiny.KIND}, {VAVAE_KIND}"
        )
    if fmt == "gmem-vae-decoder":
        return _vavae_decoder_only(path).to(device)
    raise IncompatibleArtifacts(
        f"{path}: format={fmt!r} kind={kind!r} is not an autoencoder this reader knows "
        f"(format 'gmem-vae' version {vae_tiny.FORMAT_VERSION}, or a diffusers folder)"
    )


def save_vavae(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """The converted VA-VAE (encoder + decoder, and the release's latent mean/std when given), atomically."""

    tensors = {k: v.float().contiguous() for k, v in state.items()}
    if stats is not None:
        tensors["latent_mean"] = stats[0].float().reshape(-1).contiguous()
        tensors["latent_std"] = stats[1].float().reshape(-1).contiguous()
    meta = {
        "format": vae_tiny.FORMAT,
        "format_version": vae_tiny.FORMAT_VERSION,
        "kind": VAVAE_KIND,
        "source": "hustvl/vavae-imagenet256-f16d32-dinov2",
        "arch": json.dumps({"ch_mult": [1, 1, 2, 2, 4]}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_model_decoder(
    spec: Mapping[str, Any] | None,
    device: str | torch.device = "cpu",
    base_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The decoder a latent model file names: the release's decoder-only VA-VAE as before, else an
    Autoencoder."""
    if spec is None:
        raise IncompatibleArtifacts(
            "this latent-space model names no decoder; its config needs decoder = {'kind', 'weights'}"
        )
    kind = spec.get("kind", vae.KIND)
    if kind == vae.KIND and spec.get("weights") and _is_decoder_only(resolve(spec, base_dir)):
        return vae.load_decoder(spec, device=device, base_dir=base_dir)
    if kind not in (vae_tiny.KIND, VAVAE_KIND, DIFFUSERS_KIND):
        raise IncompatibleArtifacts(
            f"decoder kind {kind!r} is not supported; known: {vae_tiny.KIND}, {VAVAE_KIND}, {DIFFUSERS_KIND}"
        )
    return load_autoencoder(spec, device=device, base_dir=base_dir)


def _is_decoder_only(path: Path) -> bool:
    return path.is_file() and _read_meta(path).get("format") == "gmem-vae-decoder"
