"""REPA, the representation-alignment loss of the authors' release (LINs-lab/GMem ``engine/train.py``).

The tokens after block ``encoder_depth`` (4 in the release: after ``blocks[3]``) go
through the projector MLP ``H -> 2048 -> 2048 -> D`` (SiLU; ``projector.0.*`` keys, as in
the release's checkpoints), and the loss adds ``lambda * (1 - cos)`` between each
projected token and the encoder's patch feature at the same position, averaged over
tokens and batch. The release uses DINOv2-B/14 patch tokens (``x_norm_patchtokens``,
256 x 768 at 224 px), block 4 and lambda 0.5 (``configs/gmem_sde_xl.yaml``).

Patch features come from the same frozen encoder as the snippets: DINOv2's patch
tokens after the final norm, or, for the embedded ``gmem/mnist-ssl`` (self-supervised, as
DINOv2 is; ``gmem/mnist-cnn`` works too), its last 4x4 feature map as 16 tokens. When the
encoder's grid differs from the network's token grid the features are resampled (bilinear) to the
network's grid once, at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from shared.errors import IncompatibleArtifacts
from training.encoders.registry import Encoder, MnistCNN, MnistSSL


@dataclass(frozen=True)
class RepaPreset:
    """Block index (1-based: tokens after that many blocks), weight lambda and target encoder."""

    encoder_depth: int
    weight: float
    encoder: str


# The release's values (configs/gmem_sde_{b,xl}.yaml: encoder_depth 4, proj_coeff 0.5, dinov2_vitb14),
# and the same recipe scaled to the embedded mnist-5k network (6 blocks, the self-supervised CNN encoder).
REPA_PRESETS: dict[str, RepaPreset] = {
    "release": RepaPreset(encoder_depth=4, weight=0.5, encoder="timm/vit_base_patch14_dinov2"),
    "mnist": RepaPreset(encoder_depth=2, weight=0.5, encoder="gmem/mnist-ssl"),
}


@torch.no_grad()
def patch_features(encoder: Encoder, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The encoder's patch tokens [N, T, D] (float32, CPU) of images [N, C, H, W] in [-1, 1]."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = encoder._preprocess(x[start : start + batch_size].to(encoder.device, torch.float32))
        net = encoder.net
        if isinstance(net, (MnistCNN, MnistSSL)):
            fmap = net.stages(xb)  # [N, D, 4, 4]
            tokens = fmap.flatten(2).transpose(1, 2)
        elif hasattr(net, "forward_features"):  # timm ViT: drop CLS / register tokens
            tokens = cast(Any, net).forward_features(xb)[:, getattr(net, "num_prefix_tokens", 1) :]
        else:
            raise IncompatibleArtifacts(f"encoder {encoder.id!r} exposes no patch features for REPA")
        out.append(tokens.float().cpu())
    return torch.cat(out)


def resample_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, g*g, D] tokens on a square grid -> [N, grid*grid, D] (bilinear), unchanged when g == grid."""
    n, t, d = tokens.shape
    g = int(math.isqrt(t))
    if g * g != t:
        raise IncompatibleArtifacts(f"REPA targets hold {t} tokens, not a square grid")
    if g == grid:
        return tokens
    fmap = tokens.transpose(1, 2).reshape(n, d, g, g)
    fmap = F.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)
    return fmap.reshape(n, d, grid * grid).transpose(1, 2).contiguous()


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over batch and tokens of (1 - cos(projected, target))``; both [N, T, D]."""
    if projected.shape != target.shape:
        raise IncompatibleArtifacts(
            f"REPA: projected tokens {list(projected.shape)} and encoder features "
            f"{list(target.shape)} differ; check --repa-depth and the cache's encoder"
        )
    cos = F.cosine_similarity(projected.float(), target.float(), dim=-1)
    return (1.0 - cos).mean()
