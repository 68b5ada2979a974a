"""Files with the exact layout of the paper authors' GMem release, filled with random numbers.

Written from the release's code (LINs-lab/GMem ``utils/svd_utils.py``, ``models/lightningdit.py``,
``datasets/img_latent_dataset.py``, ``tokenizer/autoencoder.py``), independently of
training/official/importer.py and training/official/vae.py, so the tests compare two readings of
the release rather than the importer with itself:

- network state dicts of LightningDiT + GMem (``lightningdit_shapes``; B/1 real,
  XL shape-only), saved bare or as ``{"model", "ema", "config"}`` with a ``module.``
  prefix on "model" (DDP), the EMA dict without;
- the VA-VAE Lightning checkpoint ``{"state_dict": {...}}`` (``vavae_shapes``);
- ``latents_stats.pt`` ``{"mean": [1,32,1,1], "std": [1,32,1,1]}``;
- the full bank (one ``[N, 768]`` tensor of raw CLS features) and the SVD ("dmd") dict.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

# ----------------------------------------------------------------------------- network


def lightningdit_shapes(
    depth: int, hidden: int, heads: int, projector: bool = True
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a LightningDiT-*/1 GMem state dict (``models/lightningdit.py``): 32 latent channels,
    16x16 tokens."""
    hd = hidden // heads
    mlp = int(2 / 3 * 4 * hidden)  # SwiGLU hidden width: 2048 (B) or 3072 (XL)
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, 256, hidden),
        "x_embedder.proj.weight": (hidden, 32, 1, 1),
        "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_embedder.mlp.2.bias": (hidden,),
        "condition_projection.linear.weight": (hidden, 768),
        "condition_projection.linear.bias": (hidden,),
        "feat_rope.freqs_cos": (256, hd),
        "feat_rope.freqs_sin": (256, hd),
        "final_layer.norm_final.weight": (hidden,),
        "final_layer.linear.weight": (32, hidden),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    if projector:
        shapes.update(
            {
                "projector.0.0.weight": (2048, hidden),
                "projector.0.0.bias": (2048,),
                "projector.0.2.weight": (2048, 2048),
                "projector.0.2.bias": (2048,),
                "projector.0.4.weight": (768, 2048),
                "projector.0.4.bias": (768,),
            }
        )
    for i in range(depth):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (hidden,),
                p + "norm2.weight": (hidden,),
                p + "attn.qkv.weight": (3 * hidden, hidden),
                p + "attn.qkv.bias": (3 * hidden,),
                p + "attn.proj.weight": (hidden, hidden),
                p + "attn.proj.bias": (hidden,),
                p + "mlp.w12.weight": (2 * mlp, hidden),
                p + "mlp.w12.bias": (2 * mlp,),
                p + "mlp.w3.weight": (hidden, mlp),
                p + "mlp.w3.bias": (hidden,),
                p + "adaLN_modulation.1.weight": (6 * hidden, hidden),
                p + "adaLN_modulation.1.bias": (6 * hidden,),
            }
        )
    return shapes


XL_SHAPES = lightningdit_shapes(28, 1152, 16)
B_SHAPES = lightningdit_shapes(12, 768, 12)


def rope_tables(head_dim: int, grid: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """feat_rope.freqs_cos / freqs_sin [grid^2, head_dim], spelled out channel by channel
    (``models/lightningdit.py``, the RoPE layer)."""
    half = head_dim // 2
    angles = np.zeros((grid * grid, head_dim), dtype=np.float64)
    for n in range(grid * grid):
        row, col = divmod(n, grid)
        for j in range(head_dim):
            pos, k = (row, j // 2) if j < half else (col, (j - half) // 2)
            angles[n, j] = pos * 10000.0 ** (-2 * k / half)
    return torch.tensor(np.cos(angles), dtype=torch.float32), torch.tensor(
        np.sin(angles), dtype=torch.float32
    )


def random_network_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights at a scale that keeps activations O(1); rope buffers hold the true tables."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.startswith("feat_rope."):
            continue
        if (
            name.endswith("norm1.weight")
            or name.endswith("norm2.weight")
            or name.endswith("norm_final.weight")
        ):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias") or name == "pos_embed":
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        state[name] = t
    cos, sin = rope_tables(shapes["feat_rope.freqs_cos"][1])
    state["feat_rope.freqs_cos"], state["feat_rope.freqs_sin"] = cos, sin
    return state


def save_bare(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The bare-state-dict container (what ``torch.save(model.state_dict())`` writes)."""
    torch.save(state, path)
    return path


def save_train_checkpoint(ema: dict[str, torch.Tensor], model: dict[str, torch.Tensor], path: Path) -> Path:
    """The training container: ``{"model": DDP-prefixed, "ema": bare, "config": ...}``."""
    torch.save(
        {
            "model": {"module." + k: v for k, v in model.items()},
            "ema": ema,
            "config": {
                "model": {
                    "model_type": "LightningDiT-B/1",
                    "use_swiglu": True,
                    "use_rope": True,
                    "use_rmsnorm": True,
                    "in_chans": 32,
                },
                "train": {"global_seed": 0},
            },
        },
        path,
    )
    return path


# ----------------------------------------------------------------------------- VA-VAE


def _resnet(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    s = {
        prefix + "norm1.weight": (c_in,),
        prefix + "norm1.bias": (c_in,),
        prefix + "conv1.weight": (c_out, c_in, 3, 3),
        prefix + "conv1.bias": (c_out,),
        prefix + "norm2.weight": (c_out,),
        prefix + "norm2.bias": (c_out,),
        prefix + "conv2.weight": (c_out, c_out, 3, 3),
        prefix + "conv2.bias": (c_out,),
    }
    if c_in != c_out:
        s.update(
            {prefix + "nin_shortcut.weight": (c_out, c_in, 1, 1), prefix + "nin_shortcut.bias": (c_out,)}
        )
    return s


def _attn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    s = {prefix + "norm.weight": (c,), prefix + "norm.bias": (c,)}
    for m in ("q", "k", "v", "proj_out"):
        s.update({prefix + f"{m}.weight": (c, c, 1, 1), prefix + f"{m}.bias": (c,)})
    return s


def vavae_shapes() -> dict[str, tuple[int, ...]]:
    """Encoder, quant convs and decoder of the f16d32 KL autoencoder (``tokenizer/autoencoder.py``), LDM
    naming."""
    ch, mult, z = 128, (1, 1, 2, 2, 4), 32
    s: dict[str, tuple[int, ...]] = {"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.conv_in.bias": (ch,)}
    res, c_in = 256, ch
    for level, m in enumerate(mult):
        c_out = ch * m
        for b in range(2):
            s.update(_resnet(f"encoder.down.{level}.block.{b}.", c_in, c_out))
            c_in = c_out
            if res == 16:
                s.update(_attn(f"encoder.down.{level}.attn.{b}.", c_out))
        if level != len(mult) - 1:
            s.update(
                {
                    f"encoder.down.{level}.downsample.conv.weight": (c_out, c_out, 3, 3),
                    f"encoder.down.{level}.downsample.conv.bias": (c_out,),
                }
            )
            res //= 2
    for part in ("encoder", "decoder"):
        s.update(_resnet(f"{part}.mid.block_1.", 512, 512))
        s.update(_attn(f"{part}.mid.attn_1.", 512))
        s.update(_resnet(f"{part}.mid.block_2.", 512, 512))
    s.update(
        {
            "encoder.norm_out.weight": (512,),
            "encoder.norm_out.bias": (512,),
            "encoder.conv_out.weight": (2 * z, 512, 3, 3),
            "encoder.conv_out.bias": (2 * z,),
            "quant_conv.weight": (2 * z, 2 * z, 1, 1),
            "quant_conv.bias": (2 * z,),
            "post_quant_conv.weight": (z, z, 1, 1),
            "post_quant_conv.bias": (z,),
            "decoder.conv_in.weight": (512, z, 3, 3),
            "decoder.conv_in.bias": (512,),
        }
    )
    c_in, res = 512, 16
    for level in reversed(range(len(mult))):
        c_out = ch * mult[level]
        for b in range(3):
            s.update(_resnet(f"decoder.up.{level}.block.{b}.", c_in, c_out))
            c_in = c_out
            if res == 16:
                s.update(_attn(f"decoder.up.{level}.attn.{b}.", c_out))
        if level != 0:
            s.update(
                {
                    f"decoder.up.{level}.upsample.conv.weight": (c_out, c_out, 3, 3),
                    f"decoder.up.{level}.upsample.conv.bias": (c_out,),
                }
            )
            res *= 2
    s.update(
        {
            "decoder.norm_out.weight": (ch,),
            "decoder.norm_out.bias": (ch,),
            "decoder.conv_out.weight": (3, ch, 3, 3),
            "decoder.conv_out.bias": (3,),
        }
    )
    return s


# Keys the Lightning checkpoint also carries (LPIPS/discriminator loss, the DINOv2 it aligns to, the
# alignment conv). The importer must ignore them; a few representative ones suffice (the real DINOv2
# alone is 86M parameters).
VAVAE_EXTRA_SHAPES: dict[str, tuple[int, ...]] = {
    "loss.logvar": (),
    "loss.perceptual_loss.net.slice1.0.weight": (64, 3, 3, 3),
    "loss.discriminator.main.0.weight": (64, 3, 4, 4),
    "foundation_model.model.cls_token": (1, 1, 768),
    "foundation_model.model.blocks.0.attn.qkv.weight": (2304, 768),
    "linear_proj.weight": (768, 32, 1, 1),
}


def random_vavae_state(seed: int = 0, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Random VA-VAE weights (GroupNorm gains near 1) plus the extra keys; names in ``drop`` left out."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in {**vavae_shapes(), **VAVAE_EXTRA_SHAPES}.items():
        if name in drop:
            continue
        if len(shape) <= 1 and (".norm" in name or "norm_out" in name) and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bias") or len(shape) <= 1:
            state[name] = 0.05 * torch.randn(shape, generator=gen)
        else:
            state[name] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
    return state


def save_vavae(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The Lightning checkpoint container ``{"state_dict": ..., ...}``."""
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, path)
    return path


def save_latent_stats(path: Path, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents_stats.pt``: per-channel mean and std of VA-VAE latents, [1, 32, 1, 1] each."""
    gen = torch.Generator().manual_seed(seed)
    mean = 0.3 * torch.randn(1, 32, 1, 1, generator=gen)
    std = 0.5 + torch.rand(1, 32, 1, 1, generator=gen)
    torch.save({"mean": mean, "std": std}, path)
    return mean, std


# ----------------------------------------------------------------------------- memory bank


def raw_cls_features(n: int, seed: int = 0, dim: int = 768) -> torch.Tensor:
    """Stand-in for DINOv2 CLS tokens: un-normalised, with a shared offset and low-rank structure."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, dim, generator=gen)
    feats = torch.randn(n, 16, generator=gen) @ basis + 0.3 * torch.randn(n, dim, generator=gen)
    return (feats + 2.0 * torch.randn(dim, generator=gen)) * 3.0


def save_full_bank(feats: torch.Tensor, path: Path) -> Path:
    """The 'full' bank file: one [N, 768] tensor saved with torch.save (``utils/svd_utils.py``,
    FullMemoryBank)."""
    torch.save(feats.clone(), path)
    return path


def save_svd_bank(feats: torch.Tensor, path: Path, latent_dim: int = 64) -> dict:
    """The 'dmd' bank dict (``utils/svd_utils.py``, DMDMemoryBank): SVD of the raw, centred features split as
    U*sqrt(S), V*sqrt(S)."""
    mean = feats.mean(0)
    U, S, Vh = torch.linalg.svd(feats - mean, full_matrices=False)
    d = latent_dim
    bank = {
        "C": U[:, :d] * S[:d].sqrt(),
        "M": Vh[:d].T * S[:d].sqrt(),
        "S": S[:d].clone(),
        "mean": mean,
        "latent_dim": d,
        "feature_dim": feats.shape[1],
    }
    torch.save(bank, path)
    return bank
