"""The paper's claims at mnist-5k scale, measured so that a reviewer can check them.

    .venv/bin/python -m bench.reproduce --work runs/reproduce --jobs 2      # about an hour of CPU
    .venv/bin/python -m bench.reproduce --work runs/reproduce --report-only # tables again from saved features

Successor of the earlier equal-budget comparison (2,400 steps, 250 samples). Same network, batch,
optimiser and data for every run (a 64-wide, 4-deep ``gmem-tiny`` body, patch 4, batch 32, AdamW
1e-3, EMA 0.995):

- baselines trained 8,000 steps: class-conditional (the paper's comparator, SiT with labels; two
  training seeds) and unconditional;
- GMem trained 3,000 steps: the self-supervised encoder ``gmem/mnist-ssl`` with mask 0.4 (two
  seeds) and mask 0, the strong encoder ``gmem/mnist-cnn`` (labels + reconstruction), and
  class-mean snippets (the normalised mean SSL snippet of the image's class: the weak end);
  every GMem run trains its CFG null (p_uncond 0.1) on the exact snippets ``f(x)/|f(x)|``.

Checkpoints at log-spaced steps (25, 50, 100, ... and the last). Every checkpoint's EMA network
draws n = 1,000 samples (heun, 10 steps = 20 network calls; seeds 10000 + k; the snippet of
sample k is the noise-CDF pick of paper 4.3 from the 4,500 training rows, the class-conditional
baseline's label is the label of that same row). Their ``gmem/mnist-evalnet`` features are saved,
and every number below is computed from those files:

- FD and KID against the 4,500 training images, each with a 95% bias-corrected percentile bootstrap
  interval (resampling the 1,000 samples); the floor is 1,000 real training images at the same n;
- speedup: the step ratio at matched FD against the class-conditional curve, interpolated in
  (log step, log FD) over the whole curve, with a bootstrap interval over samples and seeds;
- copy rate: share of samples whose nearest training image (evalnet features) is closer than 90%
  of held-out images are to theirs (so held-out images score 0.10);
- held-out memories: one sample per eq. 10 projection of each of the 500 mnist-5k:eval images;
- SDE against ODE at equal network calls, and the noise-CDF index against an index from a separate
  draw of the same seed's generator, each paired on the same seeds.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

GMEM_STEPS, BASE_STEPS = 3000, 8000
EVAL_SEED = 10_000
HELD_SEED = 20_000


@dataclass(frozen=True)
class Variant:
    """One training recipe: its conditioning, which snippets, mask ratio, steps and seeds."""

    conditioning: str  # snippet, class or none
    snippets: str | None  # ssl, strong, class-mean
    mask_ratio: float
    steps: int
    seeds: tuple[int, ...]


VARIANTS: dict[str, Variant] = {
    "class-conditional": Variant("class", None, 0.0, BASE_STEPS, (0, 1)),
    "unconditional": Variant("none", None, 0.0, BASE_STEPS, (0,)),
    "gmem ssl, mask 0.4": Variant("snippet", "ssl", 0.4, GMEM_STEPS, (0, 1)),
    "gmem ssl, mask 0": Variant("snippet", "ssl", 0.0, GMEM_STEPS, (0,)),
    "gmem strong encoder": Variant("snippet", "strong", 0.4, GMEM_STEPS, (0,)),
    "gmem class-mean snippets": Variant("snippet", "class-mean", 0.4, GMEM_STEPS, (0,)),
}
KEY = "gmem ssl, mask 0.4"
ENCODERS = {"ssl": "gmem/mnist-ssl", "strong": "gmem/mnist-cnn"}


def log_steps(total: int) -> list[int]:
    steps, s = [], 25
    while s < total:
        steps.append(s)
        s *= 2
    return [*steps, total]


def slug(name: str, seed: int) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-") + f"-seed{seed}"


# --------------------------------------------------------------------------- shared inputs


@dataclass
class Inputs:
    x: torch.Tensor  # mnist-5k:train in [-1, 1]
    labels: np.ndarray
    x_held: torch.Tensor  # mnist-5k:eval
    labels_held: np.ndarray
    snippets: dict[str, torch.Tensor]  # kind -> [4500, 128] unit snippets
    held_snippets: dict[str, torch.Tensor]  # kind -> [500, 128]


def load_inputs(kinds: tuple[str, ...] = ("ssl", "strong")) -> Inputs:
    import torch.nn.functional as F

    from training.data import load_dataset, to_model_input
    from training.encoders.registry import load_encoder

    train, held = load_dataset("mnist-5k:train"), load_dataset("mnist-5k:eval")
    x, xh = to_model_input(train.images), to_model_input(held.images)
    snippets, held_snippets = {}, {}
    for kind in kinds:
        enc = load_encoder(ENCODERS[kind])
        snippets[kind] = F.normalize(enc.encode(x), dim=1)
        held_snippets[kind] = F.normalize(enc.encode(xh), dim=1)
    if "ssl" in snippets:
        by_class = [snippets["ssl"][torch.from_numpy(train.labels == k)].mean(0) for k in range(10)]
        means = F.normalize(torch.stack(by_class), dim=1)
        snippets["class-mean"] = means[torch.from_numpy(train.labels)]
        held_snippets["class-mean"] = means[torch.from_numpy(held.labels)]
    return Inputs(x, train.labels, xh, held.labels, snippets, held_snippets)


# --------------------------------------------------------------------------- one run (a worker process)


def network_config(v: Variant, args: argparse.Namespace) -> Any:
    from training.network.config import preset

    return preset(
        "gmem-tiny",
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=max(1, args.hidden // 64),
        conditioning=v.conditioning,
        mask_ratio=v.mask_ratio,
        snippet_dim=128,
        encoder=ENCODERS.get(v.snippets or "ssl", "gmem/mnist-ssl"),
        p_uncond=0.1 if v.conditioning == "snippet" else 0.0,
    )


def pick_rows(cfg: Any, seeds: list[int], n_pool: int, separate: bool = False) -> np.ndarray:
    """The training row each seed conditions on: the noise-CDF index of its z (contract section 2),
    or, with ``separate``, a uniform draw taken from the same seed's generator right after z."""
    from shared.bankmath import cdf_index
    from training.flow.generate import image_shape, noise_generator

    rows = []
    for s in seeds:
        g = noise_generator(s)
        z = torch.randn(image_shape(cfg), generator=g, dtype=torch.float32)
        if separate:
            rows.append(min(int(torch.rand(1, generator=g, dtype=torch.float64).item() * n_pool), n_pool - 1))
        else:
            rows.append(cdf_index(z.numpy(), n_pool))
    return np.asarray(rows)


def draw_features(
    net: Any,
    cfg: Any,
    cond_rows: torch.Tensor | None,
    seeds: list[int],
    evalnet: Any,
    steps: int,
    sampler: str,
    batch: int = 500,
) -> np.ndarray:
    from training.flow.generate import sample_tensor

    feats = []
    for start in range(0, len(seeds), batch):
        c = None if cond_rows is None else cond_rows[start : start + batch]
        x = sample_tensor(net, cfg, c, seeds[start : start + batch], steps, sampler)
        feats.append(evalnet.features(x.clamp(-1, 1)))
    return np.concatenate(feats)


def run_one(name: str, seed: int, args: argparse.Namespace) -> str:
    """Train one (variant, seed), then save the evalnet features of every checkpoint's samples."""
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from training.data import TrainData
    from training.evaluate import EvalNet
    from training.network.model import GMemDiT
    from training.train import TrainOptions, train

    v = VARIANTS[name]
    out = Path(args.work) / slug(name, seed)
    if (out / "done.json").exists():
        return f"{name} seed {seed}: already done"
    kinds = {None: (), "strong": ("strong",)}.get(v.snippets, ("ssl",))  # baselines need no encoder
    inp = load_inputs(kinds)
    cfg = network_config(v, args)
    cond: torch.Tensor | None = None
    if v.conditioning == "snippet":
        cond = inp.snippets[v.snippets or "ssl"]
    elif v.conditioning == "class":
        cond = torch.from_numpy(inp.labels.astype(np.int64))
    data = TrainData(x=inp.x, cond=cond, source="mnist-5k:train", preview_ids=list(range(0, 4500, 300)))
    steps = v.steps if not args.quick else max(50, v.steps // 40)
    ckpts = log_steps(steps)
    opts = TrainOptions(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=50,
        ema_decay=0.995,
        seed=seed,
        log_every=25,
        sample_every=10**9,
        ckpt_every=10**9,
        ckpt_at=tuple(ckpts),
    )
    t0 = time.time()
    train(cfg, opts, data, out / "model.safetensors", out, progress=args.progress)
    train_s = time.time() - t0
    evalnet = EvalNet()
    n = args.n_eval
    seeds = list(range(EVAL_SEED, EVAL_SEED + n))
    rows = pick_rows(cfg, seeds, len(inp.labels))
    c_eval = None if cond is None else cond[torch.from_numpy(rows)]
    feats: dict[str, np.ndarray] = {"rows": rows}
    net = GMemDiT(cfg)
    for step in ckpts:
        tensors = load_file(str(out / "checkpoints" / f"step_{step:07d}.safetensors"))
        net.load_state_dict({k[4:]: t for k, t in tensors.items() if k.startswith("ema.")})
        net.eval()
        feats[f"step_{step}"] = draw_features(net, cfg, c_eval, seeds, evalnet, 10, "heun")
    if name == KEY:
        # Samplers at equal network calls (20 and 50), on the same seeds as the curve (heun 10 = 20 calls).
        for sampler, k in (("euler", 20), ("sde", 20), ("euler", 50), ("heun", 25), ("sde", 50)):
            feats[f"sampler_{sampler}_{k}"] = draw_features(net, cfg, c_eval, seeds, evalnet, k, sampler)
    if cond is not None and v.conditioning == "snippet":
        sep = pick_rows(cfg, seeds, len(inp.labels), separate=True)
        feats["rows_separate"] = sep
        c_sep = cond[torch.from_numpy(sep)]
        feats["index_separate"] = draw_features(net, cfg, c_sep, seeds, evalnet, 10, "heun")
        held = inp.held_snippets[v.snippets or "ssl"]
        held_seeds = list(range(HELD_SEED, HELD_SEED + len(held)))
        feats["held_out"] = draw_features(net, cfg, held, held_seeds, evalnet, 10, "heun")
    np.savez_compressed(out / "features.npz", **feats)
    (out / "done.json").write_text(
        json.dumps({"variant": name, "seed": seed, "steps": steps, "checkpoints": ckpts, "train_s": train_s})
    )
    for stale in (out / "checkpoints").glob("*.safetensors"):  # features are kept; weights are 8 MB each
        if stale.name != f"step_{steps:07d}.safetensors":
            stale.unlink()
    return f"{name} seed {seed}: trained {steps} steps in {train_s:.0f} s"


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/reproduce", help="runs, checkpoints and saved features")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once (one CPU thread each)")
    ap.add_argument("--n-eval", type=int, default=1000, help="samples per evaluation")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates per interval")
    ap.add_argument("--only", nargs="*", help="train only these variant names")
    ap.add_argument("--quick", action="store_true", help="1/40 of the steps (tests)")
    ap.add_argument("--progress", action="store_true", help="tqdm bars of each run")
    ap.add_argument("--report-only", action="store_true", help="no training: tables from saved features")
    ap.add_argument("--out-dir", default="docs", help="RESULTS.md and results/ go here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo = [(n, s) for n, v in VARIANTS.items() for s in v.seeds if not args.only or n in args.only]
        # Longest first, so the two workers finish together.
        todo.sort(key=lambda r: -VARIANTS[r[0]].steps)
        with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_one, n, s, args): (n, s) for n, s in todo}
            for fut in cf.as_completed(futures):
                print(fut.result(), flush=True)
    from bench.reproduce_report import write_report

    write_report(work, Path(args.out_dir), args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
