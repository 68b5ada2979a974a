"""The VA-VAE f16d32 encoder, and the whole autoencoder (encoder + decoder) the release tokenises with.

The encoding half of the LDM/VQGAN KL autoencoder (official-gmem-facts.md section 4;
LINs-lab/GMem ``tokenizer/autoencoder.py``): conv_in 3 -> 128, five levels of widths
128, 128, 256, 256, 512 with two residual blocks each, attention in the last level
(resolution 16 at 256 px input), a stride-2 downsample after every level but the last,
the mid block, GroupNorm + swish and conv_out to 2 x 32 channels (mean, log-variance),
then ``quant_conv`` (1x1, 64 -> 64). Parameter names match the release's ``encoder.*``
and ``quant_conv.*`` keys. The decoder half is :class:`training.official.vae.VAEDecoder`.

``encode`` returns the posterior mean; the release samples ``mean + std * eps``
(``posterior.sample()``), which a cache writer can do with its own generator.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import IncompatibleArtifacts
from training.files.statedict import state_dict_problems
from training.official.vae import (
    AttnBlock,
    DecoderConfig,
    ResnetBlock,
    VAEDecoder,
    _Mid,
    _norm,
    decoder_state_from_checkpoint,
)


class Downsample(nn.Module):
    """Pad one pixel right and bottom, then a 3x3 stride-2 conv without padding (LDM's asymmetric
    downsample)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.conv(F.pad(x, (0, 1, 0, 1))))


class _DownLevel(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, downsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)])
        self.attn = nn.ModuleList([AttnBlock(c_out) for _ in range(n_blocks)] if attn else [])
        if downsample:
            self.downsample = Downsample(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return self.downsample(x) if hasattr(self, "downsample") else x


class Encoder(nn.Module):
    """conv_in, down levels finest to coarsest, mid (res, attn, res), norm_out, conv_out to 2 z channels."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.out_ch, cfg.ch, 3, padding=1)
        levels, c_in, res = [], cfg.ch, cfg.resolution
        for level, c_out in enumerate(widths):
            last = level == len(widths) - 1
            levels.append(
                _DownLevel(
                    c_in, c_out, cfg.num_res_blocks, attn=res in cfg.attn_resolutions, downsample=not last
                )
            )
            c_in, res = c_out, res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(c_in)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return cast(torch.Tensor, self.conv_out(F.silu(self.norm_out(self.mid(h)))))


class VAVAE(VAEDecoder):
    """The full f16d32 autoencoder: ``encode`` (posterior mean) and the inherited ``decode``."""

    def __init__(self, cfg: DecoderConfig | None = None) -> None:
        super().__init__(cfg)
        self.encoder = Encoder(self.cfg)
        self.quant_conv = nn.Conv2d(2 * self.cfg.z_channels, 2 * self.cfg.embed_dim, 1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] -> latent means [N, 32, H/16, W/16] (un-normalised)."""
        return self.posterior(x)[0]


def vavae_shapes(cfg: DecoderConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every encoder, quant and decoder tensor (meta device, nothing allocated)."""
    with torch.device("meta"):
        module = VAVAE(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def autoencoder_state_from_checkpoint(
    obj: object, where: str = "VA-VAE checkpoint"
) -> dict[str, torch.Tensor]:
    """``encoder.*``, ``quant_conv.*``, ``post_quant_conv.*`` and ``decoder.*`` of the release's checkpoint.

    Every tensor must be there with its exact shape (the release's loader runs with
    ``strict=False`` and would silently leave random layers); the decoder side is checked
    by :func:`training.official.vae.decoder_state_from_checkpoint` first, so its messages are the same.
    """

    decoder, _ = decoder_state_from_checkpoint(obj, where)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    expected = {k: v for k, v in vavae_shapes().items() if k.startswith(("encoder.", "quant_conv."))}
    picked = {k: v for k, v in state.items() if k.startswith(("encoder.", "quant_conv."))}
    problems = state_dict_problems(picked, expected)
    if problems:
        raise IncompatibleArtifacts(f"{where}: not the VA-VAE f16d32 encoder ({'; '.join(problems)})")
    return {**{k: picked[k].float().contiguous() for k in expected}, **decoder}
