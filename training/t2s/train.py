"""`python -m training train-t2s`: fit the T2S adapter on (caption, snippet) pairs of a bank's own dataset.

Pairs: bank row i is the snippet of dataset image i (CONTRACT.md section 1: row
order is the dataset's), so image i's captions (captions.py) pair with snippet
``s_i = normalize(C[i] B^T + mu)``. Rows ``i % 10 == 9`` are held out of every
training step (text encoder and adapter) and give the retrieval accuracy.

Objective: cosine regression, ``L = 1 - <g(mean_i T_i), s>`` with ``g`` unit-norm.
Many images share a caption, so the minimiser for a caption is the normalised
mean of its images' snippets: a prototype on the snippet sphere, which is what the
generator conditions on in ``adapter`` mode. A contrastive (InfoNCE) loss would only
rank captions against each other and, with in-batch duplicates of one caption as
false negatives, pushes g(text) away from the region of real snippets; we want
g(text) to be a usable snippet, so we regress to the snippets themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import typer

from shared.errors import DimensionMismatch, GMemError, InvalidInput
from shared.factors import load_factors
from training.data import load_dataset
from training.t2s.adapter import Adapter, save_t2s
from training.t2s.captions import (
    DIGIT_WORDS,
    Properties,
    canonical_captions,
    digit_prompt,
    properties,
    training_captions,
)
from training.t2s.metrics import nearest_rows, retrieval_accuracy, wilson
from training.t2s.text_encoders import TextEncoder, TinyTextEncoder, load_text_encoder
from training.t2s.tiny_text import TINY_TEXT_ID, train_tiny_text

OBJECTIVE = "cosine: 1 - <g(mean T), s>"


def encode_unique(text: TextEncoder, texts: list[str]) -> np.ndarray:
    """Pooled features of ``texts``, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    index = {t: k for k, t in enumerate(unique)}
    pooled = np.concatenate([text.encode(unique[s : s + 256]).pooled for s in range(0, len(unique), 256)])
    return pooled[[index[t] for t in texts]]


def fit_adapter(
    x: np.ndarray,
    s: np.ndarray,
    steps: int,
    hidden: int = 256,
    batch: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> Adapter:
    """Minimise ``1 - cos(g(x), s)`` with AdamW over random batches (seeded; cosine-decayed lr)."""
    torch.manual_seed(seed)
    adapter = Adapter(x.shape[1], s.shape[1], hidden)
    X, S = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(s, np.float32))
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(X), (min(batch, len(X)),), generator=gen)
        loss = 1.0 - (adapter(X[pick]) * S[pick]).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return adapter.eval()


def run_train_t2s(
    bank_path: str,
    dataset: str,
    out: str,
    text_encoder: str | None = None,
    steps: int = 2000,
    text_steps: int = 300,
    variants: int = 4,
    hidden: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train (and, for the default, first train the tiny text encoder), write ``out``, return the report."""
    bank = load_factors(bank_path, mmap=False)
    ds = load_dataset(dataset)
    if len(ds) != bank.size:
        raise DimensionMismatch(
            f"dataset {dataset!r} has {len(ds)} images but bank {bank_path} has {bank.size} "
            "rows; give the dataset the bank was built from (row i = image i)"
        )
    labels = np.asarray(ds.labels)
    if bank.labels is not None and not np.array_equal(np.asarray(bank.labels), labels):
        raise InvalidInput(
            f"the labels of {dataset!r} differ from those stored in {bank_path}; "
            "give the dataset the bank was built from"
        )
    if ds.channels != 1 or labels.min() < 0 or labels.max() > 9:
        raise InvalidInput("captions are made for labelled grey digit images (labels 0-9), such as mnist-5k")
    props = properties(ds.images)
    held = np.arange(len(labels)) % 10 == 9
    train_rows = np.flatnonzero(~held)
    texts, rows, targets = training_captions(labels[train_rows], _subset(props, train_rows), variants, seed)
    rows = train_rows[rows]
    report: dict[str, Any] = {"objective": OBJECTIVE, "steps": steps, "pairs": len(texts)}
    if text_encoder in (None, TINY_TEXT_ID):
        net, vocab, acc = train_tiny_text(texts, targets, steps=text_steps, seed=seed)
        text: TextEncoder = TinyTextEncoder(net, vocab)
        report["text_encoder_digit_accuracy"] = acc
    else:
        text = load_text_encoder(cast(str, text_encoder), device)
    x = encode_unique(text, texts)
    snippets = bank.snippets(np.arange(bank.size)).astype(np.float32)
    adapter = fit_adapter(x, snippets[rows], steps, hidden, seed=seed)
    report.update(_evaluate(adapter, text, snippets, labels, props, held))
    report["text_encoder"] = text.id
    extra = {
        "source": bank.meta.source,
        "objective": OBJECTIVE,
        "steps": str(steps),
        "retrieval_accuracy": f"{report['retrieval_accuracy']:.4f}",
        "held_out": "rows i % 10 == 9",
        "report": json.dumps(report),
    }
    save_t2s(out, adapter, text, bank.meta.encoder, extra)
    return report


def _subset(props: Properties, rows: np.ndarray) -> Properties:
    return type(props)(props.thickness[rows], props.slant[rows], props.size[rows], props.buckets[rows])


@torch.no_grad()
def _evaluate(
    adapter: Adapter,
    text: TextEncoder,
    snippets: np.ndarray,
    labels: np.ndarray,
    props: Properties,
    held: np.ndarray,
) -> dict[str, Any]:
    """Held-out retrieval accuracy (canonical captions) and the digit-only prompts' nearest labels."""
    rows = np.flatnonzero(held)
    caps = canonical_captions(labels[rows], _subset(props, rows))
    q = adapter(torch.from_numpy(encode_unique(text, caps))).numpy()
    hits, n = retrieval_accuracy(q, labels[rows], snippets, labels)
    # Attributes: does the nearest bank image have the bucket the caption names? (chance about 1/3)
    top = nearest_rows(q, snippets, 1)[:, 0]
    attrs = {
        name: float((props.buckets[top, k] == props.buckets[rows, k]).mean())
        for k, name in enumerate(("thickness", "slant", "size"))
    }
    prompts = [digit_prompt(k) for k in range(len(DIGIT_WORDS))]
    qd = adapter(torch.from_numpy(text.encode(prompts).pooled)).numpy()
    dh, dn = retrieval_accuracy(qd, np.arange(len(prompts)), snippets, labels)
    return {
        "retrieval_accuracy": hits / n,
        "retrieval_hits": hits,
        "retrieval_n": n,
        "retrieval_ci95": wilson(hits, n),
        "attribute_agreement": attrs,
        "digit_prompt_hits": dh,
        "digit_prompt_n": dn,
    }


def train_t2s_command(
    bank: str = typer.Option(
        ..., "--bank", envvar="GMEM_BANK", help="bank factors file the snippets come from"
    ),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        envvar="GMEM_DATASET",
        help="the dataset the bank was built from (row i = image i), e.g. mnist-5k:train",
    ),
    out: str = typer.Option(..., "--out", envvar="GMEM_T2S_OUT", help="adapter file to write (.safetensors)"),
    text_encoder: str | None = typer.Option(
        None,
        "--text-encoder",
        envvar="GMEM_T2S_TEXT_ENCODER",
        help=f"{TINY_TEXT_ID} (default: trained here on the captions), a .safetensors file embedding it, "
        "or a local folder of a CLIP/T5 text model",
    ),
    steps: int = typer.Option(
        2000, "--steps", min=1, envvar="GMEM_T2S_STEPS", help="adapter optimisation steps"
    ),
    text_steps: int = typer.Option(
        300, "--text-steps", min=1, help="steps of the tiny text encoder (default only)"
    ),
    variants: int = typer.Option(4, "--variants", min=1, help="random captions per training image"),
    hidden: int = typer.Option(256, "--hidden", min=1, help="hidden width of the two-layer adapter"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    threads: int = typer.Option(1, "--threads", min=1, envvar="GMEM_THREADS", help="torch CPU threads"),
    device: str = typer.Option("cpu", "--device", envvar="GMEM_DEVICE", help="device of a CLIP/T5 encoder"),
) -> None:
    """Train the T2S adapter (text -> snippet) and report held-out caption retrieval accuracy."""
    torch.set_num_threads(threads)
    try:
        report = run_train_t2s(
            bank, dataset, out, text_encoder, steps, text_steps, variants, hidden, seed, device
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    lo, hi = report["retrieval_ci95"]
    typer.echo(
        f"wrote {Path(out)}: held-out retrieval accuracy {report['retrieval_accuracy']:.3f} "
        f"(n={report['retrieval_n']}, 95% CI {lo:.3f}-{hi:.3f}); digit prompts "
        f"{report['digit_prompt_hits']}/{report['digit_prompt_n']}"
    )
    typer.echo(json.dumps(report))
