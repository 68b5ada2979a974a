"""The VA-VAE f16d32 decoder: latents [N, 32, 16, 16] -> images [N, 3, 256, 256] in [-1, 1].

This is the decoding half of the KL autoencoder the paper authors' GMem release uses
as its tokenizer (LINs-lab/GMem ``tokenizer/vavae.py``, ``tokenizer/autoencoder.py``): the LDM/VQGAN
layout with
ch=128, ch_mult=(1, 1, 2, 2, 4), two residual blocks per level (three on the way
up), attention at resolution 16 (the middle block plus three blocks in ``up.4``),
GroupNorm(32, eps 1e-6) and swish. Parameter names match the release's
``post_quant_conv.*`` and ``decoder.*`` keys, so its weights load without renaming.

The release maps the decoder output to pixels with ``clamp(127.5 * x + 128, 0, 255)``
then a truncating uint8 cast (not the usual ``(x + 1) * 127.5`` with rounding);
``to_uint8`` reproduces that so imported models give the authors' pixel values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from shared.errors import IncompatibleArtifacts, VAEFileError
from shared.fileio import atomic_path
from training.files.statedict import state_dict_problems

KIND = "vavae-f16d32"


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the KL-autoencoder decoder (defaults: VA-VAE f16d32)."""

    z_channels: int = 32
    embed_dim: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    out_ch: int = 3

    @property
    def latent_resolution(self) -> int:
        return cast(int, self.resolution // 2 ** (len(self.ch_mult) - 1))


# The latent decoders a model file can name (its config's ``decoder.kind``), by kind.
DECODERS: dict[str, DecoderConfig] = {KIND: DecoderConfig()}


def decoder_config(kind: str) -> DecoderConfig:
    """The sizes of decoder ``kind``; a kind this reader has no decoder for is refused."""
    if kind not in DECODERS:
        raise IncompatibleArtifacts(
            f"decoder kind {kind!r} is not supported; the decoders here are {', '.join(map(repr, DECODERS))}"
        )
    return DECODERS[kind]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two (GroupNorm, swish, 3x3 conv) stages plus a 1x1 shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        # The release names the width-changing shortcut `nin_shortcut` (a 1x1 conv).
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return cast(torch.Tensor, skip + h)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q, k, v and output projection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        # [N, C, H, W] -> [N, 1, HW, C]: one head over all H*W positions, scale C^-1/2.
        q, k, v = (m(y).reshape(n, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return cast(torch.Tensor, x + self.proj_out(out.transpose(2, 3).reshape(n, c, h, w)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class _Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.block_2(self.attn_1(self.block_1(x))))


class _UpLevel(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)])
        self.attn = nn.ModuleList([AttnBlock(c_out) for _ in range(n_blocks)] if attn else [])
        if upsample:
            self.upsample = Upsample(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class Decoder(nn.Module):
    """The LDM decoder: conv_in, mid (res, attn, res), up levels from coarsest to finest, norm_out,
    conv_out."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = _Mid(widths[-1])
        levels: list[nn.Module] = []
        res = cfg.latent_resolution
        c_in = widths[-1]
        # Built coarsest-first but stored by level index, as the release does (up.4 is 16x16).
        for level in reversed(range(len(widths))):
            levels.insert(
                0,
                _UpLevel(
                    c_in,
                    widths[level],
                    cfg.num_res_blocks + 1,
                    attn=res in cfg.attn_resolutions,
                    upsample=level != 0,
                ),
            )
            c_in = widths[level]
            res = res * 2 if level != 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return cast(torch.Tensor, self.conv_out(F.silu(self.norm_out(h))))


class VAEDecoder(nn.Module):
    """``decode(z) = decoder(post_quant_conv(z))``: the release's ``vae.decode``."""

    def __init__(self, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DecoderConfig()
        self.post_quant_conv = nn.Conv2d(self.cfg.embed_dim, self.cfg.z_channels, 1)
        self.decoder = Decoder(self.cfg)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, 32, 16, 16] (un-normalised VAE space) -> images [N, 3, 256, 256], nominally in [-1,
        1]."""
        expect = (self.cfg.embed_dim, self.cfg.latent_resolution, self.cfg.latent_resolution)
        if z.ndim != 4 or tuple(z.shape[1:]) != expect:
            raise IncompatibleArtifacts(
                f"VA-VAE decoder takes latents [N, {expect[0]}, {expect[1]}, {expect[2]}], "
                f"got {list(z.shape)}"
            )
        return cast(torch.Tensor, self.decoder(self.post_quant_conv(z)))

    forward = decode


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW floats -> uint8 NHWC exactly as the release: clamp(127.5 x + 128, 0, 255), truncated."""
    return (127.5 * images + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decoder_shapes(cfg: DecoderConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every decoder tensor, built on the meta device (no memory allocated)."""
    with torch.device("meta"):
        module = VAEDecoder(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def resolve_decoder_path(
    spec: str | os.PathLike[str] | Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The weights file a model config's decoder spec names.

    ``spec`` is a path or ``{"kind": "vavae-f16d32", "weights": PATH}``. A relative path
    is taken relative to ``base_dir`` (the model file's folder) when given; an absolute
    path that no longer exists falls back to the same file name in ``base_dir``, so an
    imported folder keeps working after it is moved.
    """
    if isinstance(spec, Mapping):
        kind = spec.get("kind", KIND)
        if kind != KIND:
            raise IncompatibleArtifacts(f"decoder kind {kind!r} is not supported; this decoder is {KIND!r}")
        if not spec.get("weights"):
            raise IncompatibleArtifacts(
                "the model's decoder spec names no weights file; re-run "
                "`python -m training import-official --vae ... --out DIR`"
            )
        spec = str(spec["weights"])
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        return Path(base_dir) / path
    if base_dir is not None and not path.exists() and (Path(base_dir) / path.name).exists():
        return Path(base_dir) / path.name
    return path


def load_decoder(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    device: str | torch.device = "cpu",
    base_dir: str | os.PathLike[str] | None = None,
) -> VAEDecoder:
    """Load a decoder written by ``import-official`` (safetensors of post_quant_conv.* and decoder.*).

    ``spec``: a path or the model config's decoder dict (see ``resolve_decoder_path``).
    """
    path = resolve_decoder_path(spec, base_dir)
    try:
        state = load_file(str(path), device="cpu")
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise VAEFileError(
            f"{path}: cannot read the VA-VAE decoder file ({exc}); "
            "create it with `python -m training import-official --vae ... --out DIR`"
        ) from exc
    with torch.device("meta"):
        module = VAEDecoder()
    problems = state_dict_problems(state, {k: v.shape for k, v in module.state_dict().items()})
    if problems:
        raise IncompatibleArtifacts(f"{path}: not a VA-VAE f16d32 decoder ({'; '.join(problems)})")
    module.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return module.to(device).eval()


# ----------------------------------------------------------------------------- release checkpoint import

# Everything else a VA-VAE Lightning checkpoint carries: encoder side, training losses, the DINOv2
# it was aligned to and the alignment conv. Decoding needs none of it.
_NOT_DECODER = ("encoder.", "quant_conv.", "loss.", "foundation_model.", "linear_proj.")


def decoder_state_from_checkpoint(
    obj: object, where: str = "VA-VAE checkpoint"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Pick ``post_quant_conv.*`` and ``decoder.*`` out of the release's ``{"state_dict": ...}``.

    Every decoder tensor must be present with its exact shape; unknown ``decoder.*``
    keys are refused by name (the release's own loader uses ``strict=False`` and would
    silently run with random layers). Returns (decoder state as float32, ignored key names).
    """
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IncompatibleArtifacts(
            f"{where}: expected a Lightning checkpoint {{'state_dict': {{name: tensor}}}} "
            "or a bare state dict of tensors"
        )
    expected = decoder_shapes()
    picked = {k: v for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
    ignored = sorted(k for k in state if k not in picked)
    problems = state_dict_problems(picked, expected)
    if problems:
        raise IncompatibleArtifacts(
            f"{where}: not the VA-VAE f16d32 decoder ({'; '.join(problems)}). "
            "Use vavae-imagenet256-f16d32-dinov2.pt from hustvl/vavae-imagenet256-f16d32-dinov2"
        )
    strays = [k for k in ignored if not k.startswith(_NOT_DECODER)]
    if strays:
        raise IncompatibleArtifacts(
            f"{where}: unexpected keys outside the autoencoder: {', '.join(strays[:10])}"
        )
    return {k: picked[k].float().contiguous() for k in expected}, ignored


def save_decoder(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write decoder weights to safetensors atomically (temp file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        save_file(
            state, str(tmp), metadata={"format": "gmem-vae-decoder", "format_version": "1", "kind": KIND}
        )
