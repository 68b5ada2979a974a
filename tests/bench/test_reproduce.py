"""bench.reproduce end to end at 1/40 of its steps: real training, sampling, features, report files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("repro")
    argv = [sys.executable, "-m", "bench.reproduce", "--work", str(tmp / "work")]
    argv += ["--out-dir", str(tmp / "docs")]
    argv += ["--quick", "--jobs", "1", "--n-eval", "60", "--bootstrap", "20"]
    argv += ["--only", "class-conditional", "gmem ssl, mask 0.4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


def test_every_checkpoint_has_fd_with_interval_kid_n_and_floor(quick_run):
    result = json.loads((quick_run / "docs" / "results" / "reproduction.json").read_text())
    assert set(result["variants"]) == {"class-conditional", "gmem ssl, mask 0.4"}
    for entry in result["variants"].values():
        for run in entry["runs"].values():
            steps = [c["step"] for c in run["curve"]]
            assert steps == sorted(steps) and steps[0] == 25
            for c in run["curve"]:
                assert {"fd", "fd_ci", "kid_x1e3", "kid_ci", "n", "floor"} <= set(c)
                assert c["n"] == 60 and c["fd_ci"][0] <= c["fd_ci"][1] and c["fd"] > c["floor"]
    # an untrained-ish network is far from the data: the first checkpoint is the worst of the curve
    key = result["variants"]["gmem ssl, mask 0.4"]["runs"]["0"]
    assert key["curve"][0]["fd"] > key["curve"][-1]["fd"]


def test_speedup_copy_rate_samplers_and_index_are_reported(quick_run):
    result = json.loads((quick_run / "docs" / "results" / "reproduction.json").read_text())
    sp = result["speedup_vs_class_conditional"]["gmem ssl, mask 0.4"]
    assert {"ratio", "ci", "target_fd", "seeds", "lower_bound", "at_levels"} <= set(sp)
    assert sp["seeds"] == {"variant": [0, 1], "class-conditional": [0, 1]}
    run = result["variants"]["gmem ssl, mask 0.4"]["runs"]["0"]
    assert 0 <= run["copy_rate"]["rate"] <= 1 and run["held_out"]["n"] == 500
    assert {"nfe20_sde_minus_euler", "nfe50_sde_minus_heun"} <= set(run["samplers"])
    ix = run["index"]
    assert ix["noise_cdf"]["consistency"]["n"] == ix["separate_draw"]["consistency"]["n"] == 60
    text = (quick_run / "docs" / "RESULTS.md").read_text()
    assert "## Speedup at matched FD" in text and "## Which of the paper's claims hold here" in text
    assert (quick_run / "docs" / "results" / "fd_curves.png").stat().st_size > 10_000
