"""`python -m training eval`: Frechet distance and snippet-class consistency of a model's samples.

Features come from our own evaluation network (``gmem/mnist-evalnet``, a
classifier trained on the dataset, penultimate layer; never the bank encoder,
whose features the model was conditioned on). FD is the Frechet distance
between Gaussians fitted to real eval images and to samples (the FID formula on
these features). Consistency is the fraction of samples the evalnet classifies
as the bank label of the snippet they were drawn from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import torch
import typer
from tqdm import tqdm

from shared.bankmath import cdf_index
from shared.errors import GMemError, InvalidInput
from shared.factors import BankFactors, load_factors
from training.data import load_dataset, to_model_input
from training.encoders.registry import load_encoder
from training.files.modelfile import check_compatible, load_model
from training.flow.generate import check_cfg, decode, initial_noise, sample_tensor
from training.network.config import GMemConfig
from training.network.model import GMemDiT

EVALNET_ID = "gmem/mnist-evalnet"
EVALNET_WEIGHTS = "artifacts/mnist-5k/evalnet.safetensors"


@dataclass(frozen=True)
class EvalResult:
    """FD on evalnet features and snippet-class consistency (None without labels)."""

    fd: float
    consistency: float | None
    n: int
    steps: int
    sampler: str


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two feature sets [n, d]."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise InvalidInput("Frechet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr (S_a S_b)^(1/2) = sum of sqrt(eigenvalues of S_a S_b), which are real and >= 0 for PSD S_a, S_b;
    # this avoids sqrtm's trouble with the singular covariances of small sample sets.
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_covmean = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


class EvalNet:
    """The evaluation network: penultimate features and predicted classes of [-1, 1] images."""

    def __init__(self, weights: str = EVALNET_WEIGHTS, device: str = "cpu") -> None:
        self.encoder = load_encoder(EVALNET_ID, weights, device=device)

    def features(self, x: torch.Tensor) -> np.ndarray:
        return self.encoder.encode(x).numpy()

    def classify(self, feats: np.ndarray) -> np.ndarray:
        head = cast(torch.nn.Module, self.encoder.net.head)
        with torch.no_grad():
            logits = head(torch.from_numpy(feats).to(self.encoder.device))
        return cast(np.ndarray, logits.argmax(1).cpu().numpy())


def sample_conditions(
    cfg: GMemConfig, bank: BankFactors | None, labels_pool: np.ndarray | None, seeds: list[int]
) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """The condition of each seed: the bank snippet its noise picks (snippet), its label (class) or None."""
    if cfg.conditioning == "none":
        return None, None
    if cfg.conditioning == "snippet":
        bank = cast(BankFactors, bank)  # run_eval loads a bank for every snippet-conditioned model
        ids = [cdf_index(initial_noise(cfg, s).numpy(), bank.size) for s in seeds]
        labels = None if bank.labels is None else np.asarray(bank.labels)[ids]
        return torch.from_numpy(bank.snippets(ids)), labels
    # class baseline: the noise-CDF index over the class list, so both pick conditions the same way
    if labels_pool is None:
        raise InvalidInput("a class-conditional model needs labels to sample")
    classes = np.unique(labels_pool)
    picks = classes[[cdf_index(initial_noise(cfg, s).numpy(), len(classes)) for s in seeds]]
    return torch.from_numpy(picks.astype(np.int64)), picks


def evaluate_network(
    net: GMemDiT,
    cfg: GMemConfig,
    bank: BankFactors | None,
    evalnet: EvalNet,
    real_feats: np.ndarray,
    n: int,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    cfg_scale: float = 1.0,
    batch: int = 100,
    labels_pool: np.ndarray | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Sample n images (seeds seed..seed+n-1) in batches and score them against ``real_feats``."""
    seeds = list(range(seed, seed + n))
    cond, labels = sample_conditions(cfg, bank, labels_pool, seeds)
    feats = []
    for start in tqdm(range(0, n, batch), desc="eval samples", leave=False):
        c = cond[start : start + batch] if cond is not None else None
        x = sample_tensor(net, cfg, c, seeds[start : start + batch], steps, sampler, cfg_scale)
        if decode is not None:  # latent space: through the model's autoencoder
            x = decode(x)
        feats.append(evalnet.features(x.clamp(-1, 1)))
    fake = np.concatenate(feats)
    consistency = None
    if labels is not None and np.all(np.asarray(labels) >= 0):
        consistency = float((evalnet.classify(fake) == np.asarray(labels)).mean())
    return EvalResult(
        fd=frechet_distance(real_feats, fake),
        consistency=consistency,
        n=n,
        steps=int(steps or cfg.sampling.steps),
        sampler=sampler or cfg.sampling.sampler,
    )


def real_features(evalnet: EvalNet, dataset: str) -> np.ndarray:
    ds = load_dataset(dataset)
    return evalnet.features(to_model_input(ds.images))


def run_eval(
    model_path: str,
    bank_path: str | None,
    dataset: str,
    n: int,
    seed: int,
    steps: int | None,
    sampler: str | None,
    cfg_scale: float,
    evalnet_weights: str,
) -> dict[str, Any]:
    """Load everything, check it fits, sample and score; returns the result as a dict."""
    if n < 2:
        raise InvalidInput(f"--n must be at least 2 for a Frechet distance; got {n}")
    model = load_model(model_path)
    check_cfg(model.config, cfg_scale, "--cfg-scale")  # before the bank, the evalnet and the dataset load
    bank = None
    if model.config.conditioning == "snippet":
        if bank_path is None:
            raise InvalidInput("this model is snippet-conditioned: pass --bank FILE")
        bank = load_factors(bank_path)
        check_compatible(model.config, bank.meta)
    evalnet = EvalNet(evalnet_weights)
    pool = None
    if model.config.conditioning == "class":
        pool = load_dataset(dataset).labels
    result = evaluate_network(
        model.net,
        model.config,
        bank,
        evalnet,
        real_features(evalnet, dataset),
        n,
        seed,
        steps,
        sampler,
        cfg_scale,
        labels_pool=pool,
        decode=(lambda x: decode(model, x)) if model.config.space == "latent" else None,
    )
    return {"model": model.id, "dataset": dataset, **asdict(result)}


def eval_command(
    model: Annotated[Path, typer.Option(help="model file", envvar="GMEM_MODEL")],
    bank: Annotated[Path | None, typer.Option(help="bank factors file", envvar="GMEM_BANK")] = None,
    dataset: Annotated[
        str, typer.Option(help="real images to compare with", envvar="GMEM_DATASET")
    ] = "mnist-5k:eval",
    n: Annotated[int, typer.Option(help="number of samples", envvar="GMEM_N")] = 500,
    seed: Annotated[int, typer.Option(help="first seed", envvar="GMEM_SEED")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="solver steps (default: the model's)", envvar="GMEM_STEPS")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="euler, heun or sde", envvar="GMEM_SAMPLER")] = None,
    cfg_scale: Annotated[float, typer.Option(help="guidance scale (1 = off)", envvar="GMEM_CFG_SCALE")] = 1.0,
    evalnet_weights: Annotated[
        str, typer.Option(help="evaluation network weights", envvar="GMEM_EVALNET_WEIGHTS")
    ] = EVALNET_WEIGHTS,
    json_out: Annotated[Path | None, typer.Option(help="also write the result as JSON here")] = None,
    threads: Annotated[
        int, typer.Option(help="CPU threads (1 is safest on a busy machine)", envvar="GMEM_THREADS")
    ] = 1,
) -> None:
    """Frechet distance (evalnet features) and snippet-class consistency of the model's samples."""
    torch.set_num_threads(max(1, threads))
    try:
        result = run_eval(
            str(model),
            str(bank) if bank else None,
            dataset,
            n,
            seed,
            steps,
            sampler,
            cfg_scale,
            evalnet_weights,
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    text = json.dumps(result, indent=1)
    if json_out:
        json_out.write_text(text + "\n")
    typer.echo(text)
