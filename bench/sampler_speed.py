"""Sampler images/s at the model's default NFE, batch 1 and 64, vs. a floor of bare network forwards.

    .venv/bin/python -m bench.sampler_speed [--model artifacts/mnist-5k/model.safetensors] [--threads 2]

The floor is (time of one bare network forward on the same batch) x NFE: what
the sampler would cost with zero overhead. ratio = sampler time / floor.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description="GMem sampler throughput")
    ap.add_argument("--model", default="artifacts/mnist-5k/model.safetensors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from training.files.modelfile import load_model
    from training.flow.generate import generate, image_shape
    from training.flow.samplers import network_calls

    model = load_model(args.model)
    cfg = model.config
    nfe = network_calls(cfg.sampling.sampler, cfg.sampling.steps, cfg.sampling.sde_solver)
    print(
        f"{model.id}: sampler {cfg.sampling.sampler}, {cfg.sampling.steps} steps = {nfe} NFE, "
        f"{args.threads} threads"
    )
    rng = np.random.default_rng(0)
    for n in (int(b) for b in args.batches.split(",")):
        s = rng.normal(size=(n, cfg.snippet_dim)).astype(np.float32)
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        x = torch.randn(n, *image_shape(cfg))
        c, t = torch.from_numpy(s), torch.full((n,), 0.5)
        with torch.inference_mode():
            model.net(x, t, c)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                model.net(x, t, c)
            forward = (time.perf_counter() - t0) / args.repeats
        generate(model, s, list(range(n)))  # warm-up
        t0 = time.perf_counter()
        for r in range(args.repeats):
            generate(model, s, list(range(r * n, (r + 1) * n)))
        sample = (time.perf_counter() - t0) / args.repeats
        floor = forward * nfe
        print(
            f"  batch {n:3d}: {n / sample:8.2f} images/s  (floor {n / floor:8.2f} images/s = forward "
            f"{forward * 1000:.1f} ms x {nfe}; ratio sampler/floor {sample / floor:.2f})"
        )


if __name__ == "__main__":
    main()
