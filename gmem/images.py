"""PNG helpers for the CLI and the demo: decode the generator's base64 PNGs, save, tile."""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidImage


def decode_png(data: str | bytes) -> Image.Image:
    """A PIL image from PNG bytes or their base64 text (as in /generate's ``images``)."""
    raw = data
    if isinstance(data, str):
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImage(f"image is not valid base64 ({exc}); expected a base64-encoded PNG") from exc
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidImage(f"image bytes are not a readable PNG ({exc})") from exc
    return img


def grid(
    images: Sequence[Image.Image], columns: int | None = None, pad: int = 2, background: int = 128
) -> Image.Image:
    """Tile images row-major in ``ceil(sqrt(n))`` columns with ``pad`` pixels around every cell.

    The padding is mid-grey so cells stay apart on both dark (MNIST) and light images.
    """
    if not images:
        raise ValueError("grid needs at least one image")
    n = len(images)
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    mode = "RGB" if any(im.mode not in ("L", "1") for im in images) else "L"
    fill = (background,) * 3 if mode == "RGB" else background
    canvas = Image.new(mode, (cols * (w + pad) + pad, rows * (h + pad) + pad), fill)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas.paste(im.convert(mode), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def save_images(
    images: Sequence[str | bytes], out_dir: Path, stem: str, grid_columns: int | None = None, scale: int = 1
) -> tuple[list[Path], Path]:
    """Write each image as ``<stem>-<k>.png`` and a ``<stem>-grid.png``; returns (paths, grid path).

    ``scale`` enlarges with nearest-neighbour so 32x32 digits are visible in an image viewer.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    decoded = [decode_png(b) for b in images]
    if scale > 1:
        decoded = [
            im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in decoded
        ]
    paths = []
    for k, im in enumerate(decoded):
        p = out_dir / f"{stem}-{k:02d}.png"
        im.save(p)
        paths.append(p)
    grid_path = out_dir / f"{stem}-grid.png"
    grid(decoded, columns=grid_columns).save(grid_path)
    return paths, grid_path
