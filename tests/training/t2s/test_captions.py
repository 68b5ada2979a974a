"""Captions from labels and measured properties: thickness from pixel mass, slant from second moments,
size."""

from __future__ import annotations

import numpy as np

from training.t2s.captions import DIGIT_WORDS, caption, digit_prompt, measure, properties, training_captions


def bar(width: int, height: int, shear: float = 0.0) -> np.ndarray:
    """A full-intensity bar on 32x32, centred; shear > 0 moves its top to the right (x = x0 - shear * y)."""
    img = np.zeros((32, 32), dtype=np.uint8)
    top = (32 - height) // 2
    for y in range(top, top + height):
        x0 = int(round(16 - width / 2 - shear * (y - 16)))
        img[y, max(0, x0) : x0 + width] = 255
    return img[:, :, None]


def test_thickness_is_ink_per_row_and_size_is_ink_height():
    thick, _, size = measure(np.stack([bar(2, 20), bar(5, 20), bar(3, 10)]))
    np.testing.assert_allclose(thick, [2.0, 5.0, 3.0])
    np.testing.assert_allclose(size, [20.0, 20.0, 10.0])


def test_slant_sign_follows_the_lean_of_the_top():
    _, slant, _ = measure(np.stack([bar(3, 20, 0.4), bar(3, 20, 0.0), bar(3, 20, -0.4)]))
    assert slant[0] > 0.3 and abs(slant[1]) < 1e-9 and slant[2] < -0.3


def test_buckets_are_dataset_terciles():
    imgs = np.stack([bar(w, 20) for w in (1, 2, 3, 4, 5, 6)])
    assert properties(imgs).buckets[:, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_caption_words():
    assert caption(7, (2, 2, 0)) == "a handwritten seven, thick strokes, slanted right, small"
    assert caption(3, (1, 1, 1)) == "a handwritten three, upright"
    assert (
        caption(4, (0, 0, 2), template=1, keep=(True, False, True))
        == "a handwritten digit 4, thin strokes, large"
    )
    assert digit_prompt(9) == "a handwritten nine"


def test_training_captions_name_what_their_targets_say():
    imgs = np.stack([bar(w, h, s) for w, h, s in [(1, 10, -0.4), (3, 20, 0.0), (6, 28, 0.4)] * 4])
    labels = np.arange(12) % 10
    texts, rows, targets = training_captions(labels, properties(imgs), variants=3, seed=1)
    assert len(texts) == 36 and rows.tolist() == list(range(12)) * 3
    for text, t in zip(texts, targets, strict=True):
        assert DIGIT_WORDS[t[0]] in text or f" {t[0]}" in text
        assert ("thin strokes" in text) == (t[1] == 0) and ("thick strokes" in text) == (t[1] == 2)
        assert ("slanted left" in text) == (t[2] == 0) and ("upright" in text) == (t[2] == 1)
        assert ("small" in text) == (t[3] == 0) and ("large" in text) == (t[3] == 2)
