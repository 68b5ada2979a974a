"""Text encoders for the T2S adapter, loaded only from local files: token states T_i, mean-pooled.

Three kinds, chosen by what ``spec`` names:

- ``gmem/mnist-text`` or a ``.safetensors`` file holding ``text.*`` tensors (a gmem-t2s
  adapter embeds its tiny encoder): the embedded word-level transformer (tiny_text.py);
- a folder with a ``config.json`` of ``model_type`` ``clip``/``clip_text_model``: CLIP's
  text tower (``transformers.CLIPTextModel``) with the folder's tokenizer;
- a folder whose ``model_type`` is ``t5``/``mt5``/``umt5``: T5's encoder
  (``transformers.T5EncoderModel``) with the folder's tokenizer.

Nothing is downloaded (``local_files_only``). Prompts longer than the encoder's
token limit are truncated to it; each encoding reports token counts and truncation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from shared.errors import EncoderUnavailable, InvalidInput
from training.t2s.tiny_text import TINY_TEXT_ID, TinyTextNet, tiny_from_tensors, tokenize

DEFAULT_TINY_FILE = "artifacts/mnist-5k/t2s.safetensors"
CLIP_TYPES = ("clip", "clip_text_model")
T5_TYPES = ("t5", "mt5", "umt5")


@dataclass(frozen=True)
class TextEncoding:
    """Pooled text features [N, D] and, per text, its token count, whether it was truncated, the text as
    read."""

    pooled: np.ndarray
    tokens: list[int]
    truncated: list[bool]
    read: list[str]
    max_tokens: int


class TextEncoder:
    """A frozen text encoder: texts in, ``mean_i T_i`` out."""

    id: str
    dim: int
    max_tokens: int
    kind: str

    def encode(self, texts: list[str]) -> TextEncoding:
        raise NotImplementedError


class TinyTextEncoder(TextEncoder):
    kind = "embedded"

    def __init__(self, net: TinyTextNet, vocab: list[str]) -> None:
        self.net, self.vocab = net.eval().requires_grad_(False), vocab
        self.id = TINY_TEXT_ID
        self.dim = int(net.embed.embedding_dim)
        self.max_tokens = int(net.pos.shape[0])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEncoding:
        ids, mask, counts, read = tokenize(texts, self.vocab, self.max_tokens)
        pooled = torch.cat(
            [self.net(ids[s : s + 1024], mask[s : s + 1024]) for s in range(0, len(texts), 1024)]
        )
        return TextEncoding(
            pooled.float().numpy(), counts, [c > self.max_tokens for c in counts], read, self.max_tokens
        )


class HFTextEncoder(TextEncoder):
    """CLIP's or T5's text tower from a local folder, through ``transformers``."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        # transformers is imported here: it is heavy and only needed for foreign encoders.
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
        model_type = _model_type(folder)
        cls = transformers.CLIPTextModel if model_type in CLIP_TYPES else transformers.T5EncoderModel
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            # transformers types from_pretrained through a decorator whose stub expects a model, not a path.
            self.model = cls.from_pretrained(str(folder), local_files_only=True).to(device).eval()  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(
                f"{folder}: cannot load a {cls.__name__} and its tokenizer from this folder ({exc})"
            ) from exc
        self.model.requires_grad_(False)
        self.device = device
        self.id = str(folder)
        self.kind = "clip" if model_type in CLIP_TYPES else "t5"
        self.dim = int(self.model.config.hidden_size if self.kind == "clip" else self.model.config.d_model)
        limit = getattr(self.tokenizer, "model_max_length", None)
        fallback = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_tokens = int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else int(fallback)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEncoding:
        counts = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        batch = self.tokenizer(
            texts, truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt"
        ).to(self.device)
        states = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        read = self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        return TextEncoding(
            pooled.float().cpu().numpy(),
            counts,
            [c > self.max_tokens for c in counts],
            [r.strip() for r in read],
            self.max_tokens,
        )


def _model_type(folder: Path) -> str:
    cfg = folder / "config.json"
    try:
        model_type = str(json.loads(cfg.read_text()).get("model_type", ""))
    except (OSError, ValueError) as exc:
        raise EncoderUnavailable(
            f"{folder}: no readable config.json ({exc}); give a folder written by "
            "save_pretrained of a CLIP or T5 text model"
        ) from exc
    if model_type not in CLIP_TYPES + T5_TYPES:
        raise EncoderUnavailable(
            f"{folder}: model_type {model_type!r} is not a supported text encoder; "
            f"use one of {', '.join(CLIP_TYPES + T5_TYPES)}"
        )
    return model_type


def read_embedded(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The ``text.*`` tensors and metadata of a safetensors file that embeds the tiny encoder."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("text.")}
    except (OSError, ValueError, RuntimeError) as exc:
        raise EncoderUnavailable(f"{path}: not a readable safetensors file ({exc})") from exc
    if not tensors or "text_vocab" not in meta:
        raise EncoderUnavailable(f"{path}: holds no embedded text encoder (no text.* tensors and vocabulary)")
    return tensors, meta


def load_text_encoder(spec: str, device: str = "cpu") -> TextEncoder:
    """The text encoder ``spec`` names (see the module docstring)."""
    if spec == TINY_TEXT_ID:
        spec = DEFAULT_TINY_FILE
    path = Path(spec)
    if path.is_dir():
        return HFTextEncoder(path, device)
    if path.is_file():
        return TinyTextEncoder(*tiny_from_tensors(*read_embedded(path)))
    raise InvalidInput(
        f"text encoder {spec!r} is neither {TINY_TEXT_ID}, a .safetensors file with an embedded "
        "text encoder, nor a local folder of a CLIP or T5 text model (nothing is downloaded)"
    )
