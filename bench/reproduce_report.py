"""Tables, curves and ``docs/results/reproduction.json`` from the features ``bench.reproduce`` saved.

Every number is recomputed from the saved evalnet features, so the report can be rewritten
(``python -m bench.reproduce --report-only``) without sampling again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import _stats as st
from bench.reproduce import KEY, VARIANTS, slug

COPY_QUANTILE = 10  # a sample is a copy when nearer to a training image than 90% of held-out images are


def _nn_dist(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each row of a to its nearest row of b (Euclidean), and that row's index."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    j = d2.argmin(1)
    return np.sqrt(np.maximum(d2[np.arange(len(a)), j], 0)), j


class Scorer:
    """FD/KID of feature sets against the training images, with bootstrap intervals."""

    def __init__(self, reps: int, n: int) -> None:
        from training.data import load_dataset, to_model_input
        from training.evaluate import EvalNet

        self.evalnet = EvalNet()
        train, held = load_dataset("mnist-5k:train"), load_dataset("mnist-5k:eval")
        self.ref = self.evalnet.features(to_model_input(train.images)).astype(np.float64)
        self.held = self.evalnet.features(to_model_input(held.images)).astype(np.float64)
        self.labels, self.labels_held = train.labels, held.labels
        self.kid_div = st.kid_scale(self.ref)
        self.kid_ref = st.kid_terms(self.ref / self.kid_div)
        self.idx = st.bootstrap_indices(n, reps, seed=0)
        self.n = n
        rng = np.random.default_rng(1)
        draws = [rng.choice(len(self.ref), n, replace=False) for _ in range(10)]
        fds = [st.frechet_distance(self.ref, self.ref[d]) for d in draws]
        kids = [st.kid(self.ref[d] / self.kid_div, self.kid_ref) * 1e3 for d in draws]
        self.floor = {
            "fd": float(np.mean(fds)),
            "fd_range": [float(min(fds)), float(max(fds))],
            "kid_x1e3": float(np.mean(kids)),
            "n": n,
            "what": f"{n} real training images (10 draws without replacement) against all 4500",
        }
        d_held, _ = _nn_dist(self.held, self.ref)
        self.copy_threshold = float(np.percentile(d_held, COPY_QUANTILE))

    def score(self, feats: np.ndarray) -> dict[str, Any]:
        f = feats.astype(np.float64)
        fd, fd_ci, reps = st.fd_with_ci(f, self.ref, self.idx)
        fk = f / self.kid_div
        k = st.kid(fk, self.kid_ref) * 1e3
        k_ff = st._poly(fk, fk)
        fr_rows = st._poly(fk, self.kid_ref[0]).mean(1)
        kid_reps = []
        m = len(f)
        for i in self.idx:
            sub = k_ff[np.ix_(i, i)]
            ff = (sub.sum() - np.trace(sub)) / (m * (m - 1))
            kid_reps.append((ff + self.kid_ref[1] - 2 * fr_rows[i].mean()) * 1e3)
        return {
            "fd": fd,
            "fd_ci": list(fd_ci),
            "kid_x1e3": k,
            "kid_ci": list(st.percentile_ci(st.centred(np.asarray(kid_reps), k))),
            "n": len(f),
            "floor": self.floor["fd"],
            "_reps": reps,
        }

    def consistency(self, feats: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        hits = int((self.evalnet.classify(feats.astype(np.float32)) == labels).sum())
        return {
            "k": hits,
            "n": len(labels),
            "rate": hits / len(labels),
            "ci": list(st.wilson(hits, len(labels))),
        }

    def copies(self, feats: np.ndarray, rows: np.ndarray | None) -> dict[str, Any]:
        d, j = _nn_dist(feats.astype(np.float64), self.ref)
        k = int((d < self.copy_threshold).sum())
        out = {"k": k, "n": len(d), "rate": k / len(d), "ci": list(st.wilson(k, len(d)))}
        if rows is not None:  # nearest training image is the very image whose snippet conditioned it
            own = int(((j == rows) & (d < self.copy_threshold)).sum())
            out["own_source"] = {"k": own, "rate": own / len(d), "ci": list(st.wilson(own, len(d)))}
        return out


def load_runs(work: Path) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name, v in VARIANTS.items():
        for seed in v.seeds:
            d = work / slug(name, seed)
            if (d / "done.json").exists():
                info = json.loads((d / "done.json").read_text())
                with np.load(d / "features.npz") as z:
                    info["features"] = {k: z[k] for k in z.files}
                runs.setdefault(name, {})[seed] = info
    return runs


def write_report(work: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs = load_runs(work)
    if not runs:
        raise SystemExit(f"no finished runs under {work}; run without --report-only first")
    any_run = next(iter(next(iter(runs.values())).values()))
    n = len(any_run["features"]["rows"])
    sc = Scorer(args.bootstrap, n)
    result: dict[str, Any] = {"n": n, "floor": sc.floor, "bootstrap": args.bootstrap, "variants": {}}
    reps_by: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for name, by_seed in runs.items():
        v = VARIANTS[name]
        entry: dict[str, Any] = {
            "conditioning": v.conditioning,
            "snippets": v.snippets,
            "mask_ratio": v.mask_ratio,
            "seeds": sorted(by_seed),
            "runs": {},
        }
        for seed, info in sorted(by_seed.items()):
            feats, rows = info["features"], info["features"]["rows"]
            curve = []
            for step in info["checkpoints"]:
                s = sc.score(feats[f"step_{step}"])
                reps_by.setdefault((name, seed), {})[step] = s.pop("_reps")
                if v.conditioning != "none":
                    s["consistency"] = sc.consistency(feats[f"step_{step}"], sc.labels[rows])["rate"]
                curve.append({"step": step, **s})
            final = feats[f"step_{info['checkpoints'][-1]}"]
            run: dict[str, Any] = {"curve": curve, "train_s": info["train_s"]}
            run["copy_rate"] = sc.copies(final, rows if v.conditioning == "snippet" else None)
            if v.conditioning != "none":
                run["consistency"] = sc.consistency(final, sc.labels[rows])
            if "held_out" in feats:
                run["held_out"] = held_out_block(sc, feats["held_out"])
            if "index_separate" in feats:
                run["index"] = index_block(sc, final, feats["index_separate"], rows, feats["rows_separate"])
            samplers = {k: feats[k] for k in feats if k.startswith("sampler_")}
            if samplers:
                run["samplers"] = sampler_block(sc, final, samplers)
            entry["runs"][str(seed)] = run
        result["variants"][name] = entry
    result["speedup_vs_class_conditional"] = speedups(result, reps_by, "class-conditional")
    result["speedup_vs_unconditional"] = speedups(result, reps_by, "unconditional")
    res = out_dir / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "reproduction.json").write_text(json.dumps(result, indent=1))
    plot_curves(result, res / "fd_curves.png")
    plot_speedup(result, res / "speedup.png")
    write_markdown(result, out_dir, args)
    print(f"wrote {res / 'reproduction.json'} and {out_dir / 'RESULTS.md'}")
    return result


def held_out_block(sc: Scorer, feats: np.ndarray) -> dict[str, Any]:
    """Samples from eq. 10 projections of the 500 held-out images, scored against those images."""
    f = feats.astype(np.float64)
    idx = st.bootstrap_indices(len(f), sc.idx.shape[0], seed=2)
    point = st.frechet_distance(sc.held, f)
    reps = st.centred(np.asarray([st.frechet_distance(sc.held, f[i]) for i in idx]), point)
    rng = np.random.default_rng(3)
    floor = [
        st.frechet_distance(sc.held, sc.ref[rng.choice(len(sc.ref), len(f), replace=False)])
        for _ in range(10)
    ]
    pool = np.concatenate([sc.held, sc.ref])
    _, j = _nn_dist(f, pool)
    own = int((j == np.arange(len(f))).sum())
    return {
        "fd_vs_held_out": point,
        "fd_ci": list(st.percentile_ci(reps)),
        "floor": float(np.mean(floor)),
        "n": len(f),
        "consistency": sc.consistency(feats, sc.labels_held),
        "nearest_is_source": {
            "k": own,
            "n": len(f),
            "rate": own / len(f),
            "ci": list(st.wilson(own, len(f))),
        },
    }


def paired_fd_diff(sc: Scorer, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """FD(a) - FD(b) on the same seeds, with a paired bootstrap interval (the same resample for both)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = st.frechet_distance(sc.ref, a64) - st.frechet_distance(sc.ref, b64)
    reps = [st.frechet_distance(sc.ref, a64[i]) - st.frechet_distance(sc.ref, b64[i]) for i in sc.idx]
    return {"diff": d, "ci": list(st.percentile_ci(st.centred(np.asarray(reps), d)))}


def index_block(
    sc: Scorer, tied: np.ndarray, sep: np.ndarray, rows: np.ndarray, rows_sep: np.ndarray
) -> dict[str, Any]:
    return {
        "noise_cdf": {
            "fd": st.frechet_distance(sc.ref, tied.astype(np.float64)),
            "consistency": sc.consistency(tied, sc.labels[rows]),
        },
        "separate_draw": {
            "fd": st.frechet_distance(sc.ref, sep.astype(np.float64)),
            "consistency": sc.consistency(sep, sc.labels[rows_sep]),
        },
        "fd_tied_minus_separate": paired_fd_diff(sc, tied, sep),
    }


def sampler_block(sc: Scorer, heun10: np.ndarray, samplers: dict[str, np.ndarray]) -> dict[str, Any]:
    feats = {"heun_10": heun10, **{k.removeprefix("sampler_"): f for k, f in samplers.items()}}
    out: dict[str, Any] = {
        k: {"fd": st.frechet_distance(sc.ref, f.astype(np.float64))} for k, f in feats.items()
    }
    for nfe, names in ((20, ("euler_20", "heun_10", "sde_20")), (50, ("euler_50", "heun_25", "sde_50"))):
        if all(k in feats for k in names):
            out[f"nfe{nfe}_sde_minus_euler"] = paired_fd_diff(sc, feats[names[2]], feats[names[0]])
            out[f"nfe{nfe}_sde_minus_heun"] = paired_fd_diff(sc, feats[names[2]], feats[names[1]])
    return out


def _mean_curve(entry: dict[str, Any]) -> tuple[list[int], list[float]]:
    runs = list(entry["runs"].values())
    steps = [c["step"] for c in runs[0]["curve"]]
    return steps, [float(np.mean([r["curve"][i]["fd"] for r in runs])) for i in range(len(steps))]


def speedups(
    result: dict[str, Any], reps_by: dict[tuple[str, int], dict[int, np.ndarray]], base: str
) -> dict[str, Any]:
    """Step ratio at matched FD against ``base`` for every GMem variant: at the baseline's final FD
    (headline) and at the FD the baseline reaches at each of its checkpoints, with bootstrap intervals
    over the FD replicates and over training seeds (a seed drawn per replicate and curve)."""
    variants = result["variants"]
    if base not in variants:
        return {}
    b_steps, b_fd = _mean_curve(variants[base])
    out: dict[str, Any] = {}
    rng = np.random.default_rng(4)
    reps = next(iter(reps_by.values()))
    n_reps = len(next(iter(reps.values())))
    for name, entry in variants.items():
        if entry["conditioning"] != "snippet":
            continue
        g_steps, g_fd = _mean_curve(entry)
        levels = []
        for j, step in enumerate(b_steps):
            if step < 200:
                continue
            ratio, censored = st.speedup(b_steps, b_fd, g_steps, g_fd, b_fd[j])
            levels.append({"base_step": step, "target_fd": b_fd[j], "ratio": ratio, "lower_bound": censored})
        target = b_fd[-1]
        ratio, censored = st.speedup(b_steps, b_fd, g_steps, g_fd, target)
        boot = []
        for r in range(n_reps):
            bs = int(rng.choice(variants[base]["seeds"]))
            gs = int(rng.choice(entry["seeds"]))
            bc = [float(reps_by[(base, bs)][s][r]) for s in b_steps]
            gc = [float(reps_by[(name, gs)][s][r]) for s in g_steps]
            # The target moves with the baseline's replicate: the ratio is to reach *its* final FD.
            rr, _ = st.speedup(b_steps, bc, g_steps, gc, bc[-1])
            boot.append(np.nan if rr is None else rr)
        arr = np.asarray(boot)
        ok = arr[np.isfinite(arr)]
        out[name] = {
            "target_fd": target,
            "ratio": ratio,
            "lower_bound": censored,
            "ci": list(st.percentile_ci(ok)) if len(ok) > 10 else None,
            "replicates_reached": f"{len(ok)}/{len(arr)}",
            "seeds": {"variant": entry["seeds"], base: variants[base]["seeds"]},
            "at_levels": levels,
        }
    return out


def plot_curves(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in result["variants"].items():
        for seed, run in entry["runs"].items():
            steps = [c["step"] for c in run["curve"]]
            fd = [c["fd"] for c in run["curve"]]
            lo = [c["fd_ci"][0] for c in run["curve"]]
            hi = [c["fd_ci"][1] for c in run["curve"]]
            label = f"{name} (seed {seed})"
            (line,) = ax.plot(steps, fd, marker="o", ms=3, label=label)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    ax.axhline(result["floor"]["fd"], color="k", ls="--", lw=1, label=f"floor (real, n={result['n']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"FD vs mnist-5k:train (evalnet, n={result['n']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speedup(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in result["speedup_vs_class_conditional"].items():
        pts = [(lv["target_fd"], lv["ratio"]) for lv in s["at_levels"] if lv["ratio"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.axhline(1, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("matched FD (the class-conditional curve's value at its checkpoints)")
    ax.set_ylabel("step ratio: class-conditional / GMem")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(result: dict[str, Any], out_dir: Path, args: argparse.Namespace) -> None:
    from bench.reproduce_text import render

    path = out_dir / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    keep = old[old.index("## Text to snippet") :] if "## Text to snippet" in old else ""
    preface = (
        "## Earlier measurements, on the previous embedded default\n\n"
        "The sections below were measured before this release's rebuild: their bank held the strong "
        "encoder's (`gmem/mnist-cnn`) snippets at rank 32 and their models trained on those rank-32 "
        "reconstructions. They were not rerun on the self-supervised default; read them as results about "
        "that setup.\n\n"
    )
    path.write_text(render(result, args, out_dir) + ("\n" + preface + keep if keep else ""))


__all__ = ["KEY", "write_report"]
