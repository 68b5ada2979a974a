# ruff: noqa: E402  (BLAS thread settings must precede the numpy import)
"""Bank service benchmark: retrieval latency/throughput against two floors, appends, start-up.

    .venv/bin/python -m bench.bank_service                 # 1.28M x 768, r = 64 (an ImageNet-1k-sized bank)
    .venv/bin/python -m bench.bank_service --n 100000      # quick run

Builds a synthetic low-rank factors file, starts the real service (uvicorn
subprocess) and a real redis-server, then measures in the same run:

- ``POST /bank/retrieve`` of k snippets (json, b64f32 and binary) at 1, 8 and 32
  concurrent clients: p50/p99 latency and throughput;
- a baseline in the same run: the previous read path (no row cache) with b64f32;
- the two targets: binary p50 <= 3x a Redis GET at 1 client, >= 2x the baseline's req/s at 32;
- floor 1: the in-process retrieval function (``BankStore.retrieve_by_id``) on the same file;
- floor 2: a Redis GET of a pre-stored blob of the same size as the b64f32 payload;
- ``POST /bank/snippets`` (feature insert, fsync before the 201) p50/p99;
- start-up time (process start -> /readyz 200, and -> search index built) and RSS vs the file size.

Ratios are printed against the floors; nothing is asserted.
"""

from __future__ import annotations

import os

# Same BLAS threading as the service (services/bank/__main__.py), so the in-process floor is comparable.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from gmem.launch import Process, bank_process, redis_process, started
from shared.client_types import BINARY
from shared.factors import BankMeta, save_factors

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789"
console = Console(width=160)


def synthetic_factors(path: Path, n: int, d: int, r: int, seed: int = 0) -> None:
    """A valid low-rank bank: orthogonal basis scaled so B^T B = diag(S), Gaussian coefficients."""
    rng = np.random.default_rng(seed)
    S = np.sort(rng.uniform(0.5, 20.0, r))[::-1].astype(np.float32)
    V, _ = np.linalg.qr(rng.normal(size=(d, r)))
    B = (V * np.sqrt(S)).astype(np.float32)
    mu = rng.normal(size=d)
    mu = (0.5 * mu / np.linalg.norm(mu)).astype(np.float32)
    C = np.empty((n, r), dtype=np.float32)
    for lo in tqdm(range(0, n, 1 << 18), desc="synthetic C", unit="chunk"):
        hi = min(n, lo + (1 << 18))
        C[lo:hi] = rng.standard_normal((hi - lo, r), dtype=np.float32) * np.sqrt(S / n)
    meta = BankMeta(
        encoder="synthetic/none", feature_dim=d, rank=r, source=f"bench-{n}", explained_variance=1.0
    )
    save_factors(path, mu, B, S, C, meta)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_bank(
    factors: Path, data_dir: Path, redis_url: str | None, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[Process, str, dict]:
    env = {"GMEM_BANK_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if redis_url:
        env["GMEM_REDIS_URL"] = redis_url
    t0 = time.perf_counter()
    proc = bank_process(factors, data_dir, log, env=env)
    proc.clean_env = True
    proc.start()
    assert proc.popen is not None
    pid, url = proc.popen.pid, proc.url
    times: dict[str, float] = {}
    while True:
        if not proc.running:
            raise RuntimeError(f"bank exited: {proc.log_tail()}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                times.setdefault("ready_s", time.perf_counter() - t0)
                times.setdefault("rss_ready_mb", rss_mb(pid))
                if r.json()["detail"]["index"] == "ready" and rows_cached(url):
                    times["index_s"] = time.perf_counter() - t0
                    times["rss_index_mb"] = rss_mb(pid)
                    return proc, url, times
        except httpx.TransportError:
            pass
        time.sleep(0.02)


def rows_cached(url: str) -> bool:
    """Wait for the row cache's warm-up too (when every row fits), so retrievals measure the steady state."""
    used, capacity = (
        httpx.get(f"{url}/readyz", timeout=5)
        .json()["detail"]
        .get("row_cache", "0/0 rows")
        .split()[0]
        .split("/")
    )
    return used == capacity


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


async def drive(calls: list, total: int) -> tuple[list[float], float]:
    """``total`` calls spread over one worker per call (= per connection); latencies and wall time."""
    latencies: list[float] = []
    remaining = total

    async def worker(call) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in calls))
    return latencies, time.perf_counter() - t0


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client connection: load generation costs far less than with httpx,
    so on a small machine the numbers describe the server, not the client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, accept: str | None = None) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"Accept: {accept}\r\n" if accept else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        assert self.reader is not None
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if b" 200 " not in status_line:
            raise RuntimeError(f"{status_line!r}: {payload[:200]!r}")
        return payload

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()


def http_call_factory(url: str, n: int, k: int, encoding: str, concurrency: int):
    host, port = url.removeprefix("http://").split(":")
    rng = np.random.default_rng(1)
    connections: list[RawConnection] = []

    class _Pool:
        async def aclose(self) -> None:
            for c in connections:
                await c.aclose()

    async def make():
        conn = RawConnection(host, int(port))
        connections.append(conn)

        async def call() -> None:
            ids = rng.integers(0, n, k).tolist()
            if encoding == "binary":  # Accept: application/octet-stream (services/bank/reads.py)
                await conn.post("/bank/retrieve", json.dumps({"indices": ids}).encode(), BINARY)
            else:
                await conn.post("/bank/retrieve", json.dumps({"indices": ids, "encoding": encoding}).encode())

        return call

    return _Pool(), make


def redis_call_factory(url: str, blob: bytes, concurrency: int):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=concurrency)

    async def make():
        async def call() -> None:
            got = await client.get("bench:blob")
            assert got is not None and len(got) == len(blob)

        return call

    return client, make


async def run_level(kind: str, make_and_client, concurrency: int, total: int) -> tuple[float, float, float]:
    client, make = make_and_client
    calls = [await make() for _ in range(concurrency)]
    await drive(calls, 4 * concurrency)  # open and warm every connection
    lat, wall = await drive(calls, total)
    if hasattr(client, "aclose"):
        await client.aclose()
    p50, p99 = percentiles(lat)
    return p50, p99, total / wall


def in_process_floor(factors: Path, n: int, k: int, reps: int) -> tuple[float, float, float]:
    from services.bank.store import BankStore

    with tempfile.TemporaryDirectory() as tmp:
        store = BankStore.open(factors, Path(tmp) / "data")
        store.rows.start_warm()
        store.rows.wait_warm()  # the service's steady state: every base row cached (when they fit)
        rng = np.random.default_rng(2)
        lat = []
        t0 = time.perf_counter()
        for _ in range(reps):
            ids = rng.integers(0, n, k).tolist()
            t = time.perf_counter()
            store.retrieve_by_id(ids, "base")
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        store.close()
    p50, p99 = percentiles(lat)
    return p50, p99, reps / wall


def append_latency(url: str, d: int, count: int) -> tuple[float, float]:
    rng = np.random.default_rng(3)
    lat = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        for _ in tqdm(range(count), desc="appends", unit="req"):
            body = {"feature": rng.normal(size=d).tolist()}
            t = time.perf_counter()
            client.post("/bank/snippets", json=body).raise_for_status()
            lat.append(time.perf_counter() - t)
    return percentiles(lat)


def start_redis(workdir: Path) -> tuple[Process | None, str | None]:
    if shutil.which("redis-server") is None:
        console.print(
            "[yellow]redis-server not found: the Redis floor is skipped (apt-get install redis-server)"
        )
        return None, None
    proc = started(redis_process(workdir / "redis"), None)
    return proc, proc.url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_280_000, help="base rows")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--k", type=int, default=64, help="snippets per retrieval")
    ap.add_argument("--requests", type=int, default=300, help="retrievals per concurrency level")
    ap.add_argument("--appends", type=int, default=200)
    ap.add_argument("--concurrency", type=str, default="1,8,32")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="gmem-bench-") as tmp_s:
        tmp = Path(tmp_s)
        factors = tmp / "bank.safetensors"
        t = time.perf_counter()
        synthetic_factors(factors, args.n, args.d, args.r)
        size_mb = factors.stat().st_size / 2**20
        console.print(
            f"factors file: {args.n} x {args.d}, r={args.r}: {size_mb:.0f} MiB "
            f"(written in {time.perf_counter() - t:.1f}s)"
        )
        redis_proc, redis_url = start_redis(tmp)
        rows = []
        try:
            floor = in_process_floor(factors, args.n, args.k, max(200, args.requests))
            rows.append(("in-process retrieve_by_id (floor 1)", 1, *floor, 1.0))
            blob = b"\0" * (args.k * args.d * 4)
            if redis_url:
                import redis

                redis.Redis.from_url(redis_url).set("bench:blob", blob)
            # Baseline in the same run: the previous read path (every row reconstructed per request,
            # GMEM_BANK_ROW_CACHE_MB=0) with the previous best encoding, b64f32 JSON.
            base_bank, base_url, _ = start_bank(
                factors,
                tmp / "data-baseline",
                None,
                tmp / "bank-baseline.log",
                {"GMEM_BANK_ROW_CACHE_MB": "0"},
            )
            try:
                for c in levels:
                    res = asyncio.run(
                        run_level(
                            "http", http_call_factory(base_url, args.n, args.k, "b64f32", c), c, args.requests
                        )
                    )
                    rows.append((f"baseline: no row cache, b64f32 k={args.k}", c, *res, None))
            finally:
                base_bank.stop(timeout=30)
            bank, url, start = start_bank(factors, tmp / "data", redis_url, tmp / "bank.log")
            try:
                for c in levels:
                    if redis_url:
                        floor2 = asyncio.run(
                            run_level("redis", redis_call_factory(redis_url, blob, c), c, args.requests)
                        )
                        rows.append((f"redis GET {len(blob) // 1024} KiB blob (floor 2)", c, *floor2, None))
                    for enc in ("json", "b64f32", "binary"):
                        res = asyncio.run(
                            run_level(
                                "http", http_call_factory(url, args.n, args.k, enc, c), c, args.requests
                            )
                        )
                        rows.append((f"POST /bank/retrieve k={args.k} {enc}", c, *res, None))
                a50, a99 = append_latency(url, args.d, args.appends)
                assert bank.popen is not None
                rss_after = rss_mb(bank.popen.pid)
            finally:
                bank.stop(timeout=30)
        finally:
            if redis_proc is not None:
                redis_proc.kill()

    redis_p50 = {c: p50 for name, c, p50, *_ in rows if name.startswith("redis")}
    table = Table(title=f"bank service, {args.n} x {args.d}, r={args.r}, k={args.k} (same run, same machine)")
    for col in ("what", "clients", "p50 ms", "p99 ms", "req/s", "p50 / in-process", "p50 / redis GET"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for name, c, p50, p99, rps, _ in rows:
        vs_redis = f"{p50 / redis_p50[c]:.1f}x" if c in redis_p50 else "-"
        table.add_row(
            name, str(c), f"{p50:.2f}", f"{p99:.2f}", f"{rps:.0f}", f"{p50 / floor[0]:.1f}x", vs_redis
        )
    console.print(table)
    console.print(
        f"append (feature insert, fsync of the log and of acked_version before 201): p50 {a50:.2f} ms, "
        f"p99 {a99:.2f} ms"
    )
    console.print(
        f"start-up: /readyz 200 after {start['ready_s']:.2f}s (RSS {start['rss_ready_mb']:.0f} MiB); "
        f"index and row cache built after {start['index_s']:.2f}s (RSS {start['rss_index_mb']:.0f} MiB); "
        f"RSS after the run {rss_after:.0f} MiB; factors file {size_mb:.0f} MiB -> "
        f"RSS/file {start['rss_index_mb'] / size_mb:.2f}"
    )
    by = {(name, c): (p50, rps) for name, c, p50, _, rps, _ in rows}
    binary = f"POST /bank/retrieve k={args.k} binary"
    baseline = f"baseline: no row cache, b64f32 k={args.k}"
    if 1 in levels and 1 in redis_p50:
        ratio = by[(binary, 1)][0] / redis_p50[1]
        console.print(
            f"target 1: binary p50 at 1 client / redis GET p50 = {ratio:.2f}x (target <= 3x): "
            f"{'met' if ratio <= 3 else 'NOT met'}"
        )
    top = max(levels)
    gain = by[(binary, top)][1] / by[(baseline, top)][1]
    console.print(
        f"target 2: binary req/s at {top} clients / baseline req/s = {gain:.2f}x (target >= 2x): "
        f"{'met' if gain >= 2 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
