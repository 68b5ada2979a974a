"""Source images behind base snippets: the playground's dataset readers agree with training.data, row for
row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from services.playground.provenance import SourceImages
from training.data import list_image_folder, load_dataset


def decoded(png: bytes | None) -> np.ndarray:
    assert png is not None
    return np.asarray(Image.open(io.BytesIO(png)))


def test_mnist_rows_are_the_training_datasets_rows() -> None:
    for name in ("mnist-5k:train", "mnist-5k:eval", "mnist-5k"):
        ds = load_dataset(name)
        src = SourceImages(name)
        assert src.available(len(ds))
        for i in (0, 1, len(ds) // 2, len(ds) - 1):
            assert np.array_equal(decoded(src.png(i, len(ds))), ds.images[i][..., 0])
        assert src.png(len(ds), len(ds)) is None  # not a base row


def test_folder_rows_follow_the_folder_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, names in {"b-cats": ["z.png", "a.jpg"], "a-dogs": ["m.webp", "c.png", "notes.txt"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            if n.endswith(".txt"):
                (tmp_path / cls / n).write_text("not an image")
            else:
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / cls / n)
    files = list_image_folder(tmp_path)[0]
    src = SourceImages(str(tmp_path))
    assert src.available(len(files)) and len(files) == 4
    for i, f in enumerate(files):
        with Image.open(f) as im:
            assert np.array_equal(decoded(src.png(i, len(files))), np.asarray(im.convert("RGB")))


def test_a_source_that_does_not_match_the_bank_is_refused_with_a_reason() -> None:
    src = SourceImages("mnist-5k:train")
    assert not src.available(4501)
    assert "4500 images" in (src.reason or "") and src.png(0, 4501) is None
    unknown = SourceImages("imagenet-1k:train")
    assert not unknown.available(10) and "GMEM_PLAYGROUND_SOURCE" in (unknown.reason or "")
    assert not SourceImages(None).available(10)


def test_an_uploaded_style_image_is_kept_for_its_snippet() -> None:
    src = SourceImages(None)
    src.remember_upload(4500, b"png-bytes")
    assert src.has(4500, 4500) and src.png(4500, 4500) == b"png-bytes" and not src.has(4501, 4500)
