"""Plain-torch re-computation of the VA-VAE f16d32 encoder, straight from a state dict.

Written from official-gmem-facts.md section 4 (LDM/VQGAN KL layout: ch 128, widths
128, 128, 256, 256, 512, two residual blocks per level, attention at 16 px, GroupNorm(32,
eps 1e-6), swish; downsample = zero pad right/bottom + 3x3 stride-2 conv; conv_out to
2 x 32; quant_conv 1x1) without training.official.vae or training.latent: functional ops and an
explicit softmax attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
MULT = (1, 1, 2, 2, 4)


def conv(x: Tensor, sd: dict[str, Tensor], name: str, stride: int = 1, padding: int = 1) -> Tensor:
    return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], stride=stride, padding=padding)


def gn(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.group_norm(x, 32, sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def resnet(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    h = conv(swish(gn(x, sd, p + "norm1")), sd, p + "conv1")
    h = conv(swish(gn(h, sd, p + "norm2")), sd, p + "conv2")
    if p + "nin_shortcut.weight" in sd:
        x = conv(x, sd, p + "nin_shortcut", padding=0)
    return x + h


def attn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    n, c, hh, ww = x.shape
    y = gn(x, sd, p + "norm")
    q, k, v = (conv(y, sd, p + m, padding=0).reshape(n, c, hh * ww) for m in ("q", "k", "v"))
    w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / c**0.5, dim=-1)  # [n, query, key]
    out = torch.einsum("nij,ncj->nci", w, v).reshape(n, c, hh, ww)
    return x + conv(out, sd, p + "proj_out", padding=0)


def encode_mean(sd: dict[str, Tensor], x: Tensor, resolution: int = 256) -> Tensor:
    """Posterior mean [N, 32, H/16, W/16] of images [N, 3, H, W] (``resolution`` decides where attention
    is)."""
    h = conv(x, sd, "encoder.conv_in")
    res = resolution
    for level in range(len(MULT)):
        for b in range(2):
            h = resnet(h, sd, f"encoder.down.{level}.block.{b}.")
            if res == 16:
                h = attn(h, sd, f"encoder.down.{level}.attn.{b}.")
        if level != len(MULT) - 1:
            h = conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{level}.downsample.conv", stride=2, padding=0)
            res //= 2
    h = resnet(h, sd, "encoder.mid.block_1.")
    h = attn(h, sd, "encoder.mid.attn_1.")
    h = resnet(h, sd, "encoder.mid.block_2.")
    h = conv(swish(gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")
    moments = conv(h, sd, "quant_conv", padding=0)
    return moments[:, :32]
