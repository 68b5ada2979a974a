"""The GMem denoising network: a DiT/SiT/LightningDiT-style transformer with the S-Adapter.

``cond = t_emb + adapter(mask(snippet))`` replaces the class embedding of DiT
and drives every block through adaLN. With the LightningDiT options (RMSNorm,
SwiGLU, RoPE, linear adapter, REPA projector) the module names and shapes match
the paper authors' release key for key (official-gmem-facts.md section 2d), so
their checkpoints load straight into :class:`GMemDiT`. The generic pieces
(norms, RoPE, attention, MLPs, embedders) live in :mod:`training.layers`.

Ideas from facebookresearch/DiT (adaLN-zero, class baseline), hustvl/LightningDiT
(REPA projector layout) and LINs-lab/GMem (S-Adapter); written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import InvalidInput
from training.layers import (
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

Space = Literal["pixel", "latent"]
Conditioning = Literal["snippet", "class", "none"]
MaskStrategy = Literal["zero", "noise", "random"]


@dataclass(frozen=True)
class GMemConfig:
    """Architecture, data space and sampling defaults of one GMem network (stored in the model file)."""

    name: str = "gmem-tiny"
    # data space
    space: Space = "pixel"
    input_size: int = 32
    in_channels: int = 1
    # pixel: images in [-1, 1]; latent: (z - mean) / std * multiplier, per channel
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    latent_multiplier: float = 1.0
    decoder: dict[str, str] | None = None  # e.g. {"kind": "vavae-f16d32", "weights": "..."} (training/vae.py)
    # transformer
    patch_size: int = 2
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    qk_norm: bool = False
    rope: bool = True
    learn_sigma: bool = False  # SiT/DiT predict 2C channels; only the first C are the velocity
    init: Literal["adaln-zero", "xavier"] = "adaln-zero"
    # conditioning (S-Adapter)
    conditioning: Conditioning = "snippet"
    snippet_dim: int = 128
    encoder: str = "gmem/mnist-cnn"
    adapter: Literal["linear", "mlp"] = "linear"
    mask_ratio: float = 0.4
    mask_strategy: MaskStrategy = "zero"
    num_classes: int = 10  # only for conditioning="class" (the comparison baseline)
    # REPA projector (train-time alignment; kept so official checkpoints load strictly)
    repa_dim: int = 0  # 0 = no projector
    repa_hidden: int = 2048  # projector width (the release's 2048; training/repa.py)
    encoder_depth: int = 4
    # sampling defaults
    default_sampler: str = "heun"
    default_steps: int = 20
    sde_solver: Literal["euler", "heun"] = "euler"  # Euler-Maruyama (ours) or the release's Heun SDE
    diffusion_norm: float = 1.0  # SDE diffusion w(t) = norm * (1 - t)
    last_step_size: float = 0.004  # Heun-SDE noise-free "mean" last step
    time_shift: float = 1.0  # ODE grid t' = s t / (1 + (s - 1) t); 1 = none
    cfg_interval_start: float = 0.0

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> GMemConfig:
        """Raise ValueError on sizes that cannot build a network."""
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.rope and self.head_dim % 4:
            raise ValueError(f"RoPE needs head_dim divisible by 4; got {self.head_dim}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1); got {self.mask_ratio}")
        return self


#################################################################################
#                    Conditioning: S-Adapter and class baseline                 #
#################################################################################


class SnippetAdapter(nn.Module):
    """S-Adapter: masks the unit-norm snippet per feature dimension (train only), then projects it to H.

    Mask strategies (the paper's ablation): ``zero`` = inverted dropout exactly
    like the release's ``nn.Dropout(p)`` (kept dims scaled by 1/(1-p));
    ``noise`` = masked dims replaced by N(0, 1/d) (the spread of a random unit
    vector's entries); ``random`` = masked dims taken from another snippet of the
    batch (a random permutation). No masking in eval mode.
    """

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        self.ratio, self.strategy, d, h = cfg.mask_ratio, cfg.mask_strategy, cfg.snippet_dim, cfg.hidden_size
        if cfg.adapter == "linear":
            self.linear = RowLinear(d, h)
        else:
            self.mlp = nn.Sequential(RowLinear(d, h), nn.SiLU(), RowLinear(h, h), nn.SiLU(), RowLinear(h, h))

    def mask(self, c: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ratio <= 0:
            return c
        if self.strategy == "zero":
            return F.dropout(c, p=self.ratio, training=True)
        masked = torch.rand_like(c) < self.ratio
        if self.strategy == "noise":
            fill = torch.randn_like(c) / math.sqrt(c.shape[-1])
        else:
            fill = c[torch.randperm(c.shape[0], device=c.device)]
        return torch.where(masked, fill, c)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        c = self.mask(c)
        return self.linear(c) if hasattr(self, "linear") else self.mlp(c)


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
        return self.embedding_table(y)


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
        if cfg.mlp == "swiglu":
            self.mlp: nn.Module = SwiGLU(h, int(2 / 3 * cfg.mlp_ratio * h))
        else:
            self.mlp = GeluMLP(h, int(cfg.mlp_ratio * h))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), RowLinear(h, 6 * h))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: AxialRoPE | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(6, -1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


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
        return self.linear(modulate(self.norm_final(x), shift, scale))



class GMemDiT(nn.Module):
    """GMem network: ``forward(x_t, t, c) -> v``; c is a unit snippet [N, d] (zeros = null), labels, or None."""

    def __init__(self, cfg: GMemConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        h, grid = cfg.hidden_size, cfg.grid_size
        self.x_embedder = PatchEmbed(cfg.in_channels, h, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(h)
        if cfg.conditioning == "snippet":
            self.condition_projection = SnippetAdapter(cfg)
        elif cfg.conditioning == "class":
            self.y_embedder = LabelEmbedder(cfg.num_classes, h, drop=0.1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, h), requires_grad=False)
        self.feat_rope = AxialRoPE(cfg.head_dim, grid) if cfg.rope else None
        self.blocks = nn.ModuleList(GMemBlock(cfg) for _ in range(cfg.depth))
        if cfg.repa_dim:
            self.projector = nn.ModuleList([nn.Sequential(
                nn.Linear(h, cfg.repa_hidden), nn.SiLU(), nn.Linear(cfg.repa_hidden, cfg.repa_hidden), nn.SiLU(),
                nn.Linear(cfg.repa_hidden, cfg.repa_dim)
            )])
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, fixed sin-cos table; adaLN-zero (ours) zeroes every modulation and the output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        table = torch.from_numpy(sincos_2d(self.cfg.hidden_size, self.cfg.grid_size)).float()[None]
        with torch.no_grad():
            self.pos_embed.copy_(table.to(self.pos_embed.device))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if hasattr(self, "y_embedder"):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.cfg.init == "adaln-zero":
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
            for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``cond = t_emb + adapter(mask(c))`` (or + label embedding for the class baseline)."""
        cond = self.t_embedder(t)
        if self.cfg.conditioning == "snippet":
            if c is None:
                raise ValueError("this network is snippet-conditioned: pass c [N, snippet_dim] (zeros = null)")
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

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        # return_features: (v, projected tokens) for the REPA loss; through forward so DDP sees the call.
        out = self.forward_features(x, t, c)
        return out if return_features else out[0]


def count_parameters(net: nn.Module) -> int:
    """Trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in net.parameters())


#################################################################################
#                                  Presets                                      #
#################################################################################

_LIGHTNING = dict(mlp="swiglu", norm="rmsnorm", rope=True, adapter="linear", init="xavier")
_LATENT_VAVAE = dict(space="latent", input_size=16, in_channels=32, snippet_dim=768,
                     encoder="timm/vit_base_patch14_dinov2", decoder={"kind": "vavae-f16d32"},
                     default_sampler="sde", sde_solver="heun", default_steps=49, cfg_interval_start=0.89)

PRESETS: dict[str, GMemConfig] = {
    "gmem-tiny": GMemConfig(name="gmem-tiny", patch_size=4, hidden_size=128, depth=6, num_heads=2),
    # Latent space of the embedded tiny VAE (8x8x4 for mnist-5k); patch 2 (16 tokens) keeps CPU runs short.
    "gmem-tiny-latent": GMemConfig(name="gmem-tiny-latent", space="latent", input_size=8, in_channels=4,
                                   patch_size=2, hidden_size=128, depth=6, num_heads=2, repa_hidden=256,
                                   encoder_depth=2),
    "gmem-S/2": GMemConfig(name="gmem-S/2", patch_size=2, hidden_size=384, depth=12, num_heads=6),
    "gmem-B/1": GMemConfig(name="gmem-B/1", **_LATENT_VAVAE, **_LIGHTNING, patch_size=1, hidden_size=768,
                           depth=12, num_heads=12, repa_dim=768),
    "gmem-XL/1": GMemConfig(name="gmem-XL/1", **_LATENT_VAVAE, **_LIGHTNING, patch_size=1, hidden_size=1152,
                            depth=28, num_heads=16, repa_dim=768),
    "gmem-B/1-lightning": GMemConfig(name="gmem-B/1-lightning", **_LATENT_VAVAE, **_LIGHTNING, patch_size=1,
                                     hidden_size=768, depth=12, num_heads=12, repa_dim=0),
    "sit-XL/2": GMemConfig(name="sit-XL/2", space="latent", input_size=32, in_channels=4, snippet_dim=768,
                           encoder="timm/vit_base_patch14_dinov2", decoder={"kind": "sd-vae-ft-ema"},
                           patch_size=2, hidden_size=1152, depth=28, num_heads=16, mlp="gelu",
                           norm="layernorm", rope=False, learn_sigma=True, default_sampler="sde",
                           default_steps=250),
}


def preset(name: str, **overrides: object) -> GMemConfig:
    """A named preset with field overrides; unknown names list the choices."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides).validate()


__all__ = ["GMemConfig", "GMemDiT", "PRESETS", "preset", "count_parameters"]
