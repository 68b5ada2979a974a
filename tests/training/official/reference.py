"""Plain-torch re-computation of the release network's forward pass, straight from a state dict.

Written from LINs-lab/GMem ``models/lightningdit.py`` without using training.network.model, so a
test can hold our network against a second, independent reading of the release:
functional ops only, RoPE as complex multiplication, attention as an explicit
softmax, adaLN chunks named in the release's order.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def linear(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def rmsnorm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x / rms(x) * weight, computed in float32."""
    xf = x.float()
    return (xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def timestep_embedding(t: Tensor, dim: int = 256) -> Tensor:
    """[cos, sin] (cos first) of t * exp(-ln(1e4) k / (dim/2)); t is the raw flow time, no x1000."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    freqs = torch.exp(-math.log(10000.0) * k / (dim // 2))
    args = t.double()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1).float()


def rope_complex(x: Tensor, grid: int = 16) -> Tensor:
    """Rotate (x_2k, x_2k+1) as the complex number x_2k + i x_2k+1 by angle pos * 10000^(-2k/(hd/2)).

    Channels [0, hd/2) use the token's row, [hd/2, hd) its column; token n = row * grid + col.
    """
    b, heads, n, hd = x.shape
    quarter = hd // 4
    omega = 10000.0 ** (-2.0 * torch.arange(quarter, dtype=torch.float64) / (hd // 2))
    rows = torch.arange(n) // grid
    cols = torch.arange(n) % grid
    theta = torch.cat([rows[:, None] * omega[None], cols[:, None] * omega[None]], dim=1)  # [n, hd/2 pairs]
    rot = torch.polar(torch.ones_like(theta), theta)
    z = torch.view_as_complex(x.double().reshape(b, heads, n, hd // 2, 2).contiguous())
    return torch.view_as_real(z * rot).reshape(b, heads, n, hd).to(x.dtype)


def attention(x: Tensor, sd: dict[str, Tensor], p: str, heads: int) -> Tensor:
    b, n, h = x.shape
    hd = h // heads
    qkv = linear(x, sd, p + "qkv").reshape(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, heads, n, hd]
    q, k = rope_complex(q), rope_complex(k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, h)
    return linear(out, sd, p + "proj")


def swiglu(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    hidden = sd[p + "w3.weight"].shape[1]
    x12 = linear(x, sd, p + "w12")
    x1, x2 = x12[..., :hidden], x12[..., hidden:]
    return linear(torch.nn.functional.silu(x1) * x2, sd, p + "w3")


def block(x: Tensor, cond: Tensor, sd: dict[str, Tensor], i: int, heads: int) -> Tensor:
    """One transformer block: adaLN chunks (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
    gate_mlp)."""
    p = f"blocks.{i}."
    mod = linear(torch.nn.functional.silu(cond), sd, p + "adaLN_modulation.1")
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (m[:, None] for m in mod.chunk(6, dim=1))
    h = rmsnorm(x, sd[p + "norm1.weight"]) * (1 + scale_msa) + shift_msa
    x = x + gate_msa * attention(h, sd, p + "attn.", heads)
    h = rmsnorm(x, sd[p + "norm2.weight"]) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * swiglu(h, sd, p + "mlp.")


def embed(x: Tensor, t: Tensor, c: Tensor, sd: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Tokens (1x1 patch conv + stored pos_embed) and the condition t_emb + S-Adapter(c)."""
    w = sd["x_embedder.proj.weight"]
    tokens = x.flatten(2).transpose(1, 2) @ w.reshape(w.shape[0], -1).T + sd["x_embedder.proj.bias"]
    tokens = tokens + sd["pos_embed"]
    temb = linear(
        torch.nn.functional.silu(linear(timestep_embedding(t), sd, "t_embedder.mlp.0")),
        sd,
        "t_embedder.mlp.2",
    )
    return tokens, temb + linear(c, sd, "condition_projection.linear")


def final_layer(x: Tensor, cond: Tensor, sd: dict[str, Tensor], channels: int = 32) -> Tensor:
    """RMSNorm, adaLN (shift, scale), linear, then unpatchify p=1 to [N, C, 16, 16]."""
    mod = linear(torch.nn.functional.silu(cond), sd, "final_layer.adaLN_modulation.1")
    shift, scale = mod[:, None, : mod.shape[1] // 2], mod[:, None, mod.shape[1] // 2 :]
    h = rmsnorm(x, sd["final_layer.norm_final.weight"]) * (1 + scale) + shift
    out = linear(h, sd, "final_layer.linear")  # [N, 256, C]
    side = int(math.isqrt(out.shape[1]))
    return out.reshape(out.shape[0], side, side, channels).permute(0, 3, 1, 2)


def forward(sd: dict[str, Tensor], x: Tensor, t: Tensor, c: Tensor, heads: int) -> Tensor:
    """The release's eval-mode velocity v(x_t, t, c) for x [N, 32, 16, 16], t [N] in [0, 1], c [N, 768]."""
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    tokens, cond = embed(x, t, c, sd)
    for i in range(depth):
        tokens = block(tokens, cond, sd, i, heads)
    return final_layer(tokens, cond, sd)
