"""The toy of section 3.2 (bench.toy_gmm): its math, and one real `--quick` run of the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import t as student_t

from bench.toy_gmm import (
    CONDITIONS,
    EXTRA_ROWS,
    QUICK,
    REFERENCES,
    Mixture,
    between_modes,
    gmem_sampling_floor,
    interval,
    make_world,
    mmd2,
    report_lines,
    sample_paths,
    w2,
)

Quick = tuple[dict[str, Any], Path]  # the quick run's json and figure
ROOT = Path(__file__).resolve().parents[2]
RING = Mixture.ring(8, 3.0, 0.15)
BANDWIDTHS = (0.15, 0.6, 2.4)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Quick:
    out = tmp_path_factory.mktemp("toy")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.toy_gmm",
            "--quick",
            "--json",
            str(out / "r.json"),
            "--png",
            str(out / "r.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "r.json").read_text()), out / "r.png"


# ------------------------------------------------------------------ the math


def test_w2_is_zero_on_itself_and_the_shift_under_a_translation() -> None:
    a = RING.sample(300, np.random.default_rng(0))[0]
    assert w2(a, a) == 0.0
    # W2^2 >= |mean difference|^2, and the identity coupling attains it for a pure translation.
    assert w2(a, a + np.array([0.3, -0.4])) == pytest.approx(0.5, abs=1e-9)
    b = RING.sample(300, np.random.default_rng(1))[0]
    assert w2(a, b) == pytest.approx(w2(b, a), abs=1e-12)


def test_mmd2_of_true_samples_is_zero_on_average_and_positive_for_a_wrong_one() -> None:
    values = [mmd2(RING.sample(400, np.random.default_rng(i))[0], RING, BANDWIDTHS) for i in range(30)]
    se = np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 4 * se  # unbiased: no floor above 0
    shrunk = 0.9 * RING.sample(400, np.random.default_rng(99))[0]
    assert mmd2(shrunk, RING, BANDWIDTHS) > 20 * np.std(values)


def test_mmd2_closed_form_matches_monte_carlo() -> None:
    x = 1.1 * RING.sample(400, np.random.default_rng(3))[0]
    # Equal counts per component: the Monte Carlo side then carries no component-count noise.
    y = np.repeat(RING.means, 500, 0) + RING.std * np.random.default_rng(4).standard_normal((4000, 2))

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = cdist(a, b, "sqeuclidean")
        total: np.ndarray = np.sum([np.exp(-d / (2 * h * h)) for h in BANDWIDTHS], axis=0)
        return total

    n = len(x)
    k_xx = (k(x, x).sum() - n * len(BANDWIDTHS)) / (n * (n - 1))
    k_yy = (k(y, y).sum() - len(y) * len(BANDWIDTHS)) / (len(y) * (len(y) - 1))
    monte_carlo = k_xx - 2 * k(x, y).mean() + k_yy
    assert mmd2(x, RING, BANDWIDTHS) == pytest.approx(monte_carlo, rel=0.05)


def test_w2_rewards_mass_between_components_and_mmd2_does_not() -> None:
    # The reason the module gives for MMD^2 as the primary distance, checked on fresh samples.
    d_w2, d_mmd = [], []
    for i in range(5):
        ref = RING.sample(1000, np.random.default_rng([i, 0]))[0]
        x, k = RING.sample(1000, np.random.default_rng([i, 1]))
        wrong = between_modes(RING, x, k, 0.06, np.random.default_rng([i, 2]))
        assert 0.03 < np.mean(np.any(wrong != x, axis=1)) < 0.09
        d_w2.append(w2(wrong, ref) - w2(x, ref))
        d_mmd.append(mmd2(wrong, RING, BANDWIDTHS) - mmd2(x, RING, BANDWIDTHS))
    assert np.mean(d_w2) < 0 and min(d_mmd) > 0


def test_interval_is_the_student_t_interval() -> None:
    iv = interval([1.0, 2.0, 3.0])
    half = student_t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert iv == pytest.approx({"mean": 2.0, "lo": 2.0 - half, "hi": 2.0 + half})


class _Field(torch.nn.Module):
    """v(x, t, c) = c * (2t)^p: constant along a path for p = 0 (a straight line), changing for p = 1."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return c * (2 * t[:, None]) ** self.p


def test_straightness_is_zero_for_straight_paths_and_positive_for_curved_ones() -> None:
    rng = np.random.default_rng(0)
    x0, c = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    x1, straight, path = sample_paths(_Field(0.0), x0, c, 8)
    assert straight == pytest.approx(0.0, abs=1e-10)
    assert np.allclose(x1, x0 + c, atol=1e-6)
    assert path.shape == (9, 50, 2)
    assert sample_paths(_Field(1.0), x0, c, 8)[1] > 0.1


def test_the_memory_and_each_points_slot() -> None:
    w = make_world(QUICK, 0)
    assert len(w.memory) == QUICK.M and {tuple(p) for p in w.memory} <= {tuple(p) for p in w.x}
    d = cdist(w.x, w.memory)
    assert np.array_equal(d[np.arange(len(w.x)), w.slot], d.min(1))
    drawn = gmem_sampling_floor(w, 500, np.random.default_rng(1))
    assert {tuple(p) for p in drawn} <= {tuple(p) for p in w.x}


# ------------------------------------------------------------------ one real quick run


def test_json_holds_every_seed_row_and_metric(quick: Quick) -> None:
    result, _ = quick
    s = result["settings"]
    assert set(result["seeds"]) == {str(x) for x in s["seeds"]} and result["n"] == s["n_eval"]
    rows = {*CONDITIONS, *EXTRA_ROWS}
    for per in result["seeds"].values():
        assert set(per["rows"]) == rows
        for r in per["rows"].values():
            assert set(r["mmd2"]) == set(r["w2"]) == {str(n) for n in s["nfe"]}
            assert r["S"] >= 0 and r["loss"] > 0
    assert set(result["summary"]) == rows | set(REFERENCES)
    assert all(set(per["references"]) == set(REFERENCES) for per in result["seeds"].values())
    assert result["command"].endswith("-m bench.toy_gmm --quick") and result["wall_s"] > 0


def test_summary_is_the_mean_of_the_seeds_and_each_interval_holds_it(quick: Quick) -> None:
    result, _ = quick
    for row, summ in result["summary"].items():
        if row in REFERENCES:
            values = [p["references"][row]["w2"] for p in result["seeds"].values()]
            iv = summ["w2"]
        else:
            values = [p["rows"][row]["mmd2"]["1"] for p in result["seeds"].values()]
            iv = summ["mmd2"]["1"]
        assert iv["mean"] == pytest.approx(np.mean(values))
        assert iv["lo"] <= iv["mean"] <= iv["hi"]


def test_the_floor_is_the_distance_between_true_samples_of_that_seed(quick: Quick) -> None:
    result, _ = quick
    for seed, per in result["seeds"].items():
        w = make_world(QUICK, int(seed))
        ref = w.mixture.sample(QUICK.n_eval, np.random.default_rng([int(seed), 2]))[0]
        others = [
            w.mixture.sample(QUICK.n_eval, np.random.default_rng([int(seed), 3, r]))[0]
            for r in range(QUICK.floor_reps)
        ]
        floor = per["references"]["floor"]
        assert floor["w2"] == pytest.approx(np.mean([w2(x, ref) for x in others]))
        assert floor["mmd2"] == pytest.approx(np.mean([mmd2(x, w.mixture, QUICK.bandwidths) for x in others]))


def test_the_oracle_is_straighter_and_closer_in_one_step_than_unconditional(quick: Quick) -> None:
    result, _ = quick
    for per in result["seeds"].values():
        oracle, uncond = per["rows"]["oracle"], per["rows"]["unconditional"]
        assert oracle["S"] < uncond["S"]
        assert oracle["mmd2"]["1"] < uncond["mmd2"]["1"]


def test_report_section_and_figure(quick: Quick) -> None:
    result, png = quick
    lines = report_lines(result)
    text = "\n".join(lines)
    assert lines[0] == "## The toy of section 3.2: a Gaussian mixture"
    assert "(results/toy_gmm.png)" in text and result["command"] in text
    for row in (*CONDITIONS, *EXTRA_ROWS):
        assert sum(line.startswith(f"| {row} |") for line in lines) == 2  # the MMD and the W2 table
    assert "What holds" in text and "What does not hold" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unwritable_output_is_refused_before_the_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.toy_gmm", "--quick", "--json", "/dev/null/r.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout.startswith("error: ") and "Traceback" not in proc.stderr
