"""Source images behind snippets: the provenance view ("which training images is this close to?").

Base row i of a factors file is image i of the dataset it was built from (CONTRACT.md section 1:
row order is the source's order), and the file records that dataset as ``source``. When the
source is ``mnist-5k[:split]`` or an image folder this process can read, base snippet i maps to
that image. Style images uploaded through the playground are kept too (the last few, in memory),
so an inserted snippet shows the image it came from while the playground runs.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import MNIST_NAME, list_image_folder, load_mnist_5k

THUMB_MAX = 256  # folder images are shrunk to this edge for the page
MAX_UPLOADS = 256


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
        self._images: np.ndarray | None = None  # mnist-5k: uint8 [N, H, W, C]
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
                self._images = load_mnist_5k(self.source).images  # type: ignore[arg-type]
                n = len(self._images)
            elif self.kind == "folder":
                self._files = list_image_folder(Path(self.source))[0]  # type: ignore[arg-type]
                n = len(self._files)
            else:
                if self.source:
                    self.reason = (f"the bank's source {self.source!r} is not mnist-5k or an image folder on "
                                   "this machine (set GMEM_PLAYGROUND_SOURCE to point at it)")
                return
        except Exception as exc:  # noqa: BLE001 - any unreadable dataset only disables provenance
            self._images = self._files = None
            self.reason = f"could not open the source {self.source!r}: {exc}"
            return
        if n != base_size:
            self._images = self._files = None
            self.reason = (f"the source {self.source!r} holds {n} images but the bank has {base_size} base rows; "
                           "they are not the same dataset")

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
            arr = self._images[snippet_id]
            return _png(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr))
        assert self._files is not None
        with Image.open(self._files[snippet_id]) as im:
            im.load()
            im.thumbnail((THUMB_MAX, THUMB_MAX))
            return _png(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
