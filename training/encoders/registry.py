"""Representation encoders ``f`` whose L2-normalised features are the bank's memory snippets.

Registry by id (``load_encoder``):

- ``gmem/mnist-ssl``: the default bank's encoder, 128-d, trained by this project on
  ``mnist-5k:train`` without labels and without reconstruction (SimCLR-style,
  :mod:`training.encoders.ssl`), frozen, global-average pooled: lossy and
  self-supervised like the paper's DINOv2 CLS snippets. Default weights
  ``artifacts/mnist-5k/encoder.safetensors``.
- ``gmem/mnist-cnn``: the "strong conditioning" variant, 128-d, trained with labels
  and a pixel-reconstruction loss (:mod:`training.encoders.train`), so its code is
  close to an autoencoder's (the strong end of the paper's section 3.2). Default
  weights ``artifacts/mnist-5k/encoder-strong.safetensors``.
- ``gmem/mnist-evalnet``: the evaluation network for Frechet distance (a
  different architecture and seed; its feature is the penultimate layer).
- ``timm/<arch>``: any timm architecture built with ``pretrained=False,
  num_classes=0`` and loaded from a local weights file. ``timm/vit_base_patch14_dinov2``
  reproduces the paper's DINOv2-B/14 snippet (LINs-lab/GMem ``models/dinov2.py``).

Every encoder takes the canonical input (float NCHW in [-1, 1] at the
dataset resolution) and does its own preprocessing; ``encode`` returns the raw
(unnormalised) global feature.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shared.errors import EncoderFileError, EncoderUnavailable, IncompatibleArtifacts, InvalidInput
from shared.fileio import atomic_path
from training.data import to_model_input

ENCODER_FORMAT = "gmem-encoder"
ENCODER_FORMAT_VERSION = "1"
DEFAULT_ENCODER = "gmem/mnist-ssl"
DEFAULT_WEIGHTS = {
    "gmem/mnist-ssl": "artifacts/mnist-5k/encoder.safetensors",
    "gmem/mnist-cnn": "artifacts/mnist-5k/encoder-strong.safetensors",
    "gmem/mnist-evalnet": "artifacts/mnist-5k/evalnet.safetensors",
}
DINOV2_ID = "timm/vit_base_patch14_dinov2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- embedded networks


class MnistCNN(nn.Module):
    """``gmem/mnist-cnn``: three conv stages (32 -> 16 -> 8 -> 4 px) and a linear map to the global
    feature."""

    def __init__(self, channels: int = 1, feature_dim: int = 128, width: int = 16) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(4, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, stride=2, padding=1),
                nn.GroupNorm(4, cout),
                nn.SiLU(),
            )

        self.stages = nn.Sequential(
            stage(channels, width), stage(width, 2 * width), stage(2 * width, 4 * width)
        )
        # Flatten rather than average-pool the 4x4 map: position (slant, stroke placement)
        # is part of a digit's style and must survive into the snippet.
        self.to_feature = nn.Linear(4 * width * 16, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.to_feature(self.stages(x).flatten(1)))


class MnistSSL(nn.Module):
    """``gmem/mnist-ssl``: four conv stages (32 -> 16 -> 8 -> 4 px) and a global average pool; the pooled
    vector is the feature (no linear map after the pool, as a ViT's CLS token is read straight off)."""

    def __init__(self, channels: int = 1, feature_dim: int = 128) -> None:
        super().__init__()
        widths = (channels, feature_dim // 4, feature_dim // 2, feature_dim, feature_dim)

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()
            )

        self.stages = nn.Sequential(
            stage(widths[0], widths[1], 1),
            stage(widths[1], widths[2], 2),
            stage(widths[2], widths[3], 2),
            stage(widths[3], widths[4], 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.stages(x).mean(dim=(2, 3)))


class MnistEvalNet(nn.Module):
    """``gmem/mnist-evalnet``: a LeNet-style classifier; its penultimate layer is the Frechet feature."""

    def __init__(self, channels: int = 1, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(self.body(x)))


class EncoderKind(StrEnum):
    """What ``train-encoder`` trains: a snippet encoder (self-supervised or strong) or the evaluation
    network."""

    mnist_ssl = "mnist-ssl"
    mnist_cnn = "mnist-cnn"
    evalnet = "evalnet"


EMBEDDED: dict[str, Callable[..., nn.Module]] = {
    "gmem/mnist-ssl": MnistSSL,
    "gmem/mnist-cnn": MnistCNN,
    "gmem/mnist-evalnet": MnistEvalNet,
}


# --------------------------------------------------------------------------- encoder wrapper


class Encoder:
    """A frozen feature extractor ``f``: canonical images in, raw global features out."""

    def __init__(
        self,
        encoder_id: str,
        net: nn.Module,
        feature_dim: int,
        channels: int,
        resolution: int,
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
    ) -> None:
        self.id = encoder_id
        # Size of the canonical [-1, 1] image that images from files are centre-cropped to
        # before ``encode`` (DINOv2 as in the paper: 256, then its own resize to 224).
        self.image_size = image_size or resolution
        self.net = net.to(device).eval().requires_grad_(False)
        self.feature_dim = feature_dim
        self.channels = channels
        self.resolution = resolution
        self.device = torch.device(device)
        self._preprocess = preprocess
        self._features = features or self.net

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw global features ``f(x)`` [N, d] (float32, CPU) of images [N, C, H, W] in [-1, 1]."""
        if x.ndim != 4:
            raise InvalidInput(f"images must be a tensor [N, C, H, W]; got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3):
            raise InvalidInput(f"images must have 1 (grey) or 3 (RGB) channels; got {x.shape[1]}")
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(self.device, torch.float32)
            out.append(self._features(self._preprocess(xb)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw features [N, d] of PIL images, converted to the encoder's mode and resolution."""
        mode = "L" if self.channels == 1 else "RGB"
        arrays = []
        for im in images:
            arr = np.asarray(center_crop(im.convert(mode), self.image_size), dtype=np.uint8)
            arrays.append(arr[:, :, None] if arr.ndim == 2 else arr)
        if not arrays:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        return self.encode(to_model_input(np.stack(arrays))).numpy()


def center_crop(im: Image.Image, size: int) -> Image.Image:
    """Square centre crop at ``size`` without stretching (the ADM crop the paper's bank used).

    Cut the centre square first, then halve it with a box filter while its side is at least
    twice the target and resize it bicubically to ``size``. Cropping first gives the ADM crop's
    region (up to a pixel of rounding) without ever scaling the long side: resizing a 1,000,000 x 1
    strip's short side to ``size`` would otherwise allocate gigabytes.
    """
    if im.size == (size, size):
        return im
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    im = im.crop((left, top, left + side, top + side))
    while min(im.size) >= 2 * size:
        im = im.resize((im.size[0] // 2, im.size[1] // 2), resample=Image.Resampling.BOX)
    scale = size / min(im.size)
    im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), resample=Image.Resampling.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return im.crop((left, top, left + size, top + size))


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey images are repeated to 3 channels for RGB encoders; RGB becomes luma for grey ones."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


# --------------------------------------------------------------------------- embedded weights files


def save_embedded(
    path: str | Path, encoder_id: str, net: nn.Module, feature_dim: int, extra: dict[str, Any] | None = None
) -> None:
    """Weights of an embedded encoder as safetensors with self-describing metadata."""
    meta = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "encoder": encoder_id,
        "feature_dim": str(feature_dim),
        "resolution": "32",
        "channels": "1",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp), metadata=meta
        )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError as exc:
        raise EncoderFileError(f"{path}: no such encoder weights file") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise EncoderFileError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, meta


def _load_embedded(encoder_id: str, weights: str | None, device: str | torch.device) -> Encoder:
    path = Path(weights or DEFAULT_WEIGHTS[encoder_id])
    if not path.exists():
        raise EncoderUnavailable(
            f"weights for {encoder_id} not found at {path}; train them with "
            f"`python -m training train-encoder` (see artifacts/mnist-5k/REBUILD.md) "
            f"or pass --encoder-weights"
        )
    tensors, meta = _read_safetensors(path)
    if meta.get("format") != ENCODER_FORMAT or meta.get("format_version") != ENCODER_FORMAT_VERSION:
        raise EncoderFileError(
            f"{path}: format={meta.get('format')!r} format_version={meta.get('format_version')!r}; expected "
            f"format={ENCODER_FORMAT!r} format_version={ENCODER_FORMAT_VERSION!r}"
        )
    if meta.get("encoder") != encoder_id:
        raise IncompatibleArtifacts(f"{path} holds weights of {meta.get('encoder')!r}, not {encoder_id!r}")
    feature_dim = int(meta["feature_dim"])
    net = EMBEDDED[encoder_id](feature_dim=feature_dim, **json.loads(meta.get("arch", "{}")))
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise IncompatibleArtifacts(
            f"{path}: weights do not fit {encoder_id} (missing {missing}, unexpected {unexpected})"
        )
    channels, resolution = int(meta.get("channels", 1)), int(meta.get("resolution", 32))

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return _resize(_match_channels(x, channels), resolution)

    features = net.body if isinstance(net, MnistEvalNet) else net
    return Encoder(encoder_id, net, feature_dim, channels, resolution, preprocess, features, device)


# --------------------------------------------------------------------------- timm encoders


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A local checkpoint: safetensors, or a torch pickle read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise EncoderFileError(f"{path}: no such encoder weights file") from exc
    except Exception as exc:  # unpickling errors come in many types
        raise EncoderFileError(f"{path}: not a loadable weights-only torch checkpoint ({exc})") from exc
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderFileError(f"{path}: expected a state_dict of tensors")
    return obj, {}


def _load_timm(encoder_id: str, weights: str | None, device: str | torch.device) -> Encoder:
    import timm  # heavy (about a second) and needed only for timm/<arch> encoders, e.g. in the bank service

    arch = encoder_id.split("/", 1)[1]
    if not weights:
        raise EncoderUnavailable(
            f"{encoder_id} needs a local weights file (no downloads): pass --encoder-weights FILE "
            "(safetensors or a torch state_dict)"
        )
    if not timm.is_model(arch):
        raise InvalidInput(f"unknown timm architecture {arch!r}; see timm.list_models()")
    state, meta = _read_state_dict(Path(weights))
    # Extra constructor arguments can travel with a safetensors file (e.g. a small test ViT's img_size).
    kwargs = json.loads(meta.get("timm_kwargs", "{}"))
    if encoder_id == DINOV2_ID:
        # Paper: DINOv2's pos table resampled once to 16x16 (+CLS), i.e. a 224 px input.
        kwargs["img_size"] = 224
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            # timm's own converter: DINOv2 hub keys -> timm keys, pos_embed resampled bicubic + antialias.
            state = filter_fn(state, net)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "classifier."))}
        net.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise IncompatibleArtifacts(f"{weights}: weights do not fit timm model {arch!r}: {exc}") from exc
    cfg = cast(dict[str, Any], net.pretrained_cfg)
    resolution = int(cfg.get("input_size", (3, 224, 224))[-1])
    if "img_size" in kwargs:
        img = kwargs["img_size"]
        resolution = int(img if isinstance(img, int) else img[-1])
    channels = int(kwargs.get("in_chans", 3))
    mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN)[:channels], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", IMAGENET_STD)[:channels], device=device).view(1, -1, 1, 1)
    if encoder_id == DINOV2_ID:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        # Order as in the paper's code: [-1,1] -> [0,1] -> mean/std -> bicubic resize (no antialias).
        x = (_match_channels(x, channels) + 1.0) / 2.0
        return _resize((x - mean) / std, resolution)

    def features(x: torch.Tensor) -> torch.Tensor:
        # With num_classes=0 the forward is pooled pre-logits: the CLS token after the
        # final norm for DINOv2 / ViTs with token pooling, the global pool otherwise.
        return cast(torch.Tensor, net(x))

    image_size = 256 if encoder_id == DINOV2_ID else resolution
    return Encoder(
        encoder_id,
        net,
        cast(int, net.num_features),
        channels,
        resolution,
        preprocess,
        features,
        device,
        image_size=image_size,
    )


def load_encoder(encoder_id: str, weights: str | None = None, device: str | torch.device = "cpu") -> Encoder:
    """The encoder named ``encoder_id`` with its weights (embedded default, or a local file)."""
    if encoder_id in EMBEDDED:
        return _load_embedded(encoder_id, weights, device)
    if encoder_id.startswith("timm/") and len(encoder_id) > 5:
        return _load_timm(encoder_id, weights, device)
    raise InvalidInput(
        f"unknown encoder {encoder_id!r}; use {', '.join(EMBEDDED)} "
        f"or timm/<arch> with --encoder-weights FILE"
    )
