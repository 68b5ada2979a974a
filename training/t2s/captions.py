"""Captions of digit images from their labels and three measured image properties.

Every image of a labelled grey dataset (mnist-5k) gets words for:

- its digit: the label as a word ("seven"), or as a numeral ("7") in some templates;
- stroke thickness from pixel mass: ``m = sum(x) / 255`` (ink in pixels) divided by the
  height in rows of the ink's bounding box (rows with a pixel >= 128), i.e. ink pixels per
  row of digit, roughly the stroke width times the number of strokes a row crosses;
- slant from second moments of the intensity: with ``x`` to the right and ``y`` down,
  ``shear = -mu11 / mu02`` (central moments, intensity weights); > 0 when the top of the
  digit leans right, the quantity MNIST deskewing removes;
- size: the ink's bounding-box height in pixels (rows with a pixel >= 128).

Each property is cut at the dataset's terciles into three buckets: thin / - / thick,
slanted left / upright / slanted right, small / - / large ("-" = no word). The
canonical caption names everything: ``"a handwritten seven, thick strokes, slanted
right, small"``. Training captions draw, per (row, variant), a template and a random
subset of the attribute phrases, so a prompt naming only the digit ("a handwritten
seven") is in the training distribution too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin strokes", "", "thick strokes")
SLANT = ("slanted left", "upright", "slanted right")
SIZE = ("small", "", "large")
TEMPLATES = (
    "a handwritten {w}",
    "a handwritten digit {n}",
    "the digit {w}",
    "a picture of a {w}",
    "an image of the number {n}",
    "a {w}",
    "number {w}",
    "a drawing of the digit {w}",
)
# Every word a caption can contain (the tiny text encoder's vocabulary is built from it).
CAPTION_WORDS = sorted(
    {
        *DIGIT_WORDS,
        *(str(k) for k in range(10)),
        *" ".join(TEMPLATES).replace("{w}", "").replace("{n}", "").split(),
        *" ".join(THICKNESS + SLANT + SIZE).split(),
        "digit",
        "and",
        "with",
    }
)
INK = 128


@dataclass(frozen=True)
class Properties:
    """Measured properties of each image [N] and their tercile buckets (0, 1, 2)."""

    thickness: np.ndarray
    slant: np.ndarray
    size: np.ndarray
    buckets: np.ndarray  # int64 [N, 3]: thickness, slant, size


def measure(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thickness, slant, size) of uint8 grey images [N, H, W, 1] (see the module docstring)."""
    x = np.asarray(images, dtype=np.float64)[..., 0] / 255.0
    n, h, w = x.shape
    mass = x.sum(axis=(1, 2))
    rows_with_ink = cast(
        np.ndarray, (np.asarray(images)[..., 0] >= INK).any(axis=2)
    )  # numpy types .any() as maybe-scalar
    first = np.where(rows_with_ink.any(1), rows_with_ink.argmax(1), 0)
    last = np.where(rows_with_ink.any(1), h - 1 - rows_with_ink[:, ::-1].argmax(1), -1)
    height = np.maximum(last - first + 1, 1).astype(np.float64)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    total = np.maximum(mass, 1e-9)
    cy = (x * ys).sum(axis=(1, 2)) / total
    cx = (x * xs).sum(axis=(1, 2)) / total
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    mu11 = (x * dx * dy).sum(axis=(1, 2)) / total
    mu02 = np.maximum((x * dy * dy).sum(axis=(1, 2)) / total, 1e-9)
    return mass / height, -mu11 / mu02, height


def properties(images: np.ndarray) -> Properties:
    """Measure every image and bucket each property at the dataset's own terciles."""
    thick, slant, size = measure(images)
    cols = []
    for v in (thick, slant, size):
        lo, hi = np.quantile(v, [1 / 3, 2 / 3])
        cols.append(np.digitize(v, [lo, hi]))
    return Properties(thick, slant, size, np.stack(cols, axis=1).astype(np.int64))


def caption(
    label: int,
    buckets: tuple[int, int, int] | np.ndarray,
    template: int = 0,
    keep: tuple[bool, bool, bool] = (True, True, True),
) -> str:
    """One caption: template ``template`` for the digit, then the kept attribute phrases that have words."""
    head = TEMPLATES[template].format(w=DIGIT_WORDS[int(label)], n=int(label))
    phrases = [
        table[int(b)] for table, b, k in zip((THICKNESS, SLANT, SIZE), buckets, keep, strict=True) if k
    ]
    return ", ".join([head, *(p for p in phrases if p)])


def canonical_captions(labels: np.ndarray, props: Properties) -> list[str]:
    """The full caption of each image: first template, every attribute."""
    return [caption(int(y), props.buckets[i]) for i, y in enumerate(labels)]


def training_captions(
    labels: np.ndarray, props: Properties, variants: int, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``variants`` random captions per image: (captions, row of each, attribute targets [M, 4]).

    Targets are the digit and, per attribute, its bucket or 3 when the caption leaves it out;
    the tiny text encoder learns to read them back from its pooled tokens.
    """
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    rows: list[int] = []
    targets: list[list[int]] = []
    for v in range(variants):
        for i, y in enumerate(labels):
            # Variant 0 is the bare digit half of the time, so short prompts are well covered.
            keep = cast(
                tuple[bool, bool, bool],
                tuple(bool(k) for k in rng.random(3) < (0.0 if v == 0 and i % 2 == 0 else 0.5)),
            )
            template = int(rng.integers(len(TEMPLATES)))
            texts.append(caption(int(y), props.buckets[i], template, keep))
            rows.append(i)
            targets.append(
                [int(y), *(int(b) if k else 3 for b, k in zip(props.buckets[i], keep, strict=True))]
            )
    return texts, np.asarray(rows, dtype=np.int64), np.asarray(targets, dtype=np.int64)


def digit_prompt(label: int) -> str:
    """The prompt the steering check uses for a digit: ``"a handwritten seven"``."""
    return caption(label, (1, 1, 1), 0, (False, False, False))
