"""Statistics of the reproduction (bench.reproduce): FD and KID with bootstrap intervals, matched-FD speedups.

Everything works on evaluation-network features, so it can be recomputed from the saved
feature files without sampling again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.evaluate import frechet_distance


def kid_scale(ref: np.ndarray) -> float:
    """Features are divided by this so that ``x.y / d`` is about 1 on the reference, as for the Inception
    features KID was defined on; the evalnet's ReLU features are far larger, and the cubic kernel of raw
    features would be dominated by a few dimensions and by rounding."""
    r = np.asarray(ref, dtype=np.float64)
    return float(np.sqrt((r * r).sum(1).mean() / r.shape[1]))


def kid_terms(ref: np.ndarray) -> tuple[np.ndarray, float]:
    """The reference side of KID, computed once: ``ref`` (float64, already scaled) and mean off-diagonal
    k(ref, ref)."""
    r = np.asarray(ref, dtype=np.float64)
    k_rr = _poly(r, r)
    n = len(r)
    return r, float((k_rr.sum() - np.trace(k_rr)) / (n * (n - 1)))


def _poly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (Binkowski et al. 2018): ``(a.b / d + 1)^3``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(fake: np.ndarray, ref_terms: tuple[np.ndarray, float]) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel between ``fake`` and the reference."""
    r, rr = ref_terms
    f = np.asarray(fake, dtype=np.float64)
    m = len(f)
    k_ff = _poly(f, f)
    ff = (k_ff.sum() - np.trace(k_ff)) / (m * (m - 1))
    fr = _poly(f, r).mean()
    return float(ff + rr - 2 * fr)


def bootstrap_indices(n: int, reps: int, seed: int) -> np.ndarray:
    """``reps`` resamples of ``range(n)`` with replacement, fixed by ``seed`` (rows: replicates)."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def fd_with_ci(
    fake: np.ndarray, ref: np.ndarray, idx: np.ndarray, level: float = 0.95
) -> tuple[float, tuple[float, float], np.ndarray]:
    """FD of ``fake`` against ``ref``, its bias-corrected percentile bootstrap interval over resamples of
    the fake samples (``idx`` from bootstrap_indices), and the (centred) replicates."""
    point = frechet_distance(ref, fake)
    reps = centred(np.array([frechet_distance(ref, fake[i]) for i in idx]), point)
    return point, percentile_ci(reps, level), reps


def centred(reps: np.ndarray, point: float) -> np.ndarray:
    """Replicates shifted so their mean is the point estimate. A resample with replacement repeats
    samples, which inflates FD (and KID) by about the estimator's own small-n bias; without this the
    interval would sit almost wholly above the estimate. (The bias-corrected percentile interval.)"""
    return np.asarray(reps, dtype=np.float64) - (float(np.mean(reps)) - point)


def percentile_ci(reps: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def steps_to_reach(steps: Sequence[int], fd: Sequence[float], target: float) -> float | None:
    """First training step at which the curve reaches FD ``target``, interpolated linearly in
    (log step, log FD) between checkpoints; the curve is made monotone by its running minimum
    (a model that was once this good counts as having reached it). None if never reached."""
    s = np.asarray(steps, dtype=np.float64)
    best = np.minimum.accumulate(np.asarray(fd, dtype=np.float64))
    if best[0] <= target:
        return float(s[0])
    hit = np.nonzero(best <= target)[0]
    if len(hit) == 0:
        return None
    j = int(hit[0])
    x0, x1 = math.log(s[j - 1]), math.log(s[j])
    y0, y1 = math.log(best[j - 1]), math.log(best[j])
    frac = 0.0 if y0 == y1 else (math.log(target) - y0) / (y1 - y0)
    return float(math.exp(x0 + frac * (x1 - x0)))


def speedup(
    base_steps: Sequence[int],
    base_fd: Sequence[float],
    steps: Sequence[int],
    fd: Sequence[float],
    target: float,
) -> tuple[float | None, bool]:
    """Step ratio (baseline steps / these steps) to reach FD ``target``; the flag is True when this
    curve was already below ``target`` at its first checkpoint, so the ratio is only a lower bound."""
    b = steps_to_reach(base_steps, base_fd, target)
    g = steps_to_reach(steps, fd, target)
    if b is None or g is None:
        return None, False
    return b / g, bool(fd[0] <= target)
