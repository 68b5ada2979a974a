"""`python -m bench t2s_attributes`: do attribute words in a prompt change the measured image?

Paired design: for digit d and seed z, the same noise is drawn twice through the adapter
(prompt_mode adapter), once with each of two opposite phrases ("thin strokes" / "thick
strokes", "slanted left" / "slanted right", "small" / "large"). The images are measured
the way captions are made (training/t2s/captions.py: ink per row, -mu11/mu02 shear, ink
height), and we count the seeds where the second phrase gives the larger value. Without
steering that share is 0.5; printed with n and a 95% Wilson interval, with the mean
difference.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from training.files.modelfile import load_model
from training.flow.generate import generate
from training.t2s.adapter import load_t2s
from training.t2s.captions import DIGIT_WORDS, measure
from training.t2s.metrics import wilson

ART = "artifacts/mnist-5k"
PAIRS = (
    ("thickness", "thin strokes", "thick strokes"),
    ("slant", "slanted left", "slanted right"),
    ("size", "small", "large"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=f"{ART}/model.safetensors")
    ap.add_argument("--t2s", default=f"{ART}/t2s.safetensors")
    ap.add_argument("--digits", default="1,4,7")
    ap.add_argument("--n", type=int, default=20, help="seeds per digit and pair")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, t2s = load_model(args.model), load_t2s(args.t2s)
    digits = [int(d) for d in args.digits.split(",")]
    print(
        "| property | low phrase | high phrase | seeds where high > low | mean difference |\n"
        "|---|---|---|---|---|"
    )
    for k, (name, low, high) in enumerate(PAIRS):
        wins, diffs = 0, []
        for d in digits:
            seeds = [500 * d + i for i in range(args.n)]
            values = []
            for phrase in (low, high):
                s, _ = t2s.snippets([f"a handwritten {DIGIT_WORDS[d]}, {phrase}"])
                images = generate(model, np.repeat(s, args.n, axis=0), seeds, steps=args.steps)
                values.append(measure(images)[k])
            wins += int((values[1] > values[0]).sum())
            diffs.extend((values[1] - values[0]).tolist())
        n = len(digits) * args.n
        lo, hi = wilson(wins, n)
        print(
            f"| {name} | {low} | {high} | {wins}/{n} = {wins / n:.2f} [{lo:.2f}, {hi:.2f}] | "
            f"{np.mean(diffs):+.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
