"""Text encoders from local folders only: tiny CLIP and T5 towers through our loader, and the embedded one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import EncoderUnavailable, InvalidInput
from training.t2s.text_encoders import HFTextEncoder, TinyTextEncoder, load_text_encoder
from training.t2s.tiny_text import MAX_TOKENS

from .conftest import CLIP_MAX_TOKENS, T5_MAX_TOKENS

SHIPPED = Path(__file__).resolve().parents[3] / "artifacts" / "mnist-5k" / "t2s.safetensors"


def test_tiny_clip_from_save_pretrained_loads_and_truncates(tiny_clip_dir: Path):
    enc = load_text_encoder(str(tiny_clip_dir))
    assert isinstance(enc, HFTextEncoder) and enc.kind == "clip"
    assert enc.dim == 32 and enc.max_tokens == CLIP_MAX_TOKENS
    out = enc.encode(["a seven", "a very long prompt about a seven"])
    # Characters are tokens here (no merges): letters + start + end ("a seven": 6 + 2).
    assert out.tokens == [8, 28] and out.truncated == [False, True]
    assert out.pooled.shape == (2, 32) and np.isfinite(out.pooled).all()
    # Pooling ignores padding: a text alone and in a padded batch read the same.
    alone = enc.encode(["a seven"]).pooled[0]
    np.testing.assert_allclose(alone, out.pooled[0], atol=1e-5)


def test_tiny_t5_encoder_loads_and_truncates(tiny_t5_dir: Path):
    enc = load_text_encoder(str(tiny_t5_dir))
    assert enc.kind == "t5" and enc.dim == 16 and enc.max_tokens == T5_MAX_TOKENS
    out = enc.encode(["a handwritten seven", "a " * 12 + "seven"])
    assert out.truncated == [False, True] and out.read[1].split() == ["a"] * T5_MAX_TOKENS


def test_embedded_encoder_reads_words_and_reports_truncation():
    enc = load_text_encoder("gmem/mnist-text")
    assert isinstance(enc, TinyTextEncoder) and enc.max_tokens == MAX_TOKENS
    out = enc.encode(["A Handwritten SEVEN!", "seven " * 20, "a zebra"])
    assert out.read[0] == "a handwritten seven" and out.tokens == [3, 20, 2]
    assert out.truncated == [False, True, False]
    assert not np.allclose(out.pooled[0], enc.encode(["a handwritten one"]).pooled[0])


def test_unusable_specs_are_refused_clearly(tmp_path: Path):
    with pytest.raises(InvalidInput, match="nothing is downloaded"):
        load_text_encoder("openai/clip-vit-large-patch14")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EncoderUnavailable, match="bert"):
        load_text_encoder(str(tmp_path))
    with pytest.raises(EncoderUnavailable, match="no embedded text encoder"):
        load_text_encoder(str(SHIPPED.parent / "bank.safetensors"))
