"""Latent vs pixel space: cache-writing throughput and training steps/s on the same network (ratios, one run).

    .venv/bin/python -m bench latent_speed [--steps 20] [--batch-size 64] [--threads 1]
    .venv/bin/python -m bench latent_speed --xl --batch-size 128   # GPU: XL/1 + REPA, bf16, cached latents

Cache: images/s of `training cache` (tiny VAE + gmem/mnist-cnn snippets, with and without the
REPA patch features) against the encoder pass alone, which is what `build-bank` already pays.
Training: the gmem-tiny width and depth (128 x 6) on pixels (32x32x1, patch 4: 64 tokens) and on
the tiny VAE's latents (8x8x4, patch 1: the same 64 tokens; patch 2: 16 tokens), with REPA added
on the last; steps alternate between variants so background load hits all alike.
``--xl``: gmem-XL/1 with the REPA projector on random 16x16x32 latents, 768-d snippets and
256x768 REPA targets, bf16 autocast, AdamW; prints images/s beside the release's reported
~356 images/s per H800 (a reference figure from the paper's authors, not measured here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from training.flow.transport import PATH, flow_matching_loss, sample_time
from training.network.config import preset
from training.network.model import GMemDiT
from training.repa import repa_loss

VAE = Path(__file__).resolve().parents[1] / "artifacts" / "mnist-5k" / "vae.safetensors"
RELEASE_H800_IMAGES_PER_S = 356.0


def cache_throughput() -> dict[str, float]:
    from training.data import load_dataset, to_model_input
    from training.encoders.registry import load_encoder
    from training.latent.cache import write_cache

    images = load_dataset("mnist-5k:eval").images
    n = len(images)
    enc = load_encoder("gmem/mnist-cnn")
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    enc.encode(to_model_input(images))
    out["encoder only (build-bank pass)"] = n / (time.perf_counter() - t0)
    for repa in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_cache(
                "mnist-5k:eval",
                str(VAE),
                "gmem/mnist-cnn",
                Path(tmp) / "c",
                shard_size=250,
                repa=repa,
                progress=False,
            )
            out[f"cache{' + REPA features' if repa else ''}"] = n / (time.perf_counter() - t0)
    return out


def _variant(name: str, device: str, batch: int, **overrides):
    torch.manual_seed(0)
    cfg = preset(name, **overrides)
    net = GMemDiT(cfg).to(device).train()
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    c = torch.nn.functional.normalize(torch.randn(batch, cfg.snippet_dim, device=device), dim=1)
    target = torch.randn(batch, cfg.grid_size**2, cfg.repa_dim, device=device) if cfg.repa_dim else None
    return cfg, net, torch.optim.AdamW(net.parameters(), lr=1e-4), x, c, target


def train_step(setup, device: str, bf16: bool) -> float:
    cfg, net, opt, x, c, target = setup
    t = sample_time(x.shape[0], "logit-normal").to(device)
    eps = torch.randn_like(x)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        v, projected = net(PATH.x_t(x, eps, t), t, c, return_features=True)
        loss = flow_matching_loss(v, PATH.velocity(x, eps, t)).total
        if target is not None:
            loss = loss + 0.5 * repa_loss(projected, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed(setups: dict, steps: int, device: str, bf16: bool = False) -> dict[str, float]:
    for s in setups.values():  # warm-up
        train_step(s, device, bf16)
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(steps):
        for k, s in setups.items():
            times[k].append(train_step(s, device, bf16))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--xl", action="store_true", help="XL/1 + REPA, bf16 (needs a GPU to be meaningful)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.xl:
        med = timed({"XL/1": _variant("gmem-XL/1", device, args.batch_size)}, args.steps, device, bf16=True)[
            "XL/1"
        ]
        ips = args.batch_size / med
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(
            f"gmem-XL/1 + REPA, bf16, batch {args.batch_size}, {name}: {1 / med:.2f} steps/s = {ips:.0f} "
            f"images/s; ratio to the release's ~{RELEASE_H800_IMAGES_PER_S:.0f} images/s per H800: "
            f"{ips / RELEASE_H800_IMAGES_PER_S:.2f}"
        )
        return
    cache = cache_throughput()
    base = cache["encoder only (build-bank pass)"]
    print(f"cache writing, mnist-5k:eval (500 images), {args.threads} thread(s):")
    for k, v in cache.items():
        print(f"  {k:32s} {v:8.0f} images/s   ratio {v / base:.2f}")
    arch = dict(hidden_size=128, depth=6, num_heads=2, snippet_dim=128)
    setups = {
        "pixel 32x32x1 patch 4 (64 tok)": _variant("gmem-tiny", device, args.batch_size, **arch),
        "latent 8x8x4 patch 1 (64 tok)": _variant(
            "gmem-tiny-latent", device, args.batch_size, patch_size=1, **arch
        ),
        "latent 8x8x4 patch 2 (16 tok)": _variant("gmem-tiny-latent", device, args.batch_size, **arch),
        "latent patch 2 + REPA": _variant("gmem-tiny-latent", device, args.batch_size, repa_dim=64, **arch),
    }
    med = timed(setups, args.steps, device)
    pixel = med["pixel 32x32x1 patch 4 (64 tok)"]
    print(f"training, width 128 depth 6, batch {args.batch_size}, {device}, {args.steps} steps each:")
    for k, m in med.items():
        print(f"  {k:32s} {1 / m:7.2f} steps/s   ratio to pixel {pixel / m:.2f}")


if __name__ == "__main__":
    main()
