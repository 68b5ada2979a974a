"""The T2S adapter g_phi (GMem, ICLR version, section 4.4 and appendix H) and its file format.

``s = g_phi(mean_i T_i)``: a two-layer MLP from a text encoder's mean-pooled token
states to the snippet space, output L2-normalised like every snippet.

File (safetensors): tensors ``adapter.0.weight``, ``adapter.0.bias``, ``adapter.2.weight``,
``adapter.2.bias`` and, when the text encoder is the embedded tiny one, its ``text.*``
tensors (so the adapter file is self-contained). ``__metadata__``: ``format`` = ``gmem-t2s``,
``format_version`` = ``1``, ``text_encoder`` (``gmem/mnist-text`` or the local folder of a
CLIP/T5 text model), ``text_dim``, ``snippet_dim``, ``hidden``, ``encoder`` (the snippet
encoder of the bank it was trained on), ``source``, ``objective``, ``steps``,
``retrieval_accuracy``; for the embedded encoder also ``text_vocab`` and ``text_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shared.errors import DimensionMismatch, EncoderUnavailable, UnknownFormat
from shared.fileio import atomic_path
from training.t2s.text_encoders import TextEncoder, TextEncoding, TinyTextEncoder, load_text_encoder
from training.t2s.tiny_text import TINY_TEXT_ID, tiny_from_tensors, tiny_metadata

T2S_FORMAT = "gmem-t2s"
T2S_VERSION = "1"


class Adapter(nn.Module):
    """g_phi: Linear(text_dim, hidden) -> GELU -> Linear(hidden, snippet_dim), then L2 normalisation."""

    def __init__(self, text_dim: int, snippet_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, snippet_dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mlp(pooled), dim=-1)


@dataclass(frozen=True)
class T2SMeta:
    text_encoder: str
    text_dim: int
    snippet_dim: int
    hidden: int
    encoder: str
    extra: dict[str, str]


def save_t2s(
    path: str | Path, adapter: Adapter, text: TextEncoder, encoder: str, extra: dict[str, str]
) -> None:
    """Write the adapter file (atomic); embeds the tiny text encoder's weights when it is the one used."""
    tensors = {
        f"adapter.{k.removeprefix('mlp.')}": v.detach().contiguous().cpu()
        for k, v in adapter.state_dict().items()
    }
    lin0, lin2 = adapter.mlp[0], adapter.mlp[2]
    meta = {
        "format": T2S_FORMAT,
        "format_version": T2S_VERSION,
        "text_encoder": text.id,
        "text_dim": str(lin0.in_features),
        "snippet_dim": str(lin2.out_features),
        "hidden": str(lin0.out_features),
        "encoder": encoder,
        **extra,
    }
    if isinstance(text, TinyTextEncoder):
        tensors.update({f"text.{k}": v.detach().contiguous().cpu() for k, v in text.net.state_dict().items()})
        meta.update(tiny_metadata(text.net, text.vocab))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_t2s_meta(path: str | Path) -> T2SMeta:
    """The header of an adapter file; refuses files of another format or version, naming both."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = dict(f.metadata() or {})
    except (OSError, ValueError, RuntimeError) as exc:
        raise EncoderUnavailable(f"{path}: not a readable safetensors adapter file ({exc})") from exc
    if md.get("format") != T2S_FORMAT or md.get("format_version") != T2S_VERSION:
        raise UnknownFormat(
            f"{path}: format {md.get('format')!r} version {md.get('format_version')!r}; "
            f"this reader knows {T2S_FORMAT!r} version {T2S_VERSION}"
        )
    try:
        return T2SMeta(
            md["text_encoder"],
            int(md["text_dim"]),
            int(md["snippet_dim"]),
            int(md["hidden"]),
            md["encoder"],
            md,
        )
    except (KeyError, ValueError) as exc:
        raise UnknownFormat(f"{path}: gmem-t2s metadata is missing or malformed ({exc})") from exc


class T2S:
    """A loaded adapter and its text encoder: prompts -> unit snippets [N, d]."""

    def __init__(self, adapter: Adapter, text: TextEncoder, meta: T2SMeta) -> None:
        self.adapter, self.text, self.meta = adapter.eval().requires_grad_(False), text, meta

    @torch.no_grad()
    def snippets(self, prompts: list[str]) -> tuple[np.ndarray, TextEncoding]:
        enc = self.text.encode(prompts)
        s = self.adapter(torch.from_numpy(enc.pooled)).numpy().astype(np.float32)
        return s, enc


def _resolve_folder(name: str, adapter_path: Path) -> str:
    p = Path(name)
    if p.is_absolute() or p.exists():
        return name
    beside = adapter_path.parent / p
    return str(beside) if beside.exists() else name


def load_t2s(path: str | Path, text_encoder: str | None = None, device: str = "cpu") -> T2S:
    """Load an adapter file; ``text_encoder`` overrides where a foreign (CLIP/T5) encoder is read from."""
    path = Path(path)
    meta = read_t2s_meta(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.text_encoder == TINY_TEXT_ID and text_encoder is None:
        text: TextEncoder = TinyTextEncoder(*tiny_from_tensors(tensors, meta.extra))
    else:
        text = load_text_encoder(text_encoder or _resolve_folder(meta.text_encoder, path), device)
    if text.dim != meta.text_dim:
        raise DimensionMismatch(
            f"{path}: the adapter takes text features of dimension {meta.text_dim}, but the "
            f"text encoder {text.id!r} gives {text.dim}; use the encoder it was trained with"
        )
    adapter = Adapter(meta.text_dim, meta.snippet_dim, meta.hidden)
    adapter.load_state_dict(
        {f"mlp.{k.removeprefix('adapter.')}": v for k, v in tensors.items() if k.startswith("adapter.")}
    )
    return T2S(adapter, text, meta)


def describe(meta: T2SMeta) -> str:
    return json.dumps(
        {"text_encoder": meta.text_encoder, "snippet_dim": meta.snippet_dim, "encoder": meta.encoder}
    )
