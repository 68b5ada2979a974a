"""The toy of the GMem paper's section 3.2: a memory makes the learned transport simpler.

    .venv/bin/python -m bench.toy_gmm [--quick] [--json PATH] [--png PATH]

Data: a 2-D Gaussian mixture, K components on a ring, small isotropic std, equal weights (its density
is known exactly). Four rectified-flow velocity models, the same MLP, steps, batch and optimiser, on
the linear path of ``training.flow.transport`` (t = 0 noise, t = 1 data, target ``v* = x - eps``):

- ``unconditional``: no conditioning (the condition input is held at 0, so the network is the same);
- ``cluster mean``: conditioned on the mean of the component x was drawn from;
- ``gmem``: a memory of M points drawn from the training set; each training x is conditioned on its
  nearest stored point, and at sampling a stored point is drawn uniformly from memory, as the release
  draws bank rows (``torch.randint``, LINs-lab/GMem ``engine/evaluation.py``);
- ``oracle``: conditioned on x itself, the conditions at sampling drawn from the training set without
  repeats. The release pairs each image with its own image's snippet (LINs-lab/GMem
  ``datasets/img_latent_dataset.py``) and keeps one bank row per image, so this is the release's
  pairing with the memory = the training set; in 2-D, where the "snippet" is x itself and not a lossy
  feature of it, it is the degenerate strong end (every path a straight line).

The GMem network is also sampled with the stored point drawn in proportion to its cell's share of the
training set (row ``gmem, cell-weighted``, same network, no extra training): with M much smaller than
the training set the stored points are not spread over the components in their true proportions, and
uniform memory sampling carries that error into the samples however good the network. Row ``gmem
sampling floor`` measures that error alone: training points drawn through the uniform rule, no network.

Distance, primary: the unbiased MMD^2 of the n generated points to the mixture itself, Gaussian
kernels of bandwidth std, 4 std and 16 std summed (within-component shape, component weights), with
the mixture's side in closed form (``mmd2``), so only the generated side is sampled. It is 0 in
expectation for true samples (row ``floor``: its noise at this n), a metric on distributions for a
characteristic kernel, and costs O(n^2). Secondary: exact W2 between n generated and n fresh true
points (optimal assignment, ``scipy.optimize.linear_sum_assignment``) with its floor, the same W2
between two true samples. W2 is in the data's units and needs no kernel, but at n = 1000 its floor is
dominated by how many points land in each component (binomial counts, mass moved ~2.3 between
neighbours), and a model that leaves mass between components pays less for that noise than true
samples do: in trial runs the unconditional model's W2 at 64 NFE fell below the floor. A likelihood
of the samples under the known density is no distance at all: samples collapsed onto the component
means score better than true samples.

Straightness (Liu et al., rectified flow): ``S = E_paths (1/N) sum_k |v(x_k, t_k) - (x_N - x_0)|^2``
along the Euler path with N = ``straight_nfe`` steps (0 = straight lines at constant speed). The
distances are measured at 1, 2, 4, 8, 16 and 64 Euler steps: low NFE is where straightness pays.

Intervals: mean and 95% Student-t interval over training seeds (``mean +- t_{0.975, n-1} s / sqrt(n)``).
With 5 seeds a bootstrap would resample 5 numbers and undercover; t is the usual small-sample
choice. Claims against ``unconditional`` use the paired difference per seed (same training set,
initial weights, noise and reference sample), with its own t-interval. Printed ratios are against
``unconditional`` in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import t as student_t
from torch import nn
from tqdm import tqdm

from shared.fileio import atomic_path
from training.flow.samplers import euler, time_grid
from training.flow.transport import PATH, flow_matching_loss


@dataclass(frozen=True)
class ToySettings:
    """Everything a run depends on (stored in the json)."""

    K: int = 8
    radius: float = 3.0
    std: float = 0.15
    n_train: int = 8192
    M: int = 64
    hidden: int = 64
    depth: int = 3
    steps: int = 2000
    batch: int = 256
    lr: float = 2e-3
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_eval: int = 1000
    nfe: tuple[int, ...] = (1, 2, 4, 8, 16, 64)
    straight_nfe: int = 64
    bandwidths: tuple[float, ...] = (0.15, 0.6, 2.4)  # MMD kernel: std, 4 std, 16 std
    floor_reps: int = 4  # true samples averaged into each seed's floor
    between_share: float = 0.06  # share of a true sample moved between components (row "between modes")


QUICK = ToySettings(
    n_train=2048, steps=200, batch=128, seeds=(0, 1, 2), n_eval=200, nfe=(1, 4, 16), straight_nfe=16
)


# ------------------------------------------------------------------ data and memory


@dataclass(frozen=True)
class Mixture:
    """K isotropic Gaussians of std ``std`` on a ring of radius ``radius``, equal weights."""

    means: np.ndarray  # [K, 2]
    std: float

    @classmethod
    def ring(cls, K: int, radius: float, std: float) -> Mixture:
        a = 2 * np.pi * np.arange(K) / K
        return cls(np.stack([radius * np.cos(a), radius * np.sin(a)], 1), std)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = rng.integers(len(self.means), size=n)
        return self.means[k] + self.std * rng.standard_normal((n, 2)), k


def nearest(x: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Index of the nearest stored point of each x."""
    idx: np.ndarray = cdist(x, memory, "sqeuclidean").argmin(1)
    return idx


@dataclass(frozen=True)
class World:
    """One seed's data: the training set, its components, the memory and each point's nearest slot."""

    mixture: Mixture
    x: np.ndarray
    k: np.ndarray
    memory: np.ndarray
    slot: np.ndarray


def make_world(s: ToySettings, seed: int) -> World:
    mixture = Mixture.ring(s.K, s.radius, s.std)
    rng = np.random.default_rng([seed, 0])
    x, k = mixture.sample(s.n_train, rng)
    memory = x[rng.choice(s.n_train, s.M, replace=False)]
    return World(mixture, x, k, memory, nearest(x, memory))


# ------------------------------------------------------------------ conditioning, one row per variant


@dataclass(frozen=True)
class Conditioning:
    """What a variant conditions on: ``train(world, idx)`` for training rows, ``sample(world, n, rng)``."""

    train: Callable[[World, np.ndarray], np.ndarray]
    sample: Callable[[World, int, np.random.Generator], np.ndarray]


def _cell_weighted(w: World, n: int, rng: np.random.Generator) -> np.ndarray:
    c: np.ndarray = w.memory[w.slot[rng.integers(len(w.x), size=n)]]  # a training point's slot: cell share
    return c


CONDITIONS: dict[str, Conditioning] = {
    "unconditional": Conditioning(lambda w, i: np.zeros((len(i), 2)), lambda w, n, rng: np.zeros((n, 2))),
    "cluster mean": Conditioning(
        lambda w, i: w.mixture.means[w.k[i]],
        lambda w, n, rng: w.mixture.means[rng.integers(len(w.mixture.means), size=n)],
    ),
    "gmem": Conditioning(
        lambda w, i: w.memory[w.slot[i]], lambda w, n, rng: w.memory[rng.integers(len(w.memory), size=n)]
    ),
    # The memory is the whole training set; n distinct points, so no sample is a repeat of another.
    "oracle": Conditioning(
        lambda w, i: w.x[i], lambda w, n, rng: w.x[rng.choice(len(w.x), n, replace=False)]
    ),
}
# Evaluation-only rows: (trained variant whose network is used, how its condition is drawn).
EXTRA_ROWS: dict[str, tuple[str, Callable[[World, int, np.random.Generator], np.ndarray]]] = {
    "gmem, cell-weighted": ("gmem", _cell_weighted),
}
BASELINE = "unconditional"
METRICS = ("mmd2", "w2")
REFERENCES = ("floor", "between modes", "gmem sampling floor")
Json = dict[str, Any]  # what goes to the json file


# ------------------------------------------------------------------ network and training


class VelocityMLP(nn.Module):
    """v(x_t, t, c): an MLP on [x_t, c, Fourier features of t]."""

    freq: torch.Tensor

    def __init__(self, hidden: int, depth: int, n_freq: int = 4) -> None:
        super().__init__()
        self.register_buffer("freq", math.pi * torch.arange(1, n_freq + 1, dtype=torch.float32))
        layers: list[nn.Module] = [nn.Linear(2 + 2 + 1 + 2 * n_freq, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ft = t[:, None] * self.freq
        v: torch.Tensor = self.net(torch.cat([x, c, t[:, None], ft.cos(), ft.sin()], 1))
        return v


def train(s: ToySettings, w: World, cond: Conditioning, seed: int) -> tuple[VelocityMLP, float]:
    """Flow matching on the linear path; returns the network and the mean loss of the last 10% of steps."""
    torch.manual_seed(seed)  # same initial weights for every variant of a seed
    net = VelocityMLP(s.hidden, s.depth)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.steps)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    x_all = torch.from_numpy(w.x).float()
    losses = []
    for _ in range(s.steps):
        i = rng.integers(s.n_train, size=s.batch)
        x, c = x_all[i], torch.from_numpy(cond.train(w, i)).float()
        eps = torch.randn(x.shape, generator=g)
        t = torch.rand(s.batch, generator=g)
        loss = flow_matching_loss(net(PATH.x_t(x, eps, t), t, c), PATH.velocity(x, eps, t)).total
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
        sched.step()
        losses.append(loss.item())
    return net.eval(), float(np.mean(losses[-max(1, s.steps // 10) :]))


# ------------------------------------------------------------------ sampling and metrics


@torch.inference_mode()
def sample_paths(
    net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x0: np.ndarray,
    c: np.ndarray,
    nfe: int,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Euler from noise ``x0``: (x_1, straightness S of the paths, the path [nfe + 1, n, 2])."""
    cc = torch.from_numpy(c).float()
    xs, vs = [], []

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = net(x, t.float(), cc)
        xs.append(x)
        vs.append(out)
        return out

    start = torch.from_numpy(x0).float()
    x1 = euler(v, start, time_grid(nfe))
    chord = x1 - start
    straight = torch.stack([(vk - chord).pow(2).sum(1) for vk in vs]).mean().item()
    return x1.numpy().astype(np.float64), straight, torch.stack([*xs, x1]).numpy()


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between two empirical measures of n points each (optimal assignment)."""
    cost = cdist(a, b, "sqeuclidean")
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def mmd2(x: np.ndarray, mixture: Mixture, bandwidths: tuple[float, ...]) -> float:
    """Unbiased MMD^2 between the sample ``x`` and the mixture itself, kernel ``sum_h exp(-|a-b|^2/2h^2)``.

    ``1/(n(n-1)) sum_{i!=j} k(x_i, x_j) - 2/n sum_i E_y k(x_i, y) + E_{y,y'} k(y, y')`` with both
    expectations over the mixture in closed form (a Gaussian kernel against a Gaussian is Gaussian):
    in 2-D ``E_{y~N(mu, s^2 I)} k_h(x, y) = h^2/(h^2+s^2) exp(-|x-mu|^2 / 2(h^2+s^2))``.
    """
    n, mu, s2 = len(x), mixture.means, mixture.std**2
    d_xx, d_xm = cdist(x, x, "sqeuclidean"), cdist(x, mu, "sqeuclidean")
    d_mm = cdist(mu, mu, "sqeuclidean")
    total = 0.0
    for h2 in (h * h for h in bandwidths):
        k_xx = (np.exp(-d_xx / (2 * h2)).sum() - n) / (n * (n - 1))
        k_xy = (h2 / (h2 + s2) * np.exp(-d_xm / (2 * (h2 + s2)))).mean()
        k_yy = (h2 / (h2 + 2 * s2) * np.exp(-d_mm / (2 * (h2 + 2 * s2)))).mean()
        total += k_xx - 2 * k_xy + k_yy
    return float(total)


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% Student-t interval over seeds."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    h = float(student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return {"mean": m, "lo": m - h, "hi": m + h}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Interval of the per-seed difference a - b."""
    return interval([x - y for x, y in zip(a, b, strict=True)])


# ------------------------------------------------------------------ one seed, the whole run


def gmem_sampling_floor(w: World, n: int, rng: np.random.Generator) -> np.ndarray:
    """Training points drawn by the uniform-memory rule: a slot uniformly, then a point of its cell."""
    cells = [np.flatnonzero(w.slot == m) for m in range(len(w.memory))]  # never empty: holds m itself
    return w.x[[rng.choice(cells[m]) for m in rng.integers(len(w.memory), size=n)]]


def between_modes(
    m: Mixture, x: np.ndarray, k: np.ndarray, share: float, rng: np.random.Generator
) -> np.ndarray:
    """A wrong distribution: ``share`` of a true sample moved halfway to the next component (std kept)."""
    y, moved = x.copy(), rng.random(len(x)) < share
    half = 0.5 * (m.means[k[moved]] + m.means[(k[moved] + 1) % len(m.means)])
    y[moved] = half + m.std * rng.standard_normal((int(moved.sum()), 2))
    return y


def distances(s: ToySettings, x: np.ndarray, w: World, ref: np.ndarray) -> dict[str, float]:
    return {"mmd2": mmd2(x, w.mixture, s.bandwidths), "w2": w2(x, ref)}


def references(s: ToySettings, w: World, seed: int, ref: np.ndarray) -> dict[str, dict[str, float]]:
    """The rows with no network: the floor (true samples), a between-modes sample, the GMem sampling floor."""
    others = [w.mixture.sample(s.n_eval, np.random.default_rng([seed, 3, r])) for r in range(s.floor_reps)]
    rng = np.random.default_rng([seed, 7])
    wrong = [between_modes(w.mixture, x, k, s.between_share, rng) for x, k in others]  # paired with the floor
    uniform_rule = gmem_sampling_floor(w, s.n_eval, np.random.default_rng([seed, 5]))

    def mean(samples: list[np.ndarray]) -> dict[str, float]:
        per = [distances(s, x, w, ref) for x in samples]
        return {m: float(np.mean([d[m] for d in per])) for m in METRICS}

    return {
        "floor": mean([x for x, _ in others]),
        "between modes": mean(wrong),
        "gmem sampling floor": distances(s, uniform_rule, w, ref),
    }


def run_seed(s: ToySettings, seed: int, keep: Json | None = None) -> Json:
    """Train the four variants on one seed's data and measure every row; ``keep`` collects plot data."""
    w = make_world(s, seed)
    ref, _ = w.mixture.sample(s.n_eval, np.random.default_rng([seed, 2]))
    x0 = np.random.default_rng([seed, 4]).standard_normal((s.n_eval, 2))
    out: Json = {"references": references(s, w, seed, ref), "rows": {}}
    nets = {}
    for name, cond in CONDITIONS.items():
        nets[name], loss = train(s, w, cond, seed)
        out["rows"][name] = {"loss": loss}
    draws = {name: (name, c.sample) for name, c in CONDITIONS.items()} | EXTRA_ROWS
    for row, (variant, draw) in draws.items():
        c = draw(w, s.n_eval, np.random.default_rng([seed, 6]))  # the same stream for every row
        r = out["rows"].setdefault(row, {"loss": out["rows"][variant]["loss"]})
        r["mmd2"], r["w2"] = {}, {}
        for nfe in sorted({*s.nfe, s.straight_nfe}):
            x1, straight, path = sample_paths(nets[variant], x0, c, nfe)
            if nfe == s.straight_nfe:
                r["S"] = straight
            if nfe not in s.nfe:
                continue
            for metric, value in distances(s, x1, w, ref).items():
                r[metric][str(nfe)] = value
            if keep is not None and nfe in (min(s.nfe), max(s.nfe)):
                keep.setdefault(row, {})[nfe] = x1
                if nfe == max(s.nfe):
                    keep[row]["paths"] = path[:, :24]
    if keep is not None:
        keep["ref"], keep["memory"] = ref, w.memory
    return out


def summarise(s: ToySettings, seeds: dict[str, Json]) -> tuple[Json, Json]:
    """Intervals per row and metric, and the paired differences the report's claims rest on."""
    per = list(seeds.values())
    rows = list(per[0]["rows"])

    def col(r: str, metric: str, nfe: int | None = None) -> list[float]:
        return [p["rows"][r][metric] if nfe is None else p["rows"][r][metric][str(nfe)] for p in per]

    summary: Json = {
        r: {"S": interval(col(r, "S")), "loss": interval(col(r, "loss"))}
        | {m: {str(n): interval(col(r, m, n)) for n in s.nfe} for m in METRICS}
        for r in rows
    }
    for ref in REFERENCES:
        summary[ref] = {m: interval([p["references"][ref][m] for p in per]) for m in METRICS}
    pairs = [(r, BASELINE) for r in rows if r != BASELINE]
    pairs += [
        ("gmem", "cluster mean"),
        ("gmem, cell-weighted", "cluster mean"),
        ("gmem, cell-weighted", "gmem"),
    ]
    diffs = {
        f"{a} - {b}": {"S": paired(col(a, "S"), col(b, "S"))}
        | {m: {str(n): paired(col(a, m, n), col(b, m, n)) for n in s.nfe} for m in METRICS}
        for a, b in pairs
    }
    diffs["between modes - floor"] = {
        m: paired(*([p["references"][r][m] for p in per] for r in ("between modes", "floor")))
        for m in METRICS
    }
    return summary, diffs


def run(s: ToySettings) -> tuple[Json, Json]:
    """Every seed, then the summary: (the result for the json, plot data of the first seed)."""
    t0 = time.perf_counter()
    keep: Json = {}
    seeds = {}
    for seed in tqdm(s.seeds, desc="toy_gmm seeds"):
        seeds[str(seed)] = run_seed(s, seed, keep if seed == s.seeds[0] else None)
    summary, diffs = summarise(s, seeds)
    result = {
        "settings": dataclasses.asdict(s),
        "command": ".venv/bin/python -m bench.toy_gmm" + (" --quick" if s == QUICK else ""),
        "params": sum(p.numel() for p in VelocityMLP(s.hidden, s.depth).parameters()),
        "n": s.n_eval,
        "metrics": {
            "mmd2": "unbiased MMD^2 of n generated points to the mixture, true-side terms exact (primary)",
            "w2": "exact W2 between n generated and n fresh true points, optimal assignment",
            "S": f"mean over paths of (1/N) sum_k |v_k - (x_1 - x_0)|^2, Euler N = {s.straight_nfe}",
        },
        "interval": "mean and 95% Student-t interval over seeds; paired: per-seed differences",
        "baseline": BASELINE,
        "seeds": seeds,
        "summary": summary,
        "paired": diffs,
        "wall_s": time.perf_counter() - t0,
    }
    return result, keep


# ------------------------------------------------------------------ report and figure


def _fmt(iv: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{iv['mean'] * scale:.{digits}f} [{iv['lo'] * scale:.{digits}f}, {iv['hi'] * scale:.{digits}f}]"


NO_NETWORK = {
    "floor": "true samples = floor",
    "between modes": "true sample, {share:.0%} moved between components",
    "gmem sampling floor": "gmem sampling floor",
}


def _table(result: Json, metric: str, scale: float, digits: int, extras: bool) -> list[str]:
    s, summ = result["settings"], result["summary"]
    nfe = [str(n) for n in s["nfe"]]
    head = ["row", *(["S (straightness)"] if extras else []), *(f"NFE {n}" for n in nfe)]
    head += ["train loss"] if extras else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, r in summ.items():
        if row in REFERENCES:
            name = NO_NETWORK[row].format(share=s["between_share"])
            cells = [
                f"{name} (no network)",
                *(["-"] if extras else []),
                *[_fmt(r[metric], scale, digits)] * len(nfe),
            ]
            cells += ["-"] if extras else []
        else:
            cells = [
                row,
                *([_fmt(r["S"], 1, 3)] if extras else []),
                *(_fmt(r[metric][n], scale, digits) for n in nfe),
            ]
            cells += [_fmt(r["loss"], 1, 3)] if extras else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _claims(result: Json) -> tuple[list[str], list[str]]:
    """Each claim 'a is lower than b' on a metric, sorted into holds / does not (paired interval vs 0)."""
    nfe = result["settings"]["nfe"]
    lo_hi = [str(min(nfe)), str(max(nfe))]
    conditioned = [v for v in CONDITIONS if v != BASELINE]
    claims: list[tuple[str, str, str, str | None]] = [(v, BASELINE, "S", None) for v in conditioned]
    claims += [("gmem", "cluster mean", "S", None)]
    claims += [(v, BASELINE, "mmd2", n) for n in lo_hi for v in [*conditioned, *EXTRA_ROWS]]
    versus = [
        ("gmem", "cluster mean"),
        ("gmem, cell-weighted", "cluster mean"),
        ("gmem, cell-weighted", "gmem"),
    ]
    claims += [(a, b, "mmd2", n) for n in lo_hi for a, b in versus]
    holds, fails = [], []
    for a, b, metric, n in claims:
        d, sa, sb = (
            x[metric] for x in (result["paired"][f"{a} - {b}"], result["summary"][a], result["summary"][b])
        )
        scale, what = (1.0, "S (path straightness)") if n is None else (1e3, f"MMD² ×10³ at {n} NFE")
        if n is not None:
            d, sa, sb = d[n], sa[n], sb[n]
        nums = f"{_fmt(sa, scale)} vs {_fmt(sb, scale)}, paired difference {_fmt(d, scale)}"
        if d["hi"] < 0:
            holds.append(f"- {a} is lower than {b} on {what}: {nums}.")
        elif d["lo"] > 0:
            fails.append(f"- {a} is higher than {b} on {what} (the reverse holds): {nums}.")
        else:
            fails.append(f"- {a} vs {b} on {what}: not separable (the interval holds 0): {nums}.")
    return holds, fails


def report_lines(result: Json) -> list[str]:
    """The markdown section for docs/RESULTS.md."""
    s, summ, diffs = result["settings"], result["summary"], result["paired"]
    holds, fails = _claims(result)
    share = f"{s['between_share']:.0%}"
    bm = diffs["between modes - floor"]
    lines = [
        "## The toy of section 3.2: a Gaussian mixture",
        "",
        f"Regenerate with `{result['command']}` (CPU, 1 thread, {result['wall_s']:.0f} s wall).",
        "",
        f"A 2-D mixture of {s['K']} Gaussians (std {s['std']}) on a ring of radius {s['radius']}, "
        f"{s['n_train']} training points. Four rectified-flow velocity MLPs ({result['params']} "
        f"parameters, {s['depth']} hidden layers of {s['hidden']}), the same {s['steps']} Adam steps of "
        f"batch {s['batch']} on the linear path (t = 0 noise, t = 1 data): unconditional; conditioned on "
        f"the mean of x's component; GMem, conditioned on the nearest of M = {s['M']} stored training "
        "points and sampled with a stored point drawn uniformly (as the release draws bank rows); the "
        "oracle, conditioned on x itself (in 2-D the condition is the answer: the straight end, not a "
        "method). `gmem, cell-weighted` is the same GMem network sampled with each stored point in "
        "proportion to its share of the training set. Rows with no network: true samples (the floor, "
        f"mean of {s['floor_reps']} per seed), the same true samples with {share} of their points moved "
        "halfway to the next component (a wrong distribution), and the GMem sampling floor (training "
        "points drawn through the uniform memory rule). The train loss falls as the condition tells "
        "more about x (less of the flow-matching loss is irreducible); it is not a quality measure.",
        "",
        f"Mean and 95% Student-t interval over {len(s['seeds'])} training seeds; a seed shares data, "
        "initial weights, noise and reference sample across rows, and claims use the per-seed paired "
        f"difference. n = {result['n']} samples per measurement, Euler sampler. "
        "S = mean over paths of (1/N) Σ_k |v(x_k, t_k) − (x_1 − x_0)|² "
        f"on {s['straight_nfe']} Euler steps (0 = straight). Primary distance: unbiased MMD² to the "
        "mixture itself, Gaussian kernels of bandwidth "
        f"{', '.join(str(h) for h in s['bandwidths'])} summed, the mixture's side in closed form "
        "(0 = the true distribution; the floor row shows its noise on true samples).",
        "",
        "MMD² ×10³ by number of Euler steps (NFE):",
        "",
        *_table(result, "mmd2", 1e3, 2, extras=True),
        "",
        "Exact W2 (optimal assignment) between n generated and n fresh true points, by NFE:",
        "",
        *_table(result, "w2", 1.0, 3, extras=False),
        "",
        "![toy GMM: samples, paths, distance vs NFE](results/toy_gmm.png)",
        "",
        "What holds (the paired 95% interval of the per-seed difference lies below 0):",
        "",
        *(holds or ["- none of the claims below"]),
        "",
        "What does not hold:",
        "",
        *(fails or ["- every claim checked holds"]),
        "",
        f"Why W2 is not the primary distance: moving {share} of a true sample between components makes "
        f"its W2 {'lower' if bm['w2']['hi'] < 0 else 'not higher'} than the floor (paired difference "
        f"{_fmt(bm['w2'], 1, 3)}) while its MMD² ×10³ rises by {_fmt(bm['mmd2'], 1e3)}. At n = "
        f"{result['n']} the W2 between two true samples is mostly the cost of binomial component counts, "
        "and mass left between components pays that cost more cheaply than true samples do; the W2 rows "
        "are therefore compared only with care, and the claims rest on MMD².",
        "",
    ]
    sf, fl = summ["gmem sampling floor"]["mmd2"], summ["floor"]["mmd2"]
    if sf["lo"] > fl["hi"]:
        lines += [
            f"The uniform memory rule has a price when M = {s['M']} is much smaller than the training set: "
            "the stored points do not fall on the components in their true proportions, and drawing them "
            f"uniformly keeps that error whatever the network (sampling floor MMD² ×10³ {_fmt(sf, 1e3)} vs "
            f"floor {_fmt(fl, 1e3)}); drawing each stored point by its cell's share removes it (row "
            "`gmem, cell-weighted`). The "
            "release keeps one bank row per training image, where uniform draws are the empirical "
            "distribution and this error does not arise.",
            "",
        ]
    lines += [
        "Scope: a 2-D toy at one small budget. It measures what the conditioning does to the learned "
        "transport (straightness, steps needed at equal network and training); it says nothing about "
        "images, FID or the paper's training speed-ups.",
        "",
    ]
    return lines


def plot(result: Json, keep: Json, png: Path) -> None:
    """Samples and paths per row (first seed), distance vs NFE with intervals, straightness per row."""
    # matplotlib only here: the rest of the module (and its tests of the math) does not need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, summ = result["settings"], result["summary"]
    rows = [r for r in summ if r not in REFERENCES]
    lo, hi = min(s["nfe"]), max(s["nfe"])
    fig = plt.figure(figsize=(3.2 * len(rows), 9.6), layout="constrained")
    top, bottom = np.asarray(fig.subfigures(2, 1, height_ratios=[2, 1])).ravel()
    axes = top.subplots(2, len(rows), sharex=True, sharey=True)
    lim = s["radius"] + 4 * s["std"] + 0.5
    for j, row in enumerate(rows):
        for i, nfe in enumerate((hi, lo)):
            ax = axes[i, j]
            ax.scatter(*keep["ref"].T, s=2, c="0.8")
            ax.scatter(*keep[row][nfe].T, s=2, c=f"C{j}")
            if nfe == hi:
                ax.plot(keep[row]["paths"][:, :, 0], keep[row]["paths"][:, :, 1], c="k", lw=0.5, alpha=0.6)
            if row.startswith("gmem"):
                ax.scatter(*keep["memory"].T, s=12, marker="x", c="k", lw=0.8)
            ax.set_title(f"{row}, {nfe} NFE", fontsize=9)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
    panels = bottom.subplots(1, 3)
    for ax, metric, scale, name in ((panels[0], "mmd2", 1e3, "MMD² ×10³"), (panels[1], "w2", 1.0, "W2")):
        for j, row in enumerate(rows):
            iv = [summ[row][metric][str(n)] for n in s["nfe"]]
            m = [v["mean"] * scale for v in iv]
            ax.plot(s["nfe"], m, "o-", c=f"C{j}", label=row, ms=3)
            ax.fill_between(
                s["nfe"],
                [v["lo"] * scale for v in iv],
                [v["hi"] * scale for v in iv],
                color=f"C{j}",
                alpha=0.2,
            )
        for ref, style in zip(REFERENCES, ("--", "-.", ":"), strict=True):
            ax.axhline(summ[ref][metric]["mean"] * scale, c="k", ls=style, lw=1, label=ref)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1.0 if metric == "mmd2" else 0.1)
        ax.set_xlabel("Euler steps (NFE)")
        ax.set_ylabel(f"{name}, mean and 95% interval")
    handles, labels = panels[0].get_legend_handles_labels()
    bottom.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    S = [summ[r]["S"] for r in rows]
    panels[2].bar(range(len(rows)), [v["mean"] for v in S], color=[f"C{j}" for j in range(len(rows))])
    panels[2].errorbar(
        range(len(rows)),
        [v["mean"] for v in S],
        yerr=[[v["mean"] - v["lo"] for v in S], [v["hi"] - v["mean"] for v in S]],
        fmt="none",
        c="k",
    )
    panels[2].set_xticks(range(len(rows)), rows, rotation=30, ha="right", fontsize=8)
    panels[2].set_yscale("log")
    panels[2].set_ylabel(f"S on {s['straight_nfe']} steps (lower = straighter)")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds' version (for tests)")
    ap.add_argument("--json", type=Path, default=Path("docs/results/toy_gmm.json"))
    ap.add_argument("--png", type=Path, default=Path("docs/results/toy_gmm.png"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads < 1:
        ap.error(f"--threads must be at least 1; got {args.threads}")
    for out in (args.json, args.png):  # fail before minutes of work, not after
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"error: cannot create the folder of {out}: {e}; pass a writable --json/--png path")
            raise SystemExit(2) from e
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else ToySettings()
    result, keep = run(s)
    summ = result["summary"]
    base = summ[BASELINE]
    print(f"{len(s.seeds)} seeds, n = {s.n_eval}, {result['wall_s']:.0f} s; (ratio to {BASELINE})")
    for row, r in summ.items():
        if row in REFERENCES:
            print(f"  {row:22s} MMD2 x1e3 {r['mmd2']['mean'] * 1e3:.2f}, W2 {r['w2']['mean']:.3f}")
            continue
        S = f"S {r['S']['mean']:.4f} ({r['S']['mean'] / base['S']['mean']:.3f})"
        m, b = ([v[str(n)]["mean"] for n in s.nfe] for v in (r["mmd2"], base["mmd2"]))
        by_nfe = ", ".join(f"{n}: {x * 1e3:.2f} ({x / y:.3f})" for n, x, y in zip(s.nfe, m, b, strict=True))
        print(f"  {row:22s} {S}; MMD2 x1e3 by NFE {by_nfe}")
    try:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        plot(result, keep, args.png)
    except OSError as e:
        print(f"error: cannot write the results: {e}; pass a writable --json/--png path")
        raise SystemExit(2) from e
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
