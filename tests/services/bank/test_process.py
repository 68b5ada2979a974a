"""The real service (uvicorn, loopback socket, real files): kill -9 durability, CLI, structured logs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from services.bank.log import HEADER, encode_record, iter_records
from shared import bankmath
from tests.support.banks import N0, R, SyntheticBank, make_bank
from tests.support.services import AUTH, ROOT, start_service

ROUNDS = 15
MIN_ROUNDS = 5
BUDGET_S = 30.0


def test_sigkill_during_concurrent_appends_loses_no_acknowledged_mutation(
    bank: SyntheticBank, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    d = bank.snippets.shape[1]
    acked: dict[int, dict] = {}  # version -> what the client was told, and what it sent
    observed: dict[int, list[float]] = {}  # id -> coefficients read back before the kill
    server_errors: list[str] = []
    checked: set[int] = set()
    lock = threading.Lock()
    rng = random.Random(11)
    start = time.monotonic()
    rounds = 0
    while rounds < ROUNDS and (rounds < MIN_ROUNDS or time.monotonic() - start < BUDGET_S):
        rounds += 1
        svc = start_service(bank.path, data_dir, tmp_path / f"round{rounds}.log")
        # After each restart, what the last kill could have hurt must be there (the final check sees all).
        with lock:
            recent = {v: a for v, a in acked.items() if v not in checked}
        check_all_acknowledged(svc.url, data_dir, recent, observed, bank)
        checked.update(recent)
        stop = threading.Event()

        def worker(seed: int, url: str = svc.url, stop: threading.Event = stop) -> None:
            wrng = np.random.default_rng(seed)
            mine: list[int] = []
            with httpx.Client(base_url=url, timeout=5.0, headers=AUTH) as http:
                while not stop.is_set():
                    try:
                        roll = wrng.random()
                        if mine and roll < 0.15:
                            victim = mine.pop()
                            r = http.delete(f"/bank/snippets/{victim}")
                            if r.status_code == 204:
                                # DELETE has no body: its version is found in the log below.
                                with lock:
                                    acked[-victim] = {"op": "delete", "id": victim}
                        elif roll < 0.3:
                            i, j = (int(x) for x in wrng.integers(0, bank.snippets.shape[0], 2))
                            alpha = float(wrng.random())
                            r = http.post("/bank/interpolate", json={"i": i, "j": j, "alpha": alpha})
                            if r.status_code == 201:
                                out = r.json()
                                with lock:
                                    acked[out["version"]] = {
                                        "op": "interpolate",
                                        "id": out["id"],
                                        "i": i,
                                        "j": j,
                                        "alpha": alpha,
                                    }
                                mine.append(out["id"])
                        else:
                            f = wrng.normal(size=d)
                            r = http.post("/bank/snippets", json={"feature": f.tolist()})
                            if r.status_code == 201:
                                out = r.json()
                                with lock:
                                    acked[out["version"]] = {"op": "insert", "id": out["id"], "feature": f}
                                mine.append(out["id"])
                                if wrng.random() < 0.3:
                                    g = http.get(f"/bank/snippets/{out['id']}")
                                    if g.status_code == 200:
                                        observed[out["id"]] = g.json()["coefficients"]
                        if r.status_code >= 500:
                            server_errors.append(r.text)
                    except httpx.TransportError:
                        return  # the server died under us

        threads = [threading.Thread(target=worker, args=(rounds * 100 + k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.05, 0.6))
        svc.kill()  # SIGKILL: no shutdown hooks, possibly mid-write
        stop.set()
        for t in threads:
            t.join(timeout=10)
    final = start_service(bank.path, data_dir, tmp_path / "final.log")
    try:
        check_all_acknowledged(final.url, data_dir, acked, observed, bank)
    finally:
        final.stop()
    assert not server_errors, server_errors[:3]
    assert rounds >= MIN_ROUNDS and len([v for v in acked if v > 0]) > 20, (rounds, len(acked))


def check_all_acknowledged(
    url: str, data_dir: Path, acked: dict[int, dict], observed: dict[int, list[float]], bank: SyntheticBank
) -> None:
    records = list(iter_records(data_dir / "edits.log"))
    versions = [r["v"] for r in records]
    assert versions == list(range(1, len(records) + 1)), "versions in the log are not 1..n"
    by_version = {r["v"]: r for r in records}
    info = httpx.get(f"{url}/bank").json()
    assert info["version"] == len(records)
    # A delete in flight at the kill may be durable without having been acknowledged: that is allowed.
    deleted = {r["id"] for r in records if r["op"] == "delete"}
    for version, a in acked.items():
        if version < 0:
            assert any(r["op"] == "delete" and r["id"] == a["id"] for r in records), (
                f"lost delete of {a['id']}"
            )
            assert httpx.get(f"{url}/bank/snippets/{a['id']}").status_code == 404
            continue
        rec = by_version.get(version)
        assert rec is not None and rec["op"] == a["op"] and rec["id"] == a["id"], f"lost version {version}"
        if a["id"] in deleted:
            continue
        got = httpx.get(f"{url}/bank/snippets/{a['id']}").json()
        if a["op"] == "insert":
            want = bankmath.project(a["feature"], bank.mu, bank.B, bank.S).coefficients[0]
            np.testing.assert_allclose(got["coefficients"], want, rtol=1e-9, atol=1e-12)
            assert got["kind"] == "inserted"
        else:
            assert (
                got["kind"] == "interpolated"
                and got["parents"] == [a["i"], a["j"]]
                and got["alpha"] == a["alpha"]
            )
        if a["id"] in observed:  # read back before a kill: must be bit-identical after it
            assert got["coefficients"] == observed[a["id"]], "coefficients changed across the restart"
    ids = [r["id"] for r in records if r["op"] != "delete"]
    assert ids == sorted(set(ids)), "run-time ids reused or out of order"


def test_cli_env_settings_json_logs_and_request_ids(bank: SyntheticBank, tmp_path: Path) -> None:
    # Everything from GMEM_* variables; the flags in start_service override only what they name.
    svc = start_service(
        bank.path,
        tmp_path / "d",
        tmp_path / "svc.log",
        env={"GMEM_BANK_MAX_BODY_BYTES": "2048", "GMEM_BANK_LOG_LEVEL": "INFO"},
    )
    try:
        r = httpx.get(f"{svc.url}/bank/snippets/3", headers={"X-Request-ID": "trace-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
        big = httpx.post(f"{svc.url}/bank/retrieve", json={"z": [0.5] * 1000})
        assert big.status_code == 413 and "2048" in big.json()["error"]["message"]
        assert (
            httpx.post(f"{svc.url}/bank/snippets", json={"feature": [1.0] * 24}, headers=AUTH).status_code
            == 201
        )
    finally:
        svc.stop()
    lines = [json.loads(line) for line in svc.logs().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "gmem.bank.access"]
    assert any(
        e["request_id"] == "trace-42" and e["route"] == "/bank/snippets/{id}" and e["status"] == 200
        for e in access
    )
    assert any(e["status"] == 413 for e in access)
    assert all({"ts", "level", "msg", "request_id"} <= set(e) for e in lines)


def test_cli_refuses_a_different_factors_file_and_missing_settings(
    bank: SyntheticBank, tmp_path: Path
) -> None:
    svc = start_service(bank.path, tmp_path / "d", tmp_path / "a.log")
    svc.stop()
    other = make_bank(tmp_path / "other.safetensors", seed=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")} | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.bank",
            "--factors",
            str(other.path),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "different file" in run.stderr and "other.safetensors" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "services.bank"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and "GMEM_BANK_FACTORS" in run.stderr
    assert "Traceback" not in run.stderr
    # Corruption inside acknowledged edits (not a torn tail): refuse to start, touch nothing.
    records = [
        {"v": v, "op": "insert", "id": N0 + v - 1, "coefficients": [0.1 * v] * R, "created_at": "t"}
        for v in (1, 2)
    ]
    blob = bytearray(HEADER + b"".join(encode_record(p) for p in records))
    blob[len(HEADER) + 20] ^= 0x01
    (tmp_path / "d" / "edits.log").write_bytes(bytes(blob))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.bank",
            "--factors",
            str(bank.path),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        run.returncode == 2
        and "acknowledged edits would be lost" in run.stderr
        and "--accept-data-loss" in run.stderr
    )
    assert (tmp_path / "d" / "edits.log").read_bytes() == bytes(blob)


def test_restart_after_clean_stop_keeps_state(bank: SyntheticBank, tmp_path: Path) -> None:
    svc = start_service(bank.path, tmp_path / "d", tmp_path / "a.log")
    ids = [
        httpx.post(f"{svc.url}/bank/snippets", json={"feature": [float(k)] + [1.0] * 23}, headers=AUTH).json()
        for k in range(3)
    ]
    svc.stop()
    svc = start_service(bank.path, tmp_path / "d", tmp_path / "b.log", wait=False)
    try:
        svc.wait_http("/readyz", timeout=30.0)
        assert httpx.get(f"{svc.url}/bank").json()["version"] == 3
        assert [httpx.get(f"{svc.url}/bank/snippets/{o['id']}").status_code for o in ids] == [200] * 3
    finally:
        svc.stop()
