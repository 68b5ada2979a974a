"""The GMem denoising network: a DiT/SiT/LightningDiT-style transformer with the S-Adapter.

``cond = t_emb + adapter(mask(snippet))`` replaces the class embedding of DiT
and drives every block through adaLN. With the LightningDiT options (RMSNorm,
SwiGLU, RoPE, linear adapter, REPA projector) the module names and shapes match
the paper authors' release key for key (LINs-lab/GMem, ``models/lightningdit.py``), so
their checkpoints load straight into :class:`GMemDiT`. The generic pieces
(norms, RoPE, attention, MLPs, embedders) live in :mod:`training.network.layers`.

Ideas from facebookresearch/DiT (adaLN-zero, class baseline), hustvl/LightningDiT
(REPA projector layout) and LINs-lab/GMem (S-Adapter); written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from training.network.config import AdapterKind, Conditioning, GMemConfig, MaskStrategy, Mlp
from training.network.layers import (
    Attention,
    AxialRoPE,
    GeluMLP,
    PatchEmbed,
    RowLinear,
    SwiGLU,
    TimestepEmbedder,
    make_norm,
    modulate,
    sincos_2d,
)

#################################################################################
#                    Conditioning: S-Adapter and class baseline                 #
#################################################################################


def _mask_zero(c: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero mask: masked dims set to 0, the rest scaled by 1/(1-p), exactly the release's ``nn.Dropout(p)``
    (LINs-lab/GMem ``models/feature_embedder.py``)."""
    return F.dropout(c, p=ratio, training=True)


def _mask_random(c: torch.Tensor, ratio: float) -> torch.Tensor:
    """Random mask: masked dims replaced by random values, N(0, 1/d) (the spread of a random unit vector's
    entries), so a masked snippet keeps its norm in expectation."""
    masked = torch.rand_like(c) < ratio
    return torch.where(masked, torch.randn_like(c) / math.sqrt(c.shape[-1]), c)


def _mask_noise(c: torch.Tensor, ratio: float) -> torch.Tensor:
    """Noise mask: Gaussian noise on every dim, of norm about ``ratio`` relative to the unit snippet, then
    re-normalised (no dim is removed; the snippet is blurred on the sphere)."""
    noisy = c + ratio * torch.randn_like(c) / math.sqrt(c.shape[-1])
    return cast(torch.Tensor, noisy / noisy.norm(dim=-1, keepdim=True).clamp_min(1e-12))


# Paper appendix G.5's three strategies; ``MaskStrategy`` names them. p = the config's mask_ratio.
_MASKS: dict[MaskStrategy, Callable[[torch.Tensor, float], torch.Tensor]] = {
    MaskStrategy.zero: _mask_zero,
    MaskStrategy.random: _mask_random,
    MaskStrategy.noise: _mask_noise,
}
_ADAPTERS: dict[AdapterKind, Callable[[int, int], nn.Module]] = {
    AdapterKind.linear: lambda d, h: RowLinear(d, h),
    AdapterKind.mlp: lambda d, h: nn.Sequential(
        RowLinear(d, h), nn.SiLU(), RowLinear(h, h), nn.SiLU(), RowLinear(h, h)
    ),
}
_MLPS: dict[Mlp, Callable[[int, float], nn.Module]] = {
    Mlp.swiglu: lambda h, ratio: SwiGLU(h, int(2 / 3 * ratio * h)),
    Mlp.gelu: lambda h, ratio: GeluMLP(h, int(ratio * h)),
}


class SnippetAdapter(nn.Module):
    """S-Adapter: masks the unit-norm snippet per feature dimension (train only), then projects it to H.

    Mask strategies: the ``_MASKS`` table (paper appendix G.5: zero, random and
    noise mask). ``p_uncond`` > 0 also replaces whole snippets by the zero vector
    with that probability, which trains the CFG null. Nothing is masked in eval mode.
    """

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        self.ratio, self.strategy, d, h = cfg.mask_ratio, cfg.mask_strategy, cfg.snippet_dim, cfg.hidden_size
        self.p_uncond = cfg.p_uncond
        # The attribute name is part of the state-dict keys (the release's ``condition_projection.linear``).
        self.kind = cfg.adapter
        self.add_module(cfg.adapter.value, _ADAPTERS[cfg.adapter](d, h))

    def mask(self, c: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return c
        if self.ratio > 0:
            c = _MASKS[self.strategy](c, self.ratio)
        if self.p_uncond > 0:
            keep = torch.rand(c.shape[0], 1, device=c.device) >= self.p_uncond
            c = c * keep.to(c.dtype)
        return c

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.get_submodule(self.kind.value)(self.mask(c)))


class LabelEmbedder(nn.Module):
    """Class-conditional baseline (DiT): a table of num_classes + 1 rows, the last the null class."""

    def __init__(self, num_classes: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.num_classes, self.drop = num_classes, drop
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.long().clone()
        y[y < 0] = self.num_classes
        if self.training and self.drop > 0:
            y = torch.where(torch.rand(y.shape, device=y.device) < self.drop, self.num_classes, y)
        return cast(torch.Tensor, self.embedding_table(y))


#################################################################################
#                               Blocks and network                              #
#################################################################################


class GMemBlock(nn.Module):
    """Transformer block with adaLN-zero conditioning on ``cond``."""

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = make_norm(cfg.norm, h)
        self.attn = Attention(h, cfg.num_heads, qk_norm=cfg.qk_norm, norm=cfg.norm)
        self.norm2 = make_norm(cfg.norm, h)
        self.mlp = _MLPS[cfg.mlp](h, cfg.mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), RowLinear(h, 6 * h))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: AxialRoPE | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(
            6, -1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return cast(
            torch.Tensor, x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        )


class FinalLayer(nn.Module):
    """Norm, adaLN (shift, scale), linear to p*p*C_out per token."""

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm_final = make_norm(cfg.norm, h)
        self.linear = nn.Linear(h, cfg.patch_size**2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), RowLinear(h, 2 * h))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return cast(torch.Tensor, self.linear(modulate(self.norm_final(x), shift, scale)))


class GMemDiT(nn.Module):
    """GMem network: ``forward(x_t, t, c) -> v``; c is a unit snippet [N, d] (zeros = null), labels, or
    None."""

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        h, grid = cfg.hidden_size, cfg.grid_size
        self.x_embedder = PatchEmbed(cfg.in_channels, h, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(h)
        if cfg.conditioning == Conditioning.snippet:
            self.condition_projection = SnippetAdapter(cfg)
        elif cfg.conditioning == Conditioning.class_:
            self.y_embedder = LabelEmbedder(cfg.num_classes, h, drop=0.1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, h), requires_grad=False)
        self.feat_rope = AxialRoPE(cfg.head_dim, grid) if cfg.rope else None
        self.blocks = nn.ModuleList(GMemBlock(cfg) for _ in range(cfg.depth))
        if cfg.repa_dim:
            self.projector = nn.ModuleList(
                [
                    nn.Sequential(
                        nn.Linear(h, cfg.repa_hidden),
                        nn.SiLU(),
                        nn.Linear(cfg.repa_hidden, cfg.repa_hidden),
                        nn.SiLU(),
                        nn.Linear(cfg.repa_hidden, cfg.repa_dim),
                    )
                ]
            )
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, fixed sin-cos table; adaLN-zero (ours) zeroes every modulation and the output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.x_embedder.proj
        w = proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(cast(torch.Tensor, proj.bias))
        table = torch.from_numpy(sincos_2d(self.cfg.hidden_size, self.cfg.grid_size)).float()[None]
        with torch.no_grad():
            self.pos_embed.copy_(table.to(self.pos_embed.device))
        t_mlp = self.t_embedder.mlp
        nn.init.normal_(cast(nn.Linear, t_mlp[0]).weight, std=0.02)
        nn.init.normal_(cast(nn.Linear, t_mlp[2]).weight, std=0.02)
        if hasattr(self, "y_embedder"):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.cfg.init == "adaln-zero":
            zeroed = [cast(GMemBlock, b).adaLN_modulation[-1] for b in self.blocks]
            zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
            for layer in zeroed:
                nn.init.zeros_(cast(nn.Linear, layer).weight)
                nn.init.zeros_(cast(nn.Linear, layer).bias)

    def condition(self, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``cond = t_emb + adapter(mask(c))`` (or + label embedding for the class baseline)."""
        cond: torch.Tensor = self.t_embedder(t)
        if self.cfg.conditioning == "snippet":
            if c is None:
                raise ValueError(
                    "this network is snippet-conditioned: pass c [N, snippet_dim] (zeros = null)"
                )
            cond = cond + self.condition_projection(c.to(cond.dtype))
        elif self.cfg.conditioning == "class":
            if c is None:
                c = torch.full((t.shape[0],), -1, device=t.device)
            cond = cond + self.y_embedder(c)
        return cond

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, g, ch = self.cfg.patch_size, self.cfg.grid_size, self.cfg.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, ch)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], ch, g * p, g * p)

    def forward_features(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocity and, when a REPA projector exists, the projected tokens after block ``encoder_depth``."""
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        cond = self.condition(t, c)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        z = None
        for i, block in enumerate(self.blocks):
            h = block(h, cond, self.feat_rope)
            if i + 1 == self.cfg.encoder_depth and self.cfg.repa_dim and self.training:
                z = self.projector[0](h)
        out = self.unpatchify(self.final_layer(h, cond))
        return out[:, : self.cfg.in_channels], z

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        # return_features: (v, projected tokens) for the REPA loss; through forward so DDP sees the call.
        out = self.forward_features(x, t, c)
        return out if return_features else out[0]


def count_parameters(net: nn.Module) -> int:
    """Trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in net.parameters())


__all__ = ["GMemDiT", "SnippetAdapter", "count_parameters"]
