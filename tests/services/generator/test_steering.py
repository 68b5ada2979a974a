"""Pinned snippets steer the committed default model: snippets of 7s draw 7s (judged by the evalnet)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import torch
from PIL import Image

from shared.factors import load_factors
from tests.support.services import DEFAULT_BANK
from training.encoders.registry import load_encoder


def classify(pngs: list[str]) -> np.ndarray:
    """Digit classes from the embedded evaluation network (never the bank's encoder)."""
    evalnet = load_encoder("gmem/mnist-evalnet")
    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p))), dtype=np.float32) for p in pngs]
    x = torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1.0
    with torch.no_grad():
        return evalnet.net.head(evalnet.encode(x)).argmax(1).numpy()


def test_snippets_of_one_digit_draw_that_digit(gen_url: str):
    labels = np.asarray(load_factors(DEFAULT_BANK).labels)
    info = httpx.get(gen_url + "/model").json()
    steps = min(info["default_steps"], info["max_steps"])
    hits = {}
    for digit in (7, 0, 3):
        rows = np.flatnonzero(labels == digit)
        ids = rows[np.linspace(0, len(rows) - 1, 16).astype(int)].tolist()
        images = []
        for half in (ids[:8], ids[8:]):
            r = httpx.post(
                gen_url + "/generate",
                json={"n": 8, "seed": 100 * digit + len(images), "steps": steps, "snippet_ids": half},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            images += r.json()["images"]
        hits[digit] = float((classify(images) == digit).mean())
    # Chance is 0.1 per digit; the snippet must decide the class for most images.
    assert np.mean(list(hits.values())) >= 0.7 and min(hits.values()) >= 0.5, hits
