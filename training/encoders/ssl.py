"""The default snippet encoder ``gmem/mnist-ssl``: self-supervised, no labels, no reconstruction.

GMem's snippets are frozen, self-supervised, lossy features (DINOv2 CLS tokens,
paper section 4.1). This is the same kind of feature at mnist-5k scale: a small
CNN trained with the SimCLR objective (NT-Xent between two augmented views of
each image; Chen et al. 2020), a projection head used only by the loss and
thrown away, and the globally pooled backbone activation as ``f(x)``. Labels
are read only to report how much class information the frozen feature kept
(a nearest-class-mean probe and a k-NN probe, train split -> eval split).

Augmentations are batched tensor operations on canonical [-1, 1] images:
a random affine map (rotation, scale, shear, shift), stroke thickening or
thinning (grey-level max/min filters), random erasing of a patch and pixel
noise. They define what the feature is blind to; position and stroke width
stay partly visible because the ranges are mild.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shared.errors import InvalidInput
from training.encoders.registry import MnistSSL


@dataclass(frozen=True)
class SSLConfig:
    """Settings of one self-supervised run."""

    feature_dim: int = 128
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.2
    projection_dim: int = 64
    seed: int = 0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of each image in ``x`` [N, C, H, W] in [-1, 1]."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.85, 1.15)
    shear = uniform(-0.2, 0.2)
    shift = torch.stack([uniform(-0.15, 0.15), uniform(-0.15, 0.15)], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample the [0, 1] ink map so the padding is background (-1 maps to 0).
    ink = F.grid_sample((x + 1) / 2, grid, align_corners=False, padding_mode="zeros")
    pick = torch.rand(n, generator=gen)
    thick = F.max_pool2d(ink, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-ink, 3, stride=1, padding=1)
    ink = torch.where((pick < 0.25).view(-1, 1, 1, 1), thick, ink)
    ink = torch.where((pick > 0.85).view(-1, 1, 1, 1), thin, ink)
    # Random erasing: one 8x8 patch blanked in half the images.
    h, w = x.shape[-2:]
    top = torch.randint(0, h - 8, (n,), generator=gen).view(-1, 1, 1, 1)
    left = torch.randint(0, w - 8, (n,), generator=gen).view(-1, 1, 1, 1)
    rows = torch.arange(h).view(1, 1, -1, 1)
    cols = torch.arange(w).view(1, 1, 1, -1)
    patch = (rows >= top) & (rows < top + 8) & (cols >= left) & (cols < left + 8)
    erase = (torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1)
    ink = torch.where(patch & erase, torch.zeros_like(ink), ink)
    ink = ink + 0.05 * torch.randn(ink.shape, generator=gen)
    return (ink.clamp(0, 1) * 2 - 1).contiguous()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy: each view must pick its partner among 2N - 1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


@torch.no_grad()
def probe(
    net: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor, y_eval: torch.Tensor
) -> dict[str, float]:
    """Class information left in the frozen unit feature: nearest class mean and 10-NN accuracy."""
    net.eval()
    s_train = F.normalize(net(x_train), dim=1)
    s_eval = F.normalize(net(x_eval), dim=1)
    classes = int(y_train.max()) + 1
    means = F.normalize(torch.stack([s_train[y_train == k].mean(0) for k in range(classes)]), dim=1)
    ncm = (s_eval @ means.T).argmax(1)
    knn_idx = (s_eval @ s_train.T).topk(10, dim=1).indices
    votes = F.one_hot(y_train[knn_idx], classes).sum(1)
    return {
        "probe_ncm_acc": float((ncm == y_eval).float().mean()),
        "probe_knn10_acc": float((votes.argmax(1) == y_eval).float().mean()),
    }


def train_ssl_encoder(x: torch.Tensor, cfg: SSLConfig) -> tuple[MnistSSL, dict[str, Any]]:
    """Train ``gmem/mnist-ssl`` on images ``x`` (no labels); returns the frozen backbone and loss stats."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = MnistSSL(channels=x.shape[1], feature_dim=cfg.feature_dim)
    head = nn.Sequential(
        nn.Linear(cfg.feature_dim, 2 * cfg.feature_dim),
        nn.SiLU(),
        nn.Linear(2 * cfg.feature_dim, cfg.projection_dim),
    )
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    batch = min(cfg.batch_size, len(x))
    if batch < 2:
        raise InvalidInput("self-supervised training needs at least 2 images (each must find its partner)")
    per_epoch = len(x) // batch  # full batches only: NT-Xent's difficulty depends on the batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * per_epoch)
    stats: dict[str, Any] = {}
    bar = tqdm(range(cfg.epochs), desc="train gmem/mnist-ssl", unit="epoch")
    net.train()
    for _ in bar:
        order = torch.randperm(len(x), generator=gen)
        loss_sum = 0.0
        for b in range(per_epoch):
            xb = x[order[b * batch : (b + 1) * batch]]
            loss = nt_xent(head(net(augment(xb, gen))), head(net(augment(xb, gen))), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            sched.step()
            loss_sum += loss.item()
        stats = {"nt_xent": loss_sum / max(1, per_epoch)}
        bar.set_postfix(nt_xent=f"{stats['nt_xent']:.4f}")
    return net.eval().requires_grad_(False), stats
