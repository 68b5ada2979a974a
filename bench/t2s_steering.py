"""`python -m bench t2s_steering`: do prompts naming a digit draw that digit? \
Judged by an independent classifier.

For each digit d, the prompt "a handwritten <d>" is mapped by the T2S adapter to a
snippet, and n images (seeds 1000 d + k) are drawn through the model file in three ways:

- ``adapter``: every image from the adapter's snippet ``g(text)`` (prompt_mode adapter);
- ``nearest``: from the K bank snippets nearest to ``g(text)`` (distance between
  reconstructions after the eq. 10 projection, as ``POST /bank/search``), image k
  taking the one its noise picks by the noise-CDF index (prompt_mode nearest);
- ``pinned`` (the baseline of this run): bank snippets whose label is d, spread over
  the class, i.e. what a user who already knows the right snippets gets.

The embedded evaluation network ``gmem/mnist-evalnet`` (a classifier trained on the
images, never the bank encoder) labels every image. Printed: per digit and overall,
hits/n with 95% Wilson intervals, and the ratio of each prompt mode to the baseline.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from shared.bankmath import project, search_rows
from shared.factors import load_factors
from training.data import to_model_input
from training.evaluate import EVALNET_WEIGHTS, EvalNet
from training.files.modelfile import load_model
from training.flow.generate import generate, initial_noise
from training.t2s.adapter import load_t2s
from training.t2s.captions import digit_prompt
from training.t2s.metrics import pick_neighbours, wilson

ART = "artifacts/mnist-5k"


def nearest_ids(bank, s: np.ndarray, k: int) -> list[int]:
    """The bank's search for a unit snippet: project (eq. 10), then Euclidean kNN on C S^(1/2)."""
    rows = search_rows(np.asarray(bank.C, dtype=np.float32), bank.S)
    c = project(s[None], bank.mu, bank.B, bank.S).coefficients
    q = search_rows(np.asarray(c, dtype=np.float32).reshape(1, -1), bank.S)[0]
    d = ((rows - q) ** 2).sum(1)
    return np.argsort(d, kind="stable")[:k].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=f"{ART}/model.safetensors")
    ap.add_argument("--bank", default=f"{ART}/bank.safetensors")
    ap.add_argument("--t2s", default=f"{ART}/t2s.safetensors")
    ap.add_argument("--n", type=int, default=50, help="images per digit and mode")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (model default when absent)")
    ap.add_argument("--k", type=int, default=16, help="neighbours of prompt_mode nearest")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    bank = load_factors(args.bank, mmap=False)
    labels = np.asarray(bank.labels)
    t2s = load_t2s(args.t2s)
    evalnet = EvalNet(EVALNET_WEIGHTS)
    hits: dict[str, list[int]] = {"adapter": [], "nearest": [], "pinned": []}
    t0 = time.perf_counter()
    for d in range(10):
        seeds = [1000 * d + k for k in range(args.n)]
        s, _ = t2s.snippets([digit_prompt(d)])
        noises = [initial_noise(model, z).reshape(-1).numpy() for z in seeds]
        near = pick_neighbours(nearest_ids(bank, s[0], args.k), noises)
        rows = np.flatnonzero(labels == d)
        pinned = rows[np.linspace(0, len(rows) - 1, args.n).astype(int)]
        conds = {
            "adapter": np.repeat(s, args.n, axis=0),
            "nearest": bank.snippets(near),
            "pinned": bank.snippets(pinned),
        }
        for mode, cond in conds.items():
            images = generate(model, cond.astype(np.float32), seeds, steps=args.steps)
            pred = evalnet.classify(evalnet.features(to_model_input(images)))
            hits[mode].append(int((pred == d).sum()))
        print(f"digit {d}: " + ", ".join(f"{m} {h[-1]}/{args.n}" for m, h in hits.items()), flush=True)
    elapsed = time.perf_counter() - t0

    steps = args.steps or model.config.sampling.steps
    print(
        f"\n{args.n} images per digit and mode, {model.config.sampling.sampler} {steps} steps, "
        f"evalnet judge; {elapsed:.0f} s\n"
    )
    print("| digit | prompt | adapter | nearest | pinned (baseline) |\n|---|---|---|---|---|")
    for d in range(10):
        cells = [_cell(hits[m][d], args.n) for m in hits]
        print(f'| {d} | "{digit_prompt(d)}" | ' + " | ".join(cells) + " |")
    total = {m: sum(h) for m, h in hits.items()}
    print("| all | | " + " | ".join(_cell(total[m], 10 * args.n) for m in hits) + " |")
    base = total["pinned"] or 1
    print(
        f"\nratio to pinned baseline: adapter {total['adapter'] / base:.3f}, nearest "
        f"{total['nearest'] / base:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "steps": steps, "hits": hits}, f)


def _cell(h: int, n: int) -> str:
    lo, hi = wilson(h, n)
    return f"{h}/{n} = {h / n:.2f} [{lo:.2f}, {hi:.2f}]"


if __name__ == "__main__":
    main()
