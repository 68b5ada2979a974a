"""Flow matching on the linear path (the paper authors' convention: t = 0 noise, t = 1 data).

    x_t = alpha_t * x_data + sigma_t * eps,   alpha_t = t,   sigma_t = 1 - t
    v*  = d x_t / dt = alpha'_t * x_data + sigma'_t * eps = x_data - eps

The paper's ``x_t = (1 - t) x_0 + t eps`` (SiT convention) is the same path read with t -> 1 - t.
The loss is MSE on the velocity, optionally plus the release's cosine loss
over the channel axis; t is uniform or logit-normal (``sigmoid(N(0, 1))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TimeSampling = Literal["uniform", "logit-normal"]


@dataclass(frozen=True)
class LinearPath:
    """The path as data: alpha_t, sigma_t and their time derivatives."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)

    def x_t(self, x_data: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = _bcast(t, x_data)
        return self.alpha(tb) * x_data + self.sigma(tb) * eps

    def velocity(self, x_data: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = _bcast(t, x_data)
        return self.d_alpha(tb) * x_data + self.d_sigma(tb) * eps

    def score(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score of p_t from the velocity: ``s = (t v - x) / (1 - t)`` on this path."""
        tb = _bcast(t, x)
        return (tb * v - x) / (1 - tb)


PATH = LinearPath()


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


def sample_time(
    n: int, how: TimeSampling, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """t in (0, 1): uniform, or logit-normal ``sigmoid(N(0, 1))`` (the release's ``use_lognorm``)."""
    if how == "uniform":
        return torch.rand(n, generator=generator).to(device)
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator)).to(device)
    raise ValueError(f"unknown time sampling {how!r}; use 'uniform' or 'logit-normal'")


@dataclass(frozen=True)
class LossTerms:
    """Per-batch loss and its parts (for logging)."""

    total: torch.Tensor
    mse: torch.Tensor
    cosine: torch.Tensor | None


def flow_matching_loss(v_pred: torch.Tensor, v_target: torch.Tensor, cosine: bool = False) -> LossTerms:
    """``mean |v - v*|^2`` (+ ``mean(1 - cos(v, v*))`` over channels when ``cosine``)."""
    mse = (v_pred.float() - v_target.float()).pow(2).mean()
    if not cosine:
        return LossTerms(total=mse, mse=mse, cosine=None)
    cos = (1 - F.cosine_similarity(v_pred.float(), v_target.float(), dim=1)).mean()
    return LossTerms(total=mse + cos, mse=mse, cosine=cos)
