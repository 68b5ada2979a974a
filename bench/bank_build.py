"""Benchmark: building a paper-sized bank and retrieving snippets from it.

    .venv/bin/python -m bench.bank_build            # 1.28M x 768 at r = 64 (about 4 GB on disk)
    .venv/bin/python -m bench.bank_build --n 200000 # smaller

1. Writes synthetic float32 features (low rank + noise + an offset, like CLS
   tokens) to a ``.npy`` on disk, chunk by chunk.
2. Runs build-bank's function on it in a fresh process and reports wall time and
   peak RSS, as ratios to the input array's size (baseline: the same process's
   RSS after imports, measured in the same run).
3. Reports retrieval throughput (snippets/s, batches of 64 random ids) through
   ``BankFactors.snippets`` against a floor of plain numpy gather + matmul +
   normalise on an in-memory copy of C, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (ru_maxrss would include the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_features(path: Path, n: int, d: int, seed: int = 0, chunk: int = 65536) -> None:
    """Synthetic features: 128 latent factors with a decaying spectrum, plus noise and a common offset."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    k = min(128, d)
    basis = (rng.standard_normal((k, d)) * (1.0 / np.arange(1, k + 1) ** 0.7)[:, None]).astype(np.float32)
    offset = rng.standard_normal(d).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in tqdm(range(0, n, chunk), desc="write synthetic features", unit="chunk"):
        m = min(chunk, n - start)
        block = rng.standard_normal((m, k), dtype=np.float32) @ basis
        block += 0.05 * rng.standard_normal((m, d), dtype=np.float32) + offset
        out[start : start + m] = block
    out.flush()
    del out


def child_run(features: str, out: str, rank: int, batches: int) -> None:
    """Runs in a fresh process (with the BLAS thread limit) so that its peak RSS is the build's alone."""
    from training.bank.build import run_build

    baseline = _status_mib("VmRSS")
    t0 = time.perf_counter()
    meta = run_build(Path(out), rank, Path(features), None, "synthetic", None, None, "bench")
    wall = time.perf_counter() - t0
    result = {
        "wall_s": wall,
        "peak_rss_mib": _status_mib("VmHWM"),
        "baseline_rss_mib": baseline,
        "explained_variance": meta.explained_variance,
    }
    result.update(retrieval(Path(out), batches))
    print(json.dumps(result))


def retrieval(bank_path: Path, batches: int, batch: int = 64, seed: int = 1) -> dict:
    from shared.factors import load_factors

    bank = load_factors(bank_path)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, bank.size, size=(batches, batch))
    C_mem = np.array(bank.C, dtype=np.float32)  # the floor works on an in-memory copy
    B, mu = bank.B, bank.mu
    for row in ids[:20]:  # warm caches and page C in for both
        bank.snippets(row)
    t0 = time.perf_counter()
    for row in ids:
        bank.snippets(row)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for row in ids:
        x = C_mem[row] @ B.T + mu
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    floor = time.perf_counter() - t0
    total = batches * batch
    return {"snippets_per_s": total / ours, "floor_snippets_per_s": total / floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_280_000, help="rows of the synthetic bank")
    parser.add_argument("--d", type=int, default=768, help="feature dimension")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the build and the retrieval")
    parser.add_argument("--batches", type=int, default=2000, help="retrieval batches of 64 ids")
    parser.add_argument(
        "--dir", default=None, help="work directory (default: a temporary one, removed after)"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("FEATURES", "OUT", "RANK", "BATCHES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child_run(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gmem-bench-") as work:
        work = Path(work)
        features, out = work / "features.npy", work / "bank.safetensors"
        write_features(features, args.n, args.d)
        input_mib = args.n * args.d * 4 / 2**20
        env = {
            **os.environ,
            **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bank_build",
                "--child",
                str(features),
                str(out),
                str(args.rank),
                str(args.batches),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        build = read = json.loads(proc.stdout.strip().splitlines()[-1])
        bank_mib = out.stat().st_size / 2**20
    print(
        f"\nbank build: N={args.n} d={args.d} r={args.rank}, {args.threads} BLAS thread(s) for build and "
        "retrieval"
    )
    print(f"  input array            {input_mib:10.1f} MiB")
    print(f"  output factors file    {bank_mib:10.1f} MiB")
    print(f"  wall time              {build['wall_s']:10.1f} s   ({args.n / build['wall_s']:,.0f} rows/s)")
    print(f"  explained variance     {build['explained_variance']:10.4f}")
    print(
        f"  peak RSS               {build['peak_rss_mib']:10.1f} MiB = "
        f"{build['peak_rss_mib'] / input_mib:.3f} x input"
    )
    extra = build["peak_rss_mib"] - build["baseline_rss_mib"]
    print(
        f"  peak RSS - imports     {extra:10.1f} MiB = {extra / input_mib:.3f} x input "
        f"(O(d^2 + N r) bound: C alone is {args.n * args.rank * 4 / 2**20:.1f} MiB)"
    )
    print(f"retrieval, batches of 64 random ids ({args.batches} batches):")
    print(f"  BankFactors.snippets   {read['snippets_per_s']:12,.0f} snippets/s")
    print(f"  numpy gather+matmul    {read['floor_snippets_per_s']:12,.0f} snippets/s (floor, in-memory C)")
    print(f"  ratio ours / floor     {read['snippets_per_s'] / read['floor_snippets_per_s']:12.3f}")


if __name__ == "__main__":
    main()
