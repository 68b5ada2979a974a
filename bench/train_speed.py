"""Training steps/s with snippet conditioning vs. the identical network without it (same run, ratio).

    .venv/bin/python -m bench.train_speed [--preset gmem-tiny] [--steps 20] [--batch-size 64] [--threads 2]

Both networks are built from the same preset; the only difference is the
S-Adapter (mask + projection of a 128-d snippet, added to the time embedding).
Steps alternate between the two so that background load hits both alike.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description="GMem training speed: snippet conditioning vs none")
    ap.add_argument("--preset", default="gmem-tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from training.flow.transport import PATH, flow_matching_loss, sample_time
    from training.network.config import preset
    from training.network.model import GMemDiT

    device = "cuda" if torch.cuda.is_available() else "cpu"
    setups = {}
    for cond in ("snippet", "none"):
        torch.manual_seed(0)
        cfg = preset(args.preset, conditioning=cond)
        net = GMemDiT(cfg).to(device).train()
        setups[cond] = (cfg, net, torch.optim.AdamW(net.parameters(), lr=1e-4))
    cfg = setups["snippet"][0]
    shape = (args.batch_size, cfg.in_channels, cfg.input_size, cfg.input_size)
    x = torch.randn(shape, device=device).clamp(-1, 1)
    c = torch.nn.functional.normalize(torch.randn(args.batch_size, cfg.snippet_dim, device=device), dim=1)

    def step(cond: str) -> float:
        _, net, opt = setups[cond]
        t = sample_time(args.batch_size, "logit-normal").to(device)
        eps = torch.randn_like(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        v = net(PATH.x_t(x, eps, t), t, c if cond == "snippet" else None)
        loss = flow_matching_loss(v, PATH.velocity(x, eps, t)).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for cond in setups:  # warm-up
        step(cond)
    times = {k: [] for k in setups}
    for _ in range(args.steps):
        for cond in setups:
            times[cond].append(step(cond))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"preset {args.preset}, batch {args.batch_size}, {device}, {args.threads} threads, {args.steps} "
        "steps each"
    )
    for k in setups:
        print(f"  conditioning={k:8s} {1 / med[k]:7.2f} steps/s (median {med[k] * 1000:.1f} ms/step)")
    print(f"  ratio snippet/none steps/s: {med['none'] / med['snippet']:.3f} (1.0 = conditioning is free)")


if __name__ == "__main__":
    main()
