"""Generic transformer building blocks of the GMem DiT: embeddings, norms, RoPE, attention, MLPs.

Nothing here knows about snippets or :class:`training.network.model.GMemConfig`; the
network in :mod:`training.network.model` assembles these. Attribute names (``qkv``,
``w12``, ``mlp.0`` ...) are part of the state_dict key layout that the paper
authors' checkpoints load into, so they must not be renamed.

Ideas from facebookresearch/DiT (adaLN, sin-cos tables, timestep embedder) and
hustvl/LightningDiT (RMSNorm, SwiGLU, 2-D axial RoPE); written here.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.network.config import Norm

NormKind = Norm | Literal["rmsnorm", "layernorm"]


#################################################################################
#                          Fixed tables and adaLN                               #
#################################################################################


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin, cos] of ``pos * 10000^(-2k/dim)`` (the MAE / DiT table)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D position table [grid*grid, dim]: first half encodes the column, second the row (MAE
    order)."""
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], axis=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` per sample."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                        Linear, norms and embedders                            #
#################################################################################


class RowLinear(nn.Linear):
    """nn.Linear for per-sample vectors [N, K] that gives each row the same bits whatever N is (eval mode).

    CPU GEMM picks a different kernel (and summation order) for N = 1 than for
    N > 1, so a batch would not equal single runs. One batched 1 x K product per
    row keeps every row on the same kernel; training keeps the fused GEMM.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or x.ndim != 2:
            return super().forward(x)
        n = x.shape[0]
        out = torch.baddbmm(self.bias.expand(n, 1, -1), x.unsqueeze(1), self.weight.t().expand(n, -1, -1))
        return out.squeeze(1)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable weight, computed in fp32 (LightningDiT)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(kind: NormKind, dim: int) -> nn.Module:
    """RMSNorm (LightningDiT, learnable weight) or DiT's affine-free LayerNorm."""
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (raw flow time, no x1000) -> [cos, sin] of 256 frequencies -> MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(RowLinear(freq_dim, hidden), nn.SiLU(), RowLinear(hidden, hidden))

    @staticmethod
    def frequency_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
        """``[cos(t w_k), sin(t w_k)]``, ``w_k = exp(-ln(1e4) k / (dim/2))``: cos first, as the release
        does."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return cast(
            torch.Tensor,
            self.mlp(
                self.frequency_embedding(t, self.freq_dim).to(cast(nn.Linear, self.mlp[0]).weight.dtype)
            ),
        )


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch, flattened row-major (token n = h * W + w)."""

    def __init__(self, in_channels: int, hidden: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.proj(x).flatten(2).transpose(1, 2))


#################################################################################
#                          Attention and feed-forward                           #
#################################################################################


class AxialRoPE(nn.Module):
    """2-D axial rotary embedding: first hd/2 channels rotate by row h, last hd/2 by column w."""

    freqs_cos: torch.Tensor
    freqs_sin: torch.Tensor

    def __init__(self, head_dim: int, grid: int) -> None:
        super().__init__()
        half = head_dim // 2
        k = torch.arange(0, half, 2, dtype=torch.float64)[: half // 2]
        freqs = (10000.0 ** (-k / half)).repeat_interleave(2)  # [hd/2], adjacent pairs share one
        pos = torch.arange(grid, dtype=torch.float64)
        h = pos.repeat_interleave(grid)  # token n = h * W + w
        w = pos.repeat(grid)
        angles = torch.cat([h[:, None] * freqs[None], w[:, None] * freqs[None]], dim=1)  # [T, hd]
        self.register_buffer("freqs_cos", angles.cos().float())
        self.register_buffer("freqs_sin", angles.sin().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x_2k, x_2k+1) -> (x_2k cos - x_2k+1 sin, x_2k+1 cos + x_2k sin)
        pairs = x.unflatten(-1, (-1, 2))  # type: ignore[no-untyped-call]  # torch leaves Tensor.unflatten unannotated
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.freqs_cos.to(x.dtype) + rotated * self.freqs_sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with optional q/k norm and RoPE (applied by the caller's table)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, norm: NormKind = "rmsnorm") -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = make_norm(norm, dim // heads) if qk_norm else nn.Identity()
        self.k_norm = make_norm(norm, dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: AxialRoPE | None) -> torch.Tensor:
        n, t, h = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return cast(torch.Tensor, self.proj(out.transpose(1, 2).reshape(n, t, h)))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: ``w3(silu(x1) * x2)`` with ``[x1, x2] = w12(x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return cast(torch.Tensor, self.w3(F.silu(x1) * x2))


class GeluMLP(nn.Module):
    """DiT/SiT feed-forward: fc1, GELU (tanh), fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.fc2(F.gelu(self.fc1(x), approximate="tanh")))
