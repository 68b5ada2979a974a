"""The embedded tiny text encoder ``gmem/mnist-text``: a two-layer transformer over a word vocabulary.

Words are lower-cased runs of letters or digits; the vocabulary is every word a
caption can contain (captions.CAPTION_WORDS) plus ``[pad]`` and ``[unk]``, so any
other word of a prompt reads as ``[unk]``. At most ``MAX_TOKENS`` words are read;
longer prompts are truncated and the caller is told.

It is trained on captions alone (it never sees an image): from its mean-pooled
token states ``mean_i T_i`` four linear heads predict the digit and, per attribute,
the bucket the caption names or "not named". That makes the pooled vector carry
what the caption says, which is what the T2S adapter then maps to snippet space.
The heads are dropped after training; the weights go into a safetensors file with
the vocabulary in its metadata (no pickle).
"""

from __future__ import annotations

import json
import re
from typing import cast

import numpy as np
import torch
from torch import nn

from training.t2s.captions import CAPTION_WORDS

TINY_TEXT_ID = "gmem/mnist-text"
MAX_TOKENS = 16
SPECIALS = ("[pad]", "[unk]")
_WORD = re.compile(r"[a-z0-9]+")


def default_vocab() -> list[str]:
    return [*SPECIALS, *CAPTION_WORDS]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class TinyTextNet(nn.Module):
    """Token embedding + learned positions + a 2-layer pre-norm transformer encoder -> token states T_i."""

    def __init__(
        self, vocab_size: int, dim: int = 64, depth: int = 2, heads: int = 4, max_tokens: int = MAX_TOKENS
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_tokens, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor=False: one code path in training and serving, whatever the padding.
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token states ``mean_i T_i`` [N, dim] of token ids [N, L] with mask [N, L] (True =
        word)."""
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.blocks(h, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(h.dtype)
        return cast(torch.Tensor, (h * m).sum(1) / m.sum(1).clamp_min(1.0))


def tokenize(
    texts: list[str], vocab: list[str], max_tokens: int = MAX_TOKENS
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    """(ids [N, L], mask [N, L], word count of each text before truncation, the text as read)."""
    index = {w: k for k, w in enumerate(vocab)}
    rows, counts, kept = [], [], []
    for t in texts:
        ws = words(t)
        counts.append(len(ws))
        ws = ws[:max_tokens] or ["[unk]"]  # an empty prompt still needs one position to pool
        kept.append(" ".join(ws))
        rows.append([index.get(w, 1) for w in ws])
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask, counts, kept


def train_tiny_text(
    texts: list[str],
    targets: np.ndarray,
    steps: int = 300,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    dim: int = 64,
) -> tuple[TinyTextNet, list[str], float]:
    """Train the encoder to read (digit, thickness, slant, size) back from captions; returns (net, vocab,
    acc)."""
    torch.manual_seed(seed)
    vocab = default_vocab()
    net = TinyTextNet(len(vocab), dim=dim)
    classes = (10, 4, 4, 4)
    heads = nn.ModuleList(nn.Linear(dim, c) for c in classes)
    ids, mask, _, _ = tokenize(texts, vocab)
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    opt = torch.optim.AdamW([*net.parameters(), *heads.parameters()], lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        pick = torch.randint(0, len(texts), (min(batch, len(texts)),), generator=gen)
        pooled = net(ids[pick], mask[pick])
        # sum() starts from int 0; with four heads the result is always a tensor.
        loss = cast(
            torch.Tensor, sum(nn.functional.cross_entropy(h(pooled), y[pick, k]) for k, h in enumerate(heads))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
    net.eval()
    with torch.no_grad():
        pooled = torch.cat([net(ids[s : s + 1024], mask[s : s + 1024]) for s in range(0, len(texts), 1024)])
        acc = float((heads[0](pooled).argmax(1) == y[:, 0]).float().mean())
    return net, vocab, acc


def tiny_metadata(net: TinyTextNet, vocab: list[str]) -> dict[str, str]:
    """Everything needed to rebuild the net from its tensors (strings, for safetensors metadata)."""
    return {
        "text_encoder": TINY_TEXT_ID,
        "text_vocab": json.dumps(vocab),
        "text_config": json.dumps(
            {
                "dim": net.embed.embedding_dim,
                "depth": len(net.blocks.layers),
                "heads": net.blocks.layers[0].self_attn.num_heads,
                "max_tokens": int(net.pos.shape[0]),
            }
        ),
    }


def tiny_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, str]
) -> tuple[TinyTextNet, list[str]]:
    """Rebuild the encoder from ``text.*`` tensors and its metadata (see tiny_metadata)."""
    vocab = json.loads(meta["text_vocab"])
    cfg = json.loads(meta["text_config"])
    net = TinyTextNet(
        len(vocab),
        dim=int(cfg["dim"]),
        depth=int(cfg["depth"]),
        heads=int(cfg["heads"]),
        max_tokens=int(cfg["max_tokens"]),
    )
    net.load_state_dict({k.removeprefix("text."): v for k, v in tensors.items() if k.startswith("text.")})
    return net.eval().requires_grad_(False), vocab
