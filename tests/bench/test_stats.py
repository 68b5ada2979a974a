"""The reproduction's statistics (bench._stats) on cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import _stats as st


def test_steps_to_reach_interpolates_in_log_log_and_uses_the_running_minimum():
    steps, fd = [100, 200, 400], [100.0, 50.0, 25.0]
    assert st.steps_to_reach(steps, fd, 50.0) == pytest.approx(200)
    # halfway in log FD between 50 and 25 is halfway in log step between 200 and 400
    assert st.steps_to_reach(steps, fd, math.sqrt(50 * 25)) == pytest.approx(math.sqrt(200 * 400))
    assert st.steps_to_reach(steps, fd, 10.0) is None
    # a curve that went back up still counts as having reached its best value
    assert st.steps_to_reach([100, 200, 400], [80.0, 40.0, 60.0], 40.0) == pytest.approx(200)
    assert st.steps_to_reach(steps, fd, 500.0) == 100


def test_speedup_is_the_step_ratio_and_flags_a_censored_first_checkpoint():
    base = ([100, 200, 400, 800], [100.0, 50.0, 25.0, 20.0])
    ratio, censored = st.speedup(*base, [25, 50, 100], [80.0, 25.0, 20.0], 25.0)
    assert ratio == pytest.approx(400 / 50) and not censored
    ratio, censored = st.speedup(*base, [25, 50], [20.0, 15.0], 25.0)
    assert ratio == pytest.approx(400 / 25) and censored  # GMem was already there at its first checkpoint
    assert st.speedup(*base, [25, 50], [90.0, 60.0], 25.0) == (None, False)


def test_wilson_interval_matches_known_values():
    lo, hi = st.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = st.wilson(5, 10)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1500, 16))
    terms = st.kid_terms(ref / st.kid_scale(ref))
    same = st.kid(rng.normal(size=(500, 16)) / st.kid_scale(ref), terms)
    shifted = st.kid((rng.normal(size=(500, 16)) + 0.5) / st.kid_scale(ref), terms)
    assert abs(same) < 0.01 and shifted > 0.1


def test_fd_bootstrap_interval_brackets_a_shifted_sample():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 8))
    fake = rng.normal(size=(400, 8)) + 1.0  # FD = |shift|^2 = 8 plus sampling error
    point, (lo, hi), reps = st.fd_with_ci(fake, ref, st.bootstrap_indices(400, 100, seed=0))
    assert lo < hi and len(reps) == 100
    assert lo < 8.0 < hi + 1.0 and abs(point - 8.0) < 1.5
