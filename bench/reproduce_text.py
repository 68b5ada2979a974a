"""The markdown of docs/RESULTS.md from the reproduction's result dictionary (bench.reproduce_report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.reproduce import BASE_STEPS, GMEM_STEPS, KEY


def _ci(v: float, ci: list[float] | None, d: int = 1) -> str:
    return f"{v:.{d}f}" if not ci else f"{v:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def _rate(r: dict[str, Any]) -> str:
    return f"{r['k']}/{r['n']} = {r['rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def _last(run: dict[str, Any]) -> dict[str, Any]:
    return dict(run["curve"][-1])


def render(result: dict[str, Any], args: argparse.Namespace, out_dir: Path) -> str:
    V = result["variants"]
    n, floor = result["n"], result["floor"]
    cmd = f".venv/bin/python -m bench.reproduce --work {args.work} --jobs {args.jobs}"
    L: list[str] = [
        "# Results: the paper's claims at mnist-5k scale",
        "",
        f"Regenerate: `{cmd}` (CPU, one thread per run, two runs at a time; about an hour on 2 cores), "
        f"then `{cmd} --report-only` rewrites this page from the saved features. Setup, in "
        "`bench/reproduce.py`'s docstring: one network for every run (64 wide, 4 deep, patch 4, batch 32, "
        f"AdamW 1e-3, EMA 0.995), baselines {BASE_STEPS} steps, GMem {GMEM_STEPS} steps, checkpoints at "
        f"log-spaced steps. Every evaluation: n = {n} samples (heun 10 steps = 20 network calls), "
        "`gmem/mnist-evalnet` features (a classifier of our own, never the snippet encoder), FD and "
        "KID x 1000 against the 4,500 mnist-5k:train images, 95% bias-corrected percentile bootstrap "
        "intervals over the "
        f"samples ({result['bootstrap']} replicates). **Floor** at the same n: {floor['what']}: "
        f"FD {floor['fd']:.2f} (range {floor['fd_range'][0]:.2f}-{floor['fd_range'][1]:.2f}), "
        f"KID x 1000 {floor['kid_x1e3']:.2f}.",
        "",
        "## Final checkpoints",
        "",
        "| variant (seed) | steps | FD [95% CI] | KID x 1000 [95% CI] | consistency | copy rate | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in V.items():
        for seed, run in entry["runs"].items():
            c = _last(run)
            cons = _rate(run["consistency"]) if "consistency" in run else "-"
            L.append(
                f"| {name} ({seed}) | {c['step']} | {_ci(c['fd'], c['fd_ci'])} | "
                f"{_ci(c['kid_x1e3'], c['kid_ci'], 2)} | {cons} | {_rate(run['copy_rate'])} | "
                f"{run['train_s']:.0f} |"
            )
    L += [
        "",
        "Consistency: share of samples the evalnet classifies as the label of the training row that "
        "conditioned them (class-conditional: that row's label). Copy rate: share of samples nearer (evalnet "
        "features) to some training image than 90% of the 500 held-out images are to theirs, so real "
        "held-out images score 0.10 by construction; higher means more copying.",
        "",
        "![FD curves with 95% intervals](results/fd_curves.png)",
        "",
    ]
    L += speedup_section(result)
    L += curve_table(result)
    L += generalisation_section(result)
    L += sampler_section(result)
    L += index_section(result)
    L += toy_section(out_dir)
    L += claims_section(result)
    L += default_section(out_dir)
    return "\n".join(L) + "\n"


def speedup_section(result: dict[str, Any]) -> list[str]:
    sp = result.get("speedup_vs_class_conditional", {})
    su = result.get("speedup_vs_unconditional", {})
    if not sp:
        return []
    L = [
        "## Speedup at matched FD",
        "",
        "Step ratio = (steps the baseline needs to reach an FD) / (steps GMem needs), both read off the "
        "curves by interpolation in (log step, log FD) over running minima. Headline: the FD the baseline "
        f"has at its last checkpoint ({BASE_STEPS} steps). The interval resamples the evaluation samples "
        "and, per replicate, one training seed of each side. A ratio marked >= is a lower bound: GMem was "
        "already there at its first checkpoint (25 steps), so up to 320x can be shown.",
        "",
        "| variant | vs class-conditional: target FD | ratio [95% CI] | vs unconditional: ratio [95% CI] |",
        "|---|---|---|---|",
    ]
    for name, s in sp.items():
        u = su.get(name, {})

        def show(x: dict[str, Any]) -> str:
            if not x or x.get("ratio") is None:
                return "not reached"
            pre = ">= " if x["lower_bound"] else ""
            return pre + _ci(x["ratio"], x["ci"]) + f" (reached in {x['replicates_reached']} replicates)"

        L.append(f"| {name} | {s['target_fd']:.1f} | {show(s)} | {show(u)} |")
    key = sp.get(KEY)
    if key:
        L += ["", f"Across the whole curve ({KEY} against class-conditional):", ""]
        L += ["| class-conditional step | its FD | ratio |", "|---|---|---|"]
        for lv in key["at_levels"]:
            r = (
                "not reached"
                if lv["ratio"] is None
                else ((">= " if lv["lower_bound"] else "") + f"{lv['ratio']:.1f}")
            )
            L.append(f"| {lv['base_step']} | {lv['target_fd']:.1f} | {r} |")
        L += ["", "![speedup against FD](results/speedup.png)", ""]
    return L


def curve_table(result: dict[str, Any]) -> list[str]:
    V = result["variants"]
    L = ["## Every checkpoint (FD, seed-mean where two seeds)", ""]
    steps = sorted({c["step"] for e in V.values() for r in e["runs"].values() for c in r["curve"]})
    L.append("| step | " + " | ".join(V) + " |")
    L.append("|---|" + "---|" * len(V))
    for s in steps:
        cells = []
        for e in V.values():
            vals = [c["fd"] for r in e["runs"].values() for c in r["curve"] if c["step"] == s]
            cells.append(f"{sum(vals) / len(vals):.1f}" if vals else "")
        L.append(f"| {s} | " + " | ".join(cells) + " |")
    return [*L, ""]


def generalisation_section(result: dict[str, Any]) -> list[str]:
    L = [
        "## Generalisation: copies, and memories the model never saw",
        "",
        "Held-out memories: each of the 500 mnist-5k:eval images is encoded with the variant's encoder "
        "and its eq. 10 projection onto the bank (lossless rank 128, so the projection is the unit snippet "
        "itself) conditions one sample. FD is against those 500 held-out images (floor: 500 training images "
        "against them). `nearest is source`: the sample's nearest image among the 500 held-out and 4,500 "
        "training images is the very image its memory came from. `own-source copy`: a main-curve sample "
        "that is a copy (see copy rate) of the training image whose snippet conditioned it.",
        "",
        "| variant (seed) | copy rate | own-source copy | held-out FD [95% CI] (floor) "
        "| held-out consistency | nearest is source |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in result["variants"].items():
        for seed, run in entry["runs"].items():
            if "held_out" not in run:
                continue
            h = run["held_out"]
            own = run["copy_rate"].get("own_source")
            L.append(
                f"| {name} ({seed}) | {_rate(run['copy_rate'])} | "
                f"{'-' if own is None else _own(own)} | "
                f"{_ci(h['fd_vs_held_out'], h['fd_ci'])} ({h['floor']:.1f}) | {_rate(h['consistency'])} | "
                f"{_rate(h['nearest_is_source'])} |"
            )
    return [*L, ""]


def sampler_section(result: dict[str, Any]) -> list[str]:
    runs = result["variants"].get(KEY, {}).get("runs", {})
    rows = [(seed, r["samplers"]) for seed, r in runs.items() if "samplers" in r]
    if not rows:
        return []
    L = [
        f"## SDE against ODE at equal network calls ({KEY}, final checkpoint, same {result['n']} seeds)",
        "",
        "| seed | euler 20 | heun 10 | sde 20 | sde - euler (20) | sde - heun (20) | euler 50 | heun 25 "
        "| sde 50 | sde - euler (50) | sde - heun (50) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, s in rows:

        def d(k: str, s: dict[str, Any] = s) -> str:
            return _ci(s[k]["diff"], s[k]["ci"]) if k in s else "-"

        L.append(
            f"| {seed} | {s['euler_20']['fd']:.1f} | {s['heun_10']['fd']:.1f} | {s['sde_20']['fd']:.1f} | "
            f"{d('nfe20_sde_minus_euler')} | {d('nfe20_sde_minus_heun')} | {s['euler_50']['fd']:.1f} | "
            f"{s['heun_25']['fd']:.1f} | {s['sde_50']['fd']:.1f} | {d('nfe50_sde_minus_euler')} | "
            f"{d('nfe50_sde_minus_heun')} |"
        )
    L += [
        "",
        "Differences are FD(sde) - FD(ode) with a paired bootstrap (the same resampled seeds for both); "
        "an interval that excludes 0 is a difference at this n.",
        "",
    ]
    return L


def index_section(result: dict[str, Any]) -> list[str]:
    L = [
        "## The snippet index tied to the noise",
        "",
        "The contract's index is `Phi(sum(z)/sqrt(numel z))` of the very noise z the sampler starts from; "
        "mnist-5k's rows are sorted by class, so the class becomes a function of the noise's mean. "
        "Against it: the index from a separate uniform draw of the same seed's generator, taken right after "
        "z (same seeds, "
        "same network, heun 10).",
        "",
        "| variant (seed) | FD, noise-CDF index | FD, separate draw | FD difference [95% paired CI] "
        "| consistency, noise-CDF | consistency, separate |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in result["variants"].items():
        for seed, run in entry["runs"].items():
            if "index" not in run:
                continue
            ix = run["index"]
            dd = ix["fd_tied_minus_separate"]
            L.append(
                f"| {name} ({seed}) | {ix['noise_cdf']['fd']:.1f} | {ix['separate_draw']['fd']:.1f} | "
                f"{_ci(dd['diff'], dd['ci'])} | {_rate(ix['noise_cdf']['consistency'])} | "
                f"{_rate(ix['separate_draw']['consistency'])} |"
            )
    return [*L, ""]


def toy_section(out_dir: Path) -> list[str]:
    path = out_dir / "results" / "toy_gmm.json"
    if not path.exists():
        return []
    try:
        from bench.toy_gmm import report_lines  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return []
    return [*report_lines(json.loads(path.read_text())), ""]


def claims_section(result: dict[str, Any]) -> list[str]:
    from bench.reproduce_claims import claims

    return claims(result)


def default_section(out_dir: Path) -> list[str]:
    path = out_dir / "results" / "default_eval.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    return [
        "## The embedded default (artifacts/mnist-5k/model.safetensors)",
        "",
        "`.venv/bin/python -m training eval --model artifacts/mnist-5k/model.safetensors --bank "
        "artifacts/mnist-5k/bank.safetensors --dataset mnist-5k:eval --n 500 --json-out "
        "docs/results/default_eval.json`",
        "",
        f"FD {r['fd']:.2f} and snippet-class consistency {r['consistency']:.3f} over {r['n']} samples "
        f"({r['sampler']}, {r['steps']} steps; snippets by the noise-CDF index), against the 500 held-out "
        "images of mnist-5k:eval (a different reference and n from the tables above). How it was built: "
        "artifacts/mnist-5k/REBUILD.md.",
        "",
        "![samples](results/default_samples.png)",
        "",
    ]


def _own(own: dict[str, Any]) -> str:
    return f"{own['k']} ({own['rate']:.3f})"
