"""Resumable training checkpoints: weights, EMA and AdamW state in safetensors, the rest as JSON.

``CKPT.safetensors`` holds ``model.*``, ``ema.*`` and ``opt.<i>.<name>`` (i =
position of the parameter in ``net.parameters()``); ``CKPT.json`` beside it
holds the step, the network config, the training options and the loss history.
Both are written to temporary files and renamed, JSON last, so a checkpoint is
complete or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.errors import CheckpointFileError, IncompatibleArtifacts
from shared.fileio import atomic_path
from training.files.modelfile import config_to_json
from training.network.config import GMemConfig

# Fields that change the network's shape or meaning; sampling defaults may differ on resume.
ARCH_FIELDS = (
    "space",
    "input_size",
    "in_channels",
    "patch_size",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "mlp",
    "norm",
    "qk_norm",
    "rope",
    "learn_sigma",
    "conditioning",
    "snippet_dim",
    "encoder",
    "adapter",
    "num_classes",
    "repa_dim",
)


@dataclass
class Checkpoint:
    step: int
    config: dict[str, Any]
    state: dict[str, Any]  # options, loss history, sample ids
    tensors: dict[str, torch.Tensor]


def json_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def _atomic(target: Path, write: Callable[[Path], object]) -> None:
    with atomic_path(target) as tmp:
        write(tmp)


def save_checkpoint(
    path: str | os.PathLike[str],
    step: int,
    net: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    config: GMemConfig,
    state: dict[str, Any],
) -> None:
    """Write ``path`` (.safetensors) and its .json companion."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    index = {id(p): i for i, p in enumerate(net.parameters())}
    for p, st in opt.state.items():
        for name, value in st.items():
            tensors[f"opt.{index[id(p)]}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {
        "step": step,
        "config": config_to_json(config),
        "state": state,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
    }
    target = Path(path)
    _atomic(target, lambda tmp: save_file(tensors, tmp))
    _atomic(json_path(target), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint and its JSON; unreadable or half-written ones raise CheckpointFileError."""
    p = Path(path)
    if not p.is_file() or not json_path(p).is_file():
        raise CheckpointFileError(
            f"{p}: checkpoint not found (need {p.name} and {json_path(p).name} side by side)"
        )
    try:
        meta = json.loads(json_path(p).read_text())
        tensors = load_file(str(p))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointFileError(f"{p}: unreadable checkpoint ({exc})") from exc
    return Checkpoint(
        step=int(meta["step"]),
        config=meta["config"],
        state={**meta.get("state", {}), "param_groups": meta.get("param_groups", [])},
        tensors=tensors,
    )


def check_same_architecture(saved: dict[str, Any], current: GMemConfig, where: str) -> None:
    """IncompatibleArtifacts naming every architecture field that differs between checkpoint and run."""
    now = config_to_json(current)
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, this run {now[k]!r}"
        for k in ARCH_FIELDS
        if _norm(saved.get(k)) != _norm(now[k])
    ]
    if diffs:
        raise IncompatibleArtifacts(
            f"{where} was trained with another architecture ({'; '.join(diffs)}); "
            "resume with the same --preset and bank, or start a new run without --resume"
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def restore(ckpt: Checkpoint, net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load model, EMA and optimizer state from ``ckpt`` into freshly built objects."""
    net.load_state_dict({k[6:]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}, strict=True)
    ema.load_state_dict({k[4:]: v for k, v in ckpt.tensors.items() if k.startswith("ema.")}, strict=True)
    params = list(net.parameters())
    for key, value in ckpt.tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            p = params[int(i)]
            opt.state[p][name] = value.to(p.device) if name != "step" else value
    for group, saved in zip(opt.param_groups, ckpt.state.get("param_groups", []), strict=False):
        group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})
