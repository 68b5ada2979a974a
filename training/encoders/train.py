"""Training the embedded networks: the snippet encoders and the evaluation network.

The default snippet encoder ``gmem/mnist-ssl`` is self-supervised (:mod:`training.encoders.ssl`).
The "strong conditioning" encoder ``gmem/mnist-cnn`` below is kept for the comparison of the
paper's section 3.2 (how much the snippet tells the network). It must put both *what* digit and
*how it is drawn* into its
unit-norm feature, so that conditioning on a snippet transfers style. Its
objective is therefore two heads on the normalised feature ``s = f/|f|``:

    L = CE(W s, y) + lambda * |decoder(s) - x|^2

the classifier keeps classes apart (clusters by digit), the small decoder
forces the snippet to keep stroke width, slant and position. The evaluation
network (a different architecture and seed) is a plain classifier; its
penultimate activations are the features of the Frechet distance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
import typer
from torch import nn
from tqdm import tqdm

from shared.errors import GMemError, InvalidInput
from training.data import load_dataset, to_model_input
from training.encoders.registry import EncoderKind, MnistCNN, MnistEvalNet, save_embedded


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Optimisation settings of one embedded network."""

    encoder_id: str
    feature_dim: int
    epochs: int
    seed: int
    batch_size: int = 128
    lr: float = 2e-3
    recon_weight: float = 4.0  # MSE of [-1, 1] images is ~0.05 when good; CE ~0.05 too


PRESETS: dict[EncoderKind, EncoderTrainConfig] = {
    EncoderKind.mnist_ssl: EncoderTrainConfig("gmem/mnist-ssl", feature_dim=128, epochs=30, seed=0),
    EncoderKind.mnist_cnn: EncoderTrainConfig("gmem/mnist-cnn", feature_dim=128, epochs=20, seed=0, lr=3e-3),
    EncoderKind.evalnet: EncoderTrainConfig(
        "gmem/mnist-evalnet", feature_dim=64, epochs=8, seed=1234, recon_weight=0.0
    ),
}


class SnippetDecoder(nn.Module):
    """Auxiliary decoder (training only): unit-norm snippet -> 32x32 image in [-1, 1]."""

    def __init__(self, feature_dim: int = 128, width: int = 16, channels: int = 1) -> None:
        super().__init__()
        self.width = width
        self.from_feature = nn.Linear(feature_dim, 4 * width * 16)

        def up(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Upsample(scale_factor=2),
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(4, cout),
                nn.SiLU(),
            )

        self.body = nn.Sequential(
            up(4 * width, 2 * width),
            up(2 * width, width),
            up(width, width),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.body(self.from_feature(s).view(-1, 4 * self.width, 4, 4)))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_snippet_encoder(
    x: torch.Tensor, y: torch.Tensor, cfg: EncoderTrainConfig
) -> tuple[MnistCNN, dict[str, Any]]:
    """Train ``gmem/mnist-cnn`` with classification + reconstruction on the unit-norm feature."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = MnistCNN(channels=x.shape[1], feature_dim=cfg.feature_dim)
    head = nn.Linear(cfg.feature_dim, int(y.max()) + 1)
    decoder = SnippetDecoder(cfg.feature_dim, channels=x.shape[1])
    params = [*net.parameters(), *head.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    stats: dict[str, Any] = {}
    bar = tqdm(range(cfg.epochs), desc="train gmem/mnist-cnn", unit="epoch")
    for _ in bar:
        ce_sum = rec_sum = correct = 0.0
        for idx in _batches(len(x), cfg.batch_size, gen):
            xb, yb = x[idx], y[idx]
            s = F.normalize(net(xb), dim=1)
            # A fixed temperature: unit-norm features need logits larger than 1 to be confident.
            logits = head(s) * 10.0
            ce = F.cross_entropy(logits, yb)
            rec = F.mse_loss(decoder(s), xb)
            loss = ce + cfg.recon_weight * rec
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            sched.step()
            ce_sum += ce.item() * len(idx)
            rec_sum += rec.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        stats = {"ce": ce_sum / len(x), "recon_mse": rec_sum / len(x), "train_acc": correct / len(x)}
        bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()})
    return net.eval(), stats


def train_evalnet(
    x: torch.Tensor, y: torch.Tensor, cfg: EncoderTrainConfig
) -> tuple[MnistEvalNet, dict[str, Any]]:
    """Train the evaluation classifier (cross-entropy only)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = MnistEvalNet(channels=x.shape[1], feature_dim=cfg.feature_dim, num_classes=int(y.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    stats: dict[str, Any] = {}
    bar = tqdm(range(cfg.epochs), desc="train gmem/mnist-evalnet", unit="epoch")
    for _ in bar:
        ce_sum = correct = 0.0
        for idx in _batches(len(x), cfg.batch_size, gen):
            logits = net(x[idx])
            ce = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            ce.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            sched.step()
            ce_sum += ce.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
        stats = {"ce": ce_sum / len(x), "train_acc": correct / len(x)}
        bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()})
    return net.eval(), stats


def run_training(
    out: str,
    dataset: str,
    kind: EncoderKind,
    epochs: int | None = None,
    seed: int | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Train one embedded network on ``dataset`` and write its weights to ``out``; returns final stats."""
    torch.set_num_threads(threads)
    kind = EncoderKind(kind)
    cfg = PRESETS[kind]
    cfg = EncoderTrainConfig(
        **{**cfg.__dict__, "epochs": epochs or cfg.epochs, "seed": cfg.seed if seed is None else seed}
    )
    ds = load_dataset(dataset)
    if kind != EncoderKind.mnist_ssl and (ds.labels < 0).any():
        raise InvalidInput(f"{dataset}: training an embedded network needs a label for every image")
    if ds.resolution != 32:
        raise InvalidInput(
            f"{dataset}: embedded networks take 32x32 images; got {ds.resolution}x{ds.resolution}"
        )
    x = to_model_input(ds.images)
    extra: dict[str, Any] = {"dataset": dataset, "seed": cfg.seed, "epochs": cfg.epochs}
    net: nn.Module
    if kind == EncoderKind.mnist_ssl:
        net, stats = _train_ssl(x, ds.labels, dataset, cfg)
        extra["objective"] = "SimCLR NT-Xent, temperature 0.2, no labels, no reconstruction; head discarded"
    elif kind == EncoderKind.mnist_cnn:
        net, stats = train_snippet_encoder(x, torch.from_numpy(np.asarray(ds.labels)), cfg)
    else:
        net, stats = train_evalnet(x, torch.from_numpy(np.asarray(ds.labels)), cfg)
    extra.update({k: f"{v:.5f}" for k, v in stats.items()})
    save_embedded(out, cfg.encoder_id, net, cfg.feature_dim, extra)
    print(
        f"wrote {out}: {cfg.encoder_id}, feature_dim {cfg.feature_dim}, "
        + ", ".join(f"{k} {v:.4f}" for k, v in stats.items())
    )
    return stats


def _train_ssl(
    x: torch.Tensor, labels: np.ndarray, dataset: str, cfg: EncoderTrainConfig
) -> tuple[nn.Module, dict[str, Any]]:
    """``gmem/mnist-ssl``: images only; labels, where the dataset has them, only score the frozen feature."""
    from training.encoders.ssl import SSLConfig, probe, train_ssl_encoder  # only this kind needs it

    net, stats = train_ssl_encoder(
        x, SSLConfig(feature_dim=cfg.feature_dim, epochs=cfg.epochs, seed=cfg.seed)
    )
    if (labels >= 0).all():
        # The probe's held-out images: mnist-5k:eval for the built-in training split, else every 10th row.
        y_all = torch.from_numpy(labels)
        if dataset == "mnist-5k:train":
            held = load_dataset("mnist-5k:eval")
            x_fit, y_fit = x, y_all
            x_eval, y_eval = to_model_input(held.images), torch.from_numpy(held.labels)
        else:
            rows = torch.arange(len(x)) % 10 == 9
            x_fit, y_fit, x_eval, y_eval = x[~rows], y_all[~rows], x[rows], y_all[rows]
        stats.update(probe(net, x_fit, y_fit, x_eval, y_eval))
    return net, stats


def train_encoder_command(
    out: str = typer.Option(
        ..., "--out", envvar="GMEM_ENCODER_OUT", help="weights file to write (.safetensors)"
    ),
    dataset: str = typer.Option("mnist-5k:train", "--dataset", envvar="GMEM_DATASET", help="training images"),
    kind: EncoderKind = typer.Option(
        EncoderKind.mnist_ssl,
        "--kind",
        envvar="GMEM_ENCODER_KIND",
        help="mnist-ssl (default snippet encoder), mnist-cnn (strong conditioning) or evalnet",
    ),
    epochs: int = typer.Option(
        0,
        "--epochs",
        min=0,
        envvar="GMEM_ENCODER_EPOCHS",
        help="passes over the data (0 = the kind's default)",
    ),
    seed: int = typer.Option(-1, "--seed", envvar="GMEM_SEED", help="random seed (-1 = the kind's default)"),
    threads: int = typer.Option(2, "--threads", min=1, envvar="GMEM_THREADS", help="torch CPU threads"),
) -> None:
    """Train an embedded snippet encoder (gmem/mnist-ssl, gmem/mnist-cnn) or the Frechet evaluation net."""
    try:
        run_training(
            out=out,
            dataset=dataset,
            kind=kind,
            epochs=epochs or None,
            seed=None if seed < 0 else seed,
            threads=threads,
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
