"""Three schedulers, one mixed workload: no batching, request-level batching, step-level batching.

    .venv/bin/python -m bench jobs_scheduler [--clients 16] [--jobs-per-client 3]
        [--threads 2] [--device auto]

Each of ``--clients`` clients submits ``--jobs-per-client`` jobs one after another
(n = 1, steps drawn from {10, 25, 50}, sampler from {euler, sde}, a random think
time between jobs, random first arrivals). The same arrival plan runs through the
generator's real scheduler and model (services/generator/jobs/) under three
admission policies, in one process, one after the other:

- ``none``: one job at a time;
- ``request``: jobs with the same (steps, sampler, cfg) that are waiting together
  start together and run to their end before anything else starts (the service's
  former dynamic batching);
- ``step``: step-level continuous batching (the service's scheduler): any job joins
  the running batch at the next forward.

It prints images/s and p50/p99 job latency (submit to result), each as a ratio to
no batching measured in the same run. Targets on the 2-core CPU: throughput of
step >= 3x none, and p99 of step below request.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

from services.generator.jobs.executor import StepExecutor
from services.generator.jobs.scheduler import StepScheduler, Work
from services.generator.runtime import Runtime, read_model_facts
from services.generator.settings import GeneratorSettings


def plan(clients: int, per_client: int, seed: int) -> list[list[tuple[float, int, str, int]]]:
    """Per client: (think time before the job, steps, sampler, seed) for each of its jobs."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(clients):
        jobs = []
        for j in range(per_client):
            wait = float(rng.uniform(0, 0.5)) if j == 0 else float(rng.exponential(0.05))
            jobs.append(
                (wait, int(rng.choice([10, 25, 50])), str(rng.choice(["euler", "sde"])), 1000 * c + j)
            )
        out.append(jobs)
    return out


def run(runtime: Runtime, policy: str, work_plan: list, snippet: np.ndarray, max_images: int) -> dict:
    sched = StepScheduler(StepExecutor(runtime), max_images, policy=policy)  # type: ignore[arg-type]
    sched.start()
    latencies: list[float] = []
    lock = threading.Lock()

    def client(jobs: list) -> None:
        for wait, steps, sampler, seed in jobs:
            time.sleep(wait)
            done = threading.Event()
            t0 = time.perf_counter()
            sched.submit(
                Work(
                    id=str(seed),
                    snippets=snippet,
                    seeds=[seed],
                    steps=steps,
                    sampler=sampler,
                    on_done=lambda p, e, s, ev=done: ev.set(),
                )
            )
            done.wait()
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(jobs,)) for jobs in work_plan]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    sched.stop()
    lat = np.asarray(latencies)
    return {
        "images_s": len(lat) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "forwards": sched.forwards,
        "wall": wall,
    }


def batching_ceiling(runtime: Runtime, max_rows: int, repeats: int = 5) -> tuple[float, int]:
    """(best rows/s at any batch size over rows/s at batch 1, that size): what batching can gain on this
    device."""
    cfg, net = runtime.model.config, runtime.model.net
    device = next(net.parameters()).device
    per_row = {}
    b = 1
    while b <= max_rows:
        x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
        t, c = torch.rand(b, device=device), torch.randn(b, cfg.snippet_dim, device=device)
        with torch.inference_mode():
            net(x, t, c)
            t0 = time.perf_counter()
            for _ in range(repeats):
                net(x, t, c)
            if device.type == "cuda":
                torch.cuda.synchronize()
        per_row[b] = (time.perf_counter() - t0) / repeats / b
        b *= 2
    best = min(per_row, key=per_row.__getitem__)
    return per_row[1] / per_row[best], best


def main() -> None:
    ap = argparse.ArgumentParser(description="step-level vs request-level vs no batching")
    ap.add_argument("--model", default="artifacts/mnist-5k/model.safetensors")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--jobs-per-client", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (the service uses all cores by default)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = GeneratorSettings(
        model=args.model, device=args.device, torch_threads=args.threads, max_batch_size=args.max_batch
    )
    runtime = Runtime(settings, read_model_facts(args.model))
    runtime.load()
    snippet = np.zeros((1, runtime.facts.feature_dim), np.float32)
    snippet[0, 0] = 1.0
    work_plan = plan(args.clients, args.jobs_per_client, args.seed)
    print(
        f"{runtime.facts.id} on {runtime.device}, {args.threads} thread(s); {args.clients} clients x "
        f"{args.jobs_per_client} jobs, steps from {{10, 25, 50}}, batch cap {args.max_batch}; "
        f"invariance: {runtime.invariance}"
    )
    run(runtime, "step", plan(2, 1, 99), snippet, args.max_batch)  # warm-up
    results = {p: run(runtime, p, work_plan, snippet, args.max_batch) for p in ("none", "request", "step")}
    base = results["none"]
    print(
        f"{'scheduler':<10}{'images/s':>10}{'x none':>8}{'p50 s':>8}{'x none':>8}{'p99 s':>8}{'x none':>8}"
        f"{'forwards':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['images_s']:>10.2f}{r['images_s'] / base['images_s']:>8.2f}{r['p50']:>8.2f}"
            f"{r['p50'] / base['p50']:>8.2f}{r['p99']:>8.2f}{r['p99'] / base['p99']:>8.2f}{r['forwards']:>10}"
        )
    gain, at = batching_ceiling(runtime, args.max_batch)
    print(
        f"ceiling: the network's rows/s peak at batch {at}, {gain:.2f}x its rows/s at batch 1 "
        "(no scheduler can gain more than this on throughput here)"
    )
    step, req = results["step"], results["request"]
    print(
        f"targets: throughput step/none = {step['images_s'] / base['images_s']:.2f} (>= 3), "
        f"p99 step/request = {step['p99'] / req['p99']:.2f} (< 1)"
    )


if __name__ == "__main__":
    main()
