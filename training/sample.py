"""`python -m training sample`: a grid of K samples from a model file and a bank, in-process.

Each image k uses seed ``seed + k``; its snippet is the bank row the noise-CDF
index (paper section 4.3) picks from its own initial noise, unless
``--snippet-ids`` pins them (one id for all, or one per image).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from shared.bankmath import cdf_index
from shared.errors import GMemError, InvalidInput
from shared.factors import load_factors
from training.files.modelfile import LoadedModel, check_compatible, load_model
from training.flow.generate import check_cfg, generate, initial_noise, to_png

GRID_PAD = 2
GRID_FILL = 255  # white gutters: MNIST digits are white on black, so cells stay visible


def make_grid(images: np.ndarray, pad: int = GRID_PAD, fill: int = GRID_FILL) -> np.ndarray:
    """uint8 [K, H, W, C] -> one image: ceil(sqrt(K)) columns, row-major, ``pad`` px around every cell."""
    k, h, w, c = images.shape
    cols = max(1, math.ceil(math.sqrt(k)))
    rows = max(1, math.ceil(k / cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i in range(k):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = images[i]
    return canvas


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write a uint8 [H, W, C] image as PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(to_png(image))


def choose_snippet_ids(
    model: LoadedModel, bank_size: int, seeds: list[int], snippet_ids: list[int] | None
) -> list[int]:
    """Pinned ids (1 or one per image) or the noise-CDF index of each seed's initial noise."""
    if snippet_ids:
        if len(snippet_ids) not in (1, len(seeds)):
            raise InvalidInput(f"give 1 snippet id or one per image ({len(seeds)}); got {len(snippet_ids)}")
        return list(snippet_ids) * (len(seeds) if len(snippet_ids) == 1 else 1)
    return [cdf_index(initial_noise(model, s).numpy(), bank_size) for s in seeds]


def sample_grid(
    model_path: str,
    bank_path: str | None,
    n: int,
    seed: int,
    steps: int | None = None,
    sampler: str | None = None,
    cfg_scale: float = 1.0,
    snippet_ids: list[int] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Load model (+ bank), sample n images with seeds seed..seed+n-1, return the grid and snippet ids."""
    if n < 1:
        raise InvalidInput(f"--n must be at least 1; got {n}")
    model = load_model(model_path)
    check_cfg(model.config, cfg_scale, "--cfg-scale")  # before the bank is read
    seeds = [seed + k for k in range(n)]
    snippets, ids = None, []
    if model.config.conditioning == "snippet":
        if bank_path is None:
            raise InvalidInput("this model is snippet-conditioned: pass --bank FILE")
        bank = load_factors(bank_path)
        check_compatible(model.config, bank.meta)
        ids = choose_snippet_ids(model, bank.size, seeds, snippet_ids)
        snippets = bank.snippets(ids)
    images = generate(model, snippets, seeds, steps=steps, sampler=sampler, cfg_scale=cfg_scale)
    return make_grid(images), ids


def sample_command(
    model: Annotated[Path, typer.Option(help="model file (CONTRACT.md section 5)", envvar="GMEM_MODEL")],
    out: Annotated[Path, typer.Option(help="PNG to write the grid to", envvar="GMEM_OUT")],
    bank: Annotated[Path | None, typer.Option(help="bank factors file", envvar="GMEM_BANK")] = None,
    n: Annotated[int, typer.Option(help="number of samples K", envvar="GMEM_N")] = 16,
    seed: Annotated[int, typer.Option(help="image k uses seed + k", envvar="GMEM_SEED")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="solver steps (default: the model's)", envvar="GMEM_STEPS")
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help="euler, heun or sde (default: the model's)", envvar="GMEM_SAMPLER")
    ] = None,
    cfg_scale: Annotated[
        float, typer.Option(help="classifier-free guidance scale (1 = off)", envvar="GMEM_CFG_SCALE")
    ] = 1.0,
    snippet_ids: Annotated[
        list[int] | None,
        typer.Option(
            help="pin snippet ids (repeat the flag; env: ids separated by spaces)", envvar="GMEM_SNIPPET_IDS"
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="CPU threads (1 is safest on a busy machine)", envvar="GMEM_THREADS")
    ] = 1,
) -> None:
    """Write a grid of K samples (ceil(sqrt(K)) columns, row-major) to --out."""
    torch.set_num_threads(max(1, threads))
    try:
        grid, ids = sample_grid(
            str(model), str(bank) if bank else None, n, seed, steps, sampler, cfg_scale, snippet_ids
        )
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    save_png(grid, out)
    typer.echo(f"wrote {out} ({n} samples, snippet ids {ids})")
