"""Tiny CLIP and T5 text towers built from configs and written with save_pretrained (nothing downloaded)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

CLIP_MAX_TOKENS = 12
T5_MAX_TOKENS = 8


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLIP's text tower at width 32 with a character-level BPE vocabulary (no merges)."""
    tmp = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(tmp / "vocab.json"),
        str(tmp / "merges.txt"),
        model_max_length=CLIP_MAX_TOKENS,
        pad_token="<|endoftext|>",
    )
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    out = tmp / "clip-text-tiny"
    CLIPTextModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T5's encoder at width 16 with a word-level tokenizer."""
    out = tmp_path_factory.mktemp("t5") / "t5-encoder-tiny"
    words = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in "a handwritten digit the of seven zero one two three four five six eight nine".split():
        words[w] = len(words)
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=T5_MAX_TOKENS,
    )
    T5EncoderModel(
        T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    ).save_pretrained(out)
    tok.save_pretrained(out)
    return out
