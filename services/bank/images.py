"""Image inserts: safe decoding and the (optional) representation encoder.

The encoder is imported lazily from ``training.encoders.registry`` only when one is
configured, so a bank that serves features runs without torch.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from shared.errors import EncoderUnavailable, IncompatibleArtifacts, InvalidImage
from shared.factors import BankFactors


class Encoder(Protocol):
    id: str
    feature_dim: int

    def encode_pil(self, images: list[Image.Image]) -> np.ndarray: ...


def load_configured_encoder(encoder_id: str | None, weights: Path | None, factors: BankFactors) -> Encoder | None:
    """The configured encoder, refused when it is not the one that built the bank."""
    if not encoder_id:
        return None
    if encoder_id != factors.meta.encoder:
        raise IncompatibleArtifacts(
            f"GMEM_BANK_ENCODER is {encoder_id!r} but the bank {factors.path} was built with encoder "
            f"{factors.meta.encoder!r}; configure {factors.meta.encoder!r} (or leave it unset to accept features only)"
        )
    from training.encoders.registry import load_encoder  # noqa: PLC0415 - torch only when an encoder is configured

    encoder = load_encoder(encoder_id, str(weights) if weights else None)
    if encoder.feature_dim != factors.feature_dim:
        raise IncompatibleArtifacts(
            f"encoder {encoder_id!r} gives {encoder.feature_dim}-d features but the bank holds "
            f"{factors.feature_dim}-d snippets"
        )
    return encoder


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload fully, refusing non-images, truncated files and oversized pixel counts."""
    if not data:
        raise InvalidImage("the image field is empty; upload a PNG, JPEG or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > max_pixels:
                raise InvalidImage(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                                   "(GMEM_BANK_MAX_IMAGE_PIXELS); downscale it first")
            probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
    except InvalidImage:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError...) for bad bytes
        raise InvalidImage(f"the upload is not a readable image ({type(exc).__name__}: {exc}); "
                           "send a complete PNG, JPEG or WebP file") from exc
    return image


class ImageEncoder:
    """Serialises calls into the encoder (torch modules are not re-entrant across threads)."""

    def __init__(self, encoder: Encoder | None) -> None:
        self.encoder = encoder
        self._lock = threading.Lock()

    def require(self) -> Encoder:
        if self.encoder is None:
            raise EncoderUnavailable(
                "image inserts need an encoder: start the bank with GMEM_BANK_ENCODER set to the bank's encoder id "
                "(and GMEM_BANK_ENCODER_WEIGHTS if needed), or send {\"feature\": [...]} instead"
            )
        return self.encoder

    def feature(self, image: Image.Image) -> np.ndarray:
        encoder = self.require()
        with self._lock:
            out = np.asarray(encoder.encode_pil([image]), dtype=np.float64)
        return out.reshape(-1)
