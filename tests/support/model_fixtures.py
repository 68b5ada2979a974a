"""Tiny real artifacts for the model/training tests: an image folder, its bank, a model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.banks import make_bank

TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, snippet_dim=8)


def bars(kind: int, offset: int, size: int = 16) -> np.ndarray:
    """A bright bar on black: kind 0 horizontal, kind 1 vertical, at ``offset``."""
    img = np.zeros((size, size), dtype=np.uint8)
    if kind == 0:
        img[offset : offset + 3, 2:-2] = 255
    else:
        img[2:-2, offset : offset + 3] = 255
    return img


def make_folder(root: Path, per_class: int = 8, size: int = 16) -> Path:
    """``root/{horizontal,vertical}/*.png`` grey images."""
    from PIL import Image

    for k, name in enumerate(("horizontal", "vertical")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(bars(k, 2 + i % (size - 6), size), mode="L").save(root / name / f"{i:03d}.png")
    return root


def make_dataset_bank(
    path: Path, dataset: str, dim: int = 8, rank: int = 4, encoder: str = "test/bars"
) -> Path:
    """A bank for ``dataset`` whose snippets are a fixed random projection of the pixels."""
    from training.data import load_dataset

    ds = load_dataset(dataset)
    rng = np.random.default_rng(0)
    feats = ds.images.reshape(len(ds), -1).astype(np.float64) @ rng.normal(size=(ds.images[0].size, dim))
    feats += rng.normal(size=(len(ds), dim))
    g = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    labels = ds.labels if isinstance(ds.labels, np.ndarray) else False
    make_bank(path, r=rank, encoder=encoder, labels=labels, rows=g, source=ds.source)
    return path


def make_model(path: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised (xavier, so outputs are non-trivial) tiny model file for 16x16 grey images."""
    from training.files.modelfile import save_model
    from training.network.config import preset
    from training.network.model import GMemDiT

    torch.manual_seed(seed)
    cfg = preset(
        "gmem-tiny",
        **{
            **TINY,
            "input_size": 16,
            "encoder": "test/bars",
            "init": "xavier",
            "default_steps": 3,
            **overrides,
        },
    )
    save_model(path, GMemDiT(cfg), cfg, {"id": "test-tiny"})
    return path


def make_bank_model(path: Path, p_uncond: float, model_id: str, seed: int = 0) -> Path:
    """A tiny random model file that fits the embedded mnist-5k bank (dimension 128, gmem/mnist-ssl), for
    services over that bank; ``p_uncond`` says whether the file records a trained CFG null."""
    from training.files.modelfile import save_model
    from training.network.config import preset
    from training.network.model import GMemDiT

    torch.manual_seed(seed)
    cfg = preset(
        "gmem-tiny",
        **{**TINY, "snippet_dim": 128, "input_size": 16, "init": "xavier", "default_steps": 3},
        default_sampler="euler",
        p_uncond=p_uncond,
    )
    save_model(path, GMemDiT(cfg), cfg, {"id": model_id})
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads can run 20x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
