"""Generator service throughput against the in-process sampler, measured in the same run.

CPU (default): starts the real bank and generator processes on loopback and prints

1. images/s of POST /generate with n = --batch against ``training.flow.generate.generate``
   in this process on the same model, batch, sampler and steps (ratio; target >= 0.9);
2. images/s at 1, 4 and 16 concurrent clients (n = 1 each) with dynamic batching
   (max batch 16) and without (GMEM_GENERATOR_MAX_BATCH_SIZE=1), as ratios to 1 client unbatched.

GPU (``--device cuda --preset gmem-XL/1``): milliseconds per network evaluation of a
randomly initialised network at batch 1/16/64 in bf16 autocast, its FLOPs (counted
by torch's FlopCounterMode) and the fraction of the GPU's dense bf16 peak reached.

    .venv/bin/python -m bench.generator_service [--steps 4] [--batch 16] [--threads 1]
    .venv/bin/python -m bench.generator_service --device cuda --preset gmem-XL/1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from gmem.launch import Process, bank_process, free_port, generator_process, started

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "artifacts" / "mnist-5k" / "model.safetensors"
BANK = ROOT / "artifacts" / "mnist-5k" / "bank.safetensors"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def start_generator(tmp: Path, bank_url: str, model: Path, threads: int, **env: str) -> tuple[Process, str]:
    base = {
        "GMEM_GENERATOR_TORCH_THREADS": str(threads),
        "GMEM_GENERATOR_MAX_N": "64",
    }
    port = free_port()
    proc = started(
        generator_process(model, bank_url, tmp / f"gen-{port}.log", port, env={**base, **env}),
        "/readyz",
        timeout=120,
    )
    return proc, proc.url


def in_process_rate(
    model_path: Path, batch: int, steps: int, sampler: str, threads: int, repeats: int
) -> float:
    import torch

    from shared.factors import load_factors
    from training.files.modelfile import load_model
    from training.flow.generate import generate

    torch.set_num_threads(threads)
    model = load_model(model_path)
    snippets = load_factors(BANK).snippets(list(range(batch)))
    seeds = list(range(batch))
    generate(model, snippets, seeds, steps=steps, sampler=sampler)  # warm-up
    t0 = time.perf_counter()
    for r in range(repeats):
        generate(model, snippets, [s + 1000 * r for s in seeds], steps=steps, sampler=sampler)
    return batch * repeats / (time.perf_counter() - t0)


def service_rate(url: str, batch: int, steps: int, sampler: str, repeats: int) -> float:
    body = {"n": batch, "steps": steps, "sampler": sampler, "snippet_ids": list(range(batch))}
    with httpx.Client(timeout=600) as c:
        c.post(url + "/generate", json={**body, "seed": 0}).raise_for_status()  # warm-up
        t0 = time.perf_counter()
        for r in range(repeats):
            c.post(url + "/generate", json={**body, "seed": 1000 * (r + 1)}).raise_for_status()
    return batch * repeats / (time.perf_counter() - t0)


def concurrent_rate(url: str, clients: int, per_client: int, steps: int, sampler: str) -> float:
    def worker(k: int) -> None:
        with httpx.Client(timeout=600) as c:
            for r in range(per_client):
                c.post(
                    url + "/generate", json={"n": 1, "seed": k * 1000 + r, "steps": steps, "sampler": sampler}
                ).raise_for_status()

    worker(999)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per_client / (time.perf_counter() - t0)


def cpu_bench(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="gmem-bench-"))
    bank = started(bank_process(BANK, tmp / "bank", tmp / "bank.log"), "/readyz", timeout=120)
    bank_url = bank.url
    rows: list[tuple[str, float]] = []
    try:
        first = in_process_rate(args.model, args.batch, args.steps, args.sampler, args.threads, args.repeats)
        for micro in ("0", "4"):
            proc, url = start_generator(
                tmp,
                bank_url,
                args.model,
                args.threads,
                GMEM_GENERATOR_MICRO_BATCH=micro,
                GMEM_GENERATOR_MAX_BATCH_SIZE=str(max(16, args.batch)),
            )
            try:
                label = "auto (probed)" if micro == "0" else f"padded to {micro}"
                rows.append(
                    (
                        f"service POST /generate n={args.batch}, micro-batch {label}",
                        service_rate(url, args.batch, args.steps, args.sampler, args.repeats),
                    )
                )
            finally:
                proc.stop()
        # Measured before and after the service runs; the faster one is the (conservative) baseline,
        # since a shared machine can only make a measurement slower.
        base = max(
            first,
            in_process_rate(args.model, args.batch, args.steps, args.sampler, args.threads, args.repeats),
        )
        rows.insert(0, (f"in-process generate(), batch {args.batch} (best of 2)", base))
        print(
            f"\n== service vs in-process (steps {args.steps}, {args.sampler}, {args.threads} torch thread(s))"
        )
        for name, rate in rows:
            print(f"{name:58s} {rate:8.1f} img/s   ratio {rate / base:5.2f}")

        results: dict[tuple[str, int], float] = {}
        configs = [
            ("no batching (max batch 1)", {"GMEM_GENERATOR_MAX_BATCH_SIZE": "1"}),
            (
                "dynamic batching (max 16)",
                {"GMEM_GENERATOR_MAX_BATCH_SIZE": "16", "GMEM_GENERATOR_MICRO_BATCH": str(args.micro_batch)},
            ),
        ]
        todo = [(name, env, c) for name, env in configs for c in (1, 4, 16)]
        procs: dict[str, tuple[Process, str]] = {}
        try:
            for name, env, clients in tqdm(todo, desc="concurrency", unit="config"):
                if name not in procs:
                    procs[name] = start_generator(tmp, bank_url, args.model, args.threads, **env)
                per_client = max(2, args.requests // clients)
                results[(name, clients)] = concurrent_rate(
                    procs[name][1], clients, per_client, args.steps, args.sampler
                )
        finally:
            for proc, _ in procs.values():
                proc.stop()
        ref = results[(configs[0][0], 1)]
        print("\n== throughput under concurrency (n=1 per request; ratio to 1 client without batching)")
        for name, _ in configs:
            line = "  ".join(
                f"{c:2d} clients {results[(name, c)]:7.1f} img/s ({results[(name, c)] / ref:4.2f}x)"
                for c in (1, 4, 16)
            )
            print(f"{name:28s} {line}")
    finally:
        bank.stop()


def gpu_bench(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.network.config import preset
    from training.network.model import GMemDiT

    cfg = preset(args.preset)
    net = GMemDiT(cfg).to("cuda").eval()
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"== {args.preset} on {name}: ms per NFE in bf16 autocast (peak {peak} TFLOP/s dense bf16)")
    for batch in (1, 16, 64):
        x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device="cuda")
        t = torch.rand(batch, device="cuda")
        c = torch.nn.functional.normalize(torch.randn(batch, cfg.snippet_dim, device="cuda"), dim=1)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            with FlopCounterMode(display=False) as fc:
                net(x, t, c)
            flops = fc.get_total_flops()
            for _ in range(3):
                net(x, t, c)
            torch.cuda.synchronize()
            n = 20
            t0 = time.perf_counter()
            for _ in range(n):
                net(x, t, c)
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / n * 1000
        achieved = flops / (ms / 1000) / 1e12
        frac = f"{achieved / peak:.2%} of peak" if peak else "peak unknown (--peak-tflops)"
        print(
            f"batch {batch:3d}: {ms:8.2f} ms/NFE  {flops / 1e12:7.3f} TFLOP/NFE  {achieved:7.1f} TFLOP/s  "
            f"{frac}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--requests", type=int, default=32, help="requests per concurrency level (split over clients)"
    )
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=0,
        help="GMEM_GENERATOR_MICRO_BATCH of the batched service (0 = auto)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", default="gmem-XL/1", help="network preset for --device cuda")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak if the GPU is not listed"
    )
    args = ap.parse_args()
    if args.device == "cuda":
        gpu_bench(args)
    else:
        cpu_bench(args)


if __name__ == "__main__":
    main()
