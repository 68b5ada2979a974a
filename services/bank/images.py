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
from PIL import Image, UnidentifiedImageError

from shared.errors import EncoderUnavailable, IncompatibleArtifacts, InvalidImage
from shared.factors import BankFactors


class FeatureEncoder(Protocol):
    id: str
    feature_dim: int

    def encode_pil(self, images: list[Image.Image]) -> np.ndarray: ...


def load_configured_encoder(
    encoder_id: str | None, weights: Path | None, factors: BankFactors
) -> FeatureEncoder | None:
    """The configured encoder, refused when it is not the one that built the bank."""
    if not encoder_id:
        return None
    if encoder_id != factors.meta.encoder:
        raise IncompatibleArtifacts(
            f"GMEM_BANK_ENCODER is {encoder_id!r} but the bank {factors.path} was built with encoder "
            f"{factors.meta.encoder!r}; configure {factors.meta.encoder!r} (or leave it unset to accept "
            "features only)"
        )
    from training.encoders.registry import load_encoder  # torch only when an encoder is configured

    encoder = load_encoder(encoder_id, str(weights) if weights else None)
    if encoder.feature_dim != factors.feature_dim:
        raise IncompatibleArtifacts(
            f"encoder {encoder_id!r} gives {encoder.feature_dim}-d features but the bank holds "
            f"{factors.feature_dim}-d snippets"
        )
    return encoder


# The formats the API documents (README, CONTRACT.md section 4); anything else is refused before
# PIL picks one of its many other decoders (TIFF, PSD, ICO, ... each with its own modes and bugs).
FORMATS = ("PNG", "JPEG", "WEBP")
BLACK, WHITE = 0, 255


def background_for(encoder: FeatureEncoder | None) -> int:
    """The grey level transparent pixels become: what the encoder's training images show there.

    One-channel encoders are the MNIST-style ones (mnist-5k digits are white strokes on a black
    field), so transparency is black; RGB encoders (DINOv2 on photos) get white, the page colour
    a transparent picture is normally seen on.
    """
    return BLACK if getattr(encoder, "channels", 3) == 1 else WHITE


def decode_image(
    data: bytes, max_pixels: int, max_aspect: float = float("inf"), background: int = WHITE
) -> Image.Image:
    """Decode an upload fully into an ``L`` or ``RGB`` image, or raise InvalidImage (a 422).

    Refused: empty or unreadable bytes, formats other than PNG/JPEG/WebP, more than ``max_pixels``
    pixels, a long side more than ``max_aspect`` times the short one (the encoders resize the short
    side to their resolution, so a 1,000,000 x 1 strip would otherwise become a gigapixel image).
    Every mode those formats decode to is converted (16-bit grey scaled to 8 bits, palettes and
    CMYK to colour); an alpha channel is composited onto ``background`` (see ``background_for``).
    """
    if not data:
        raise InvalidImage("the image field is empty; upload a PNG, JPEG or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = probe.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(GMEM_BANK_MAX_IMAGE_PIXELS); downscale it first"
                )
            if min(width, height) < 1 or max(width, height) > max_aspect * min(width, height):
                raise InvalidImage(
                    f"image is {width}x{height}; its long side may be at most {max_aspect:g} times "
                    "its short side (GMEM_BANK_MAX_IMAGE_ASPECT); crop it first"
                )
            probe.verify()
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            image.load()
            return to_canonical(image, background)
    except InvalidImage:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImage(
            "the upload is not a PNG, JPEG or WebP image (the formats the bank decodes); "
            "convert it to PNG first"
        ) from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad bytes
        raise InvalidImage(
            f"the upload is not a readable image ({type(exc).__name__}: {exc}); "
            "send a complete PNG, JPEG or WebP file"
        ) from exc


def to_canonical(image: Image.Image, background: int = WHITE) -> Image.Image:
    """8-bit ``L`` (grey sources) or ``RGB`` (colour sources), alpha composited onto ``background``."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("1", "L", "RGB"):
        image = image.convert(mode if mode != "1" else "L")
    elif mode.startswith(("I", "F")):
        # 16-bit PNG grey ("I;16", or "I" holding 0..65535) and float images: full range to 0..255.
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            values = values * 255.0
        elif mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    elif mode not in ("LA", "La", "RGBA", "RGBa"):
        image = image.convert("RGB")  # CMYK, YCbCr (JPEG) and the like
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        image = _composite(image, background)
    if image.mode not in ("L", "RGB"):
        raise InvalidImage(f"image mode {mode!r} cannot be converted to grey or RGB; send an 8-bit PNG")
    return image


def _composite(image: Image.Image, background: int) -> Image.Image:
    grey = image.mode in ("LA", "La")
    rgba = image.convert("RGBA")  # premultiplied La/RGBa are un-premultiplied here
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
    colour = np.asarray(rgba.convert("RGB"), dtype=np.float64)
    out = colour * alpha[..., None] + background * (1.0 - alpha[..., None])
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if alpha.min() < 1.0 and np.ptp(out8) == 0 and np.ptp(alpha) > 0:
        raise InvalidImage(
            f"the image shows nothing once its transparency is composited onto the encoder's "
            f"{'black' if background == BLACK else 'white'} background (the drawing is only in the alpha "
            "channel, in the background's colour); draw in a contrasting colour or send an opaque image"
        )
    result = Image.fromarray(out8, "RGB")
    return result.convert("L") if grey else result


class ImageEncoder:
    """Serialises calls into the encoder (torch modules are not re-entrant across threads)."""

    def __init__(self, encoder: FeatureEncoder | None) -> None:
        self.encoder = encoder
        self.background = background_for(encoder)
        self._lock = threading.Lock()

    def require(self) -> FeatureEncoder:
        if self.encoder is None:
            raise EncoderUnavailable(
                "image inserts need an encoder: start the bank with GMEM_BANK_ENCODER set to the bank's "
                'encoder id (and GMEM_BANK_ENCODER_WEIGHTS if needed), or send {"feature": [...]} instead'
            )
        return self.encoder

    def feature(self, image: Image.Image) -> np.ndarray:
        encoder = self.require()
        with self._lock:
            out = np.asarray(encoder.encode_pil([image]), dtype=np.float64)
        return out.reshape(-1)
