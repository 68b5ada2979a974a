"""`make demo`: the local stack end to end, leaving images in a folder.

Starts redis-server, the bank service (with the embedded encoder, so images can be
inserted) and the generator on the embedded default (artifacts/mnist-5k), waits for
/readyz, then walks through the paper's three uses of an explicit memory:

1. a grid of images from POST /generate (snippets picked by the noise-CDF index);
2. a style inserted with POST /bank/snippets from an image file, and images drawn from it;
3. a POST /bank/interpolate strip between a 3 and an 8, one image per alpha, same noise.

It prints where the images are and how to call the API by hand, writes
``summary.json`` beside the images, and stops every process on Ctrl-C or at the end
(``--keep-running`` keeps the stack up until Ctrl-C).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gmem.images import save_images
from gmem.stack import (
    ARTIFACTS,
    DEFAULT_BANK_PORT,
    DEFAULT_GENERATOR_PORT,
    DEFAULT_PLAYGROUND_PORT,
    DEFAULT_REDIS_PORT,
    LocalStack,
    StackConfig,
    StackError,
)
from shared.client import BankClient, ClientError, GeneratorClient

console = Console()
SCALE = 4  # 32x32 digits are tiny in an image viewer; PNGs are saved 4x with nearest-neighbour
# The strip reads left to right from a 3 to an 8: alpha runs 0..1 and alpha = 0 is snippet j (eq. 11).
INTERP_LABELS = (3, 8)


def write_digit(out_dir: Path, label: int, dataset: str = "mnist-5k:eval") -> Path:
    """Save the first ``label`` digit of a held-out split as a PNG: the demo's 'user image'."""
    from training.data import load_dataset  # the dataset loader is only needed here

    ds = load_dataset(dataset)
    k = int(np.flatnonzero(ds.labels == label)[0])
    path = out_dir / f"input-digit-{label}.png"
    Image.fromarray(ds.images[k][..., 0] if ds.images.shape[-1] == 1 else ds.images[k]).save(path)
    return path


def nearest_base(
    bank: BankClient, image: Path, want_label: int | None, k: int = 10
) -> tuple[int, int | None]:
    """The base snippet nearest to an image (project, then search); prefers one with ``want_label``."""
    base_size = bank.info().base_size
    projected = bank.project(image=image)
    hits = [h for h in bank.search(snippet=projected.snippet, k=k) if h.id < base_size]
    labelled = [(h.id, bank.get_snippet(h.id).label) for h in hits]
    for sid, lab in labelled:
        if lab == want_label:
            return sid, lab
    return labelled[0]


def step_grid(gen: GeneratorClient, out: Path, n: int, seed: int, steps: int | None) -> dict[str, Any]:
    res = gen.generate(n=n, seed=seed, steps=steps)
    paths, grid_path = save_images(res.images, out / "1-grid", "sample", scale=SCALE)
    return {
        "images": [str(p) for p in paths],
        "grid": str(grid_path),
        "seed": res.seed,
        "indices": res.indices,
        "bank_version": res.bank_version,
        "steps": res.steps,
        "sampler": res.sampler,
        "elapsed_ms": res.elapsed_ms,
    }


def step_style(
    bank: BankClient, gen: GeneratorClient, out: Path, image: Path, n: int, seed: int, steps: int | None
) -> dict[str, Any]:
    created = bank.insert_image(image, name=f"demo style from {image.name}")
    res = gen.generate(n=n, seed=seed, steps=steps, snippet_ids=[created.id])
    paths, grid_path = save_images(res.images, out / "2-style", f"snippet-{created.id}", scale=SCALE)
    return {
        "source_image": str(image),
        "id": created.id,
        "version": created.version,
        "residual": created.residual,
        "images": [str(p) for p in paths],
        "grid": str(grid_path),
        "seed": res.seed,
        "indices": res.indices,
    }


def step_interpolate(
    bank: BankClient,
    gen: GeneratorClient,
    out: Path,
    inputs: dict[int, Path],
    points: int,
    seed: int,
    steps: int | None,
) -> dict[str, Any]:
    left, right = INTERP_LABELS
    j, label_j = nearest_base(bank, inputs[left], left)
    i, label_i = nearest_base(bank, inputs[right], right)
    alphas = [float(a) for a in np.linspace(0.0, 1.0, points)]
    created = [bank.interpolate(i, j, a, name=f"demo {i}..{j} alpha={a:.2f}") for a in alphas]
    # One request per alpha with the same seed: the noise is fixed, only the snippet moves.
    pngs = [gen.generate(n=1, seed=seed, steps=steps, snippet_ids=[c.id]).images[0] for c in created]
    paths, strip = save_images(
        pngs, out / "3-interpolation", f"interp-{i}-{j}", grid_columns=len(pngs), scale=SCALE
    )
    return {
        "i": i,
        "j": j,
        "label_i": label_i,
        "label_j": label_j,
        "alphas": alphas,
        "ids": [c.id for c in created],
        "version": created[-1].version,
        "images": [str(p) for p in paths],
        "grid": str(strip),
        "seed": seed,
    }


def curl_examples(stack: LocalStack, style_id: int, i: int, j: int) -> str:
    b, g = stack.bank_url, stack.generator_url
    tok = stack.config.token
    return "\n".join(
        [
            f"export GMEM_BANK_TOKEN={tok}",
            f"curl -s {b}/bank",
            f"curl -s {g}/model",
            f'curl -s -X POST {g}/generate -H \'Content-Type: application/json\' -d \'{{"n": 4, "seed": '
            "1}' \\",
            '  | python3 -c \'import sys,json,base64; [open(f"img{k}.png","wb").write(base64.b64decode(s)) '
            'for k,s in enumerate(json.load(sys.stdin)["images"])]\'',
            f"curl -s -X POST {g}/generate -H 'Content-Type: application/json' "
            f'-d \'{{"n": 2, "seed": 5, "snippet_ids": [{style_id}]}}\'',
            f'curl -s -X POST {b}/bank/snippets -H "Authorization: Bearer $GMEM_BANK_TOKEN" -F '
            "image=@my-digit.png",
            f'curl -s -X POST {b}/bank/interpolate -H "Authorization: Bearer $GMEM_BANK_TOKEN" '
            f'-H \'Content-Type: application/json\' -d \'{{"i": {i}, "j": {j}, "alpha": 0.5}}\'',
            f"curl -s -X POST {b}/bank/search -H 'Content-Type: application/json' -d '{{\"id\": {style_id}, "
            '"k": 5}\'',
            "# or the CLI: .venv/bin/python -m gmem --help   (reads GMEM_BANK_URL, GMEM_GENERATOR_URL, "
            "GMEM_BANK_TOKEN)",
            f"GMEM_BANK_URL={b} GMEM_GENERATOR_URL={g} .venv/bin/python -m gmem generate -n 9 --out "
            "my-images",
        ]
    )


def run_demo(
    stack: LocalStack, out: Path, image: Path | None, n: int, seed: int, steps: int | None, points: int
) -> dict[str, Any]:
    """The three steps against a running stack; returns what summary.json records."""
    inputs = {lab: write_digit(out, lab) for lab in INTERP_LABELS}
    style_image = image or write_digit(out, 7)
    summary: dict[str, Any] = {
        "bank_url": stack.bank_url,
        "generator_url": stack.generator_url,
        "redis_url": stack.redis_url,
        "data_dir": str(stack.config.data_dir),
        "logs": str(stack.config.log_dir),
    }
    with (
        BankClient(stack.bank_url, token=stack.config.token, timeout=120) as bank,
        GeneratorClient(stack.generator_url, timeout=600) as gen,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("demo", total=3)
        progress.update(task, description=f"1/3 POST /generate: a grid of {n} images")
        summary["grid"] = step_grid(gen, out, n, seed, steps)
        progress.advance(task)
        progress.update(
            task, description=f"2/3 POST /bank/snippets from {style_image.name}, then images from it"
        )
        summary["style"] = step_style(bank, gen, out, style_image, min(n, 8), seed, steps)
        progress.advance(task)
        progress.update(
            task,
            description=f"3/3 POST /bank/interpolate a {INTERP_LABELS[0]} .. "
            f"{INTERP_LABELS[1]} strip, {points} alphas",
        )
        summary["interpolation"] = step_interpolate(bank, gen, out, inputs, points, seed, steps)
        progress.advance(task)
        summary["bank_version"] = bank.info().version
    return summary


def report(stack: LocalStack, out: Path, summary: dict[str, Any], keep_running: bool) -> None:
    s, it = summary["style"], summary["interpolation"]
    lines = [
        f"[bold]1.[/bold] grid of {len(summary['grid']['images'])} samples: {summary['grid']['grid']}",
        f"[bold]2.[/bold] style from {s['source_image']} -> snippet id {s['id']} "
        f"(residual {s['residual'] if s['residual'] is None else round(s['residual'], 3)}): {s['grid']}",
        f"[bold]3.[/bold] interpolation from {it['j']} (label {it['label_j']}, alpha=0) to {it['i']} "
        f"(label {it['label_i']}, alpha=1) -> ids {it['ids']}: {it['grid']}",
        f"summary: {out / 'summary.json'}   logs: {stack.config.log_dir}",
    ]
    console.print(Panel("\n".join(lines), title=f"images are in {out.resolve()}"))
    # Plain lines, never wrapped by the terminal width, so they paste into a shell as they are.
    console.rule(
        "call the API by hand"
        + ("" if keep_running else " (the stack stops now: rerun with --keep-running to try these)")
    )
    console.print(
        curl_examples(stack, s["id"], it["i"], it["j"]), soft_wrap=True, markup=False, highlight=False
    )
    console.rule()


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Atomically (scripts may wait for the file), readable only by us: it holds the bank token."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(tmp, path)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # `kill <pid>` should clean up exactly like Ctrl-C does.
    raise KeyboardInterrupt


def main(
    out: Annotated[Path, typer.Option(help="folder for images, logs and the bank's data dir")] = Path(
        "demo-output"
    ),
    image: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="your own image to insert as a style (default: a 7 from mnist-5k:eval)",
        ),
    ] = None,
    n: Annotated[int, typer.Option(min=1, max=64, help="images in the grid")] = 16,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="sampler steps (default: the model's)")] = None,
    points: Annotated[int, typer.Option(min=2, max=16, help="alphas along the interpolation")] = 6,
    factors: Annotated[Path, typer.Option(help="bank factors file")] = ARTIFACTS / "bank.safetensors",
    model: Annotated[Path, typer.Option(help="model file")] = ARTIFACTS / "model.safetensors",
    encoder: Annotated[
        str, typer.Option(help="encoder id for image inserts (the bank's)")
    ] = "gmem/mnist-ssl",
    encoder_weights: Annotated[Path, typer.Option(help="its weights file")] = ARTIFACTS
    / "encoder.safetensors",
    fresh: Annotated[
        bool, typer.Option(help="start from an empty bank data dir (drop earlier demo edits)")
    ] = True,
    keep_running: Annotated[bool, typer.Option(help="keep the stack up after the demo until Ctrl-C")] = False,
    redis: Annotated[bool, typer.Option(help="start redis-server for the bank's event stream")] = True,
    bank_port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port")] = DEFAULT_BANK_PORT,
    generator_port: Annotated[
        int, typer.Option(min=0, max=65535, help="0: any free port")
    ] = DEFAULT_GENERATOR_PORT,
    redis_port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port")] = DEFAULT_REDIS_PORT,
    playground_port: Annotated[
        int, typer.Option(min=0, max=65535, help="with --keep-running; 0: any free port")
    ] = DEFAULT_PLAYGROUND_PORT,
) -> None:
    """Run the GMem stack locally and exercise it end to end."""
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    out.mkdir(parents=True, exist_ok=True)
    # A taken default port falls back to a free one (gmem.stack.pick_port); the report shows which.
    cfg = StackConfig(
        out_dir=out,
        factors=factors,
        model=model,
        encoder=encoder,
        encoder_weights=encoder_weights,
        use_redis=redis,
        bank_port=bank_port or None,
        generator_port=generator_port or None,
        redis_port=redis_port or None,
        playground_port=playground_port or None,
        generator_env={"GMEM_GENERATOR_MAX_N": str(max(n, 16))},
    )
    if fresh and cfg.data_dir.exists():
        shutil.rmtree(cfg.data_dir)
    stack = LocalStack(cfg, on_status=lambda msg: console.log(msg))
    interrupted = finished = False
    try:
        with console.status("starting redis, the bank and the generator (first start loads torch)..."):
            stack.start()
        summary = run_demo(stack, out, image, n, seed, steps, points)
        report(stack, out, summary, keep_running)
        if keep_running:  # the page over the same stack, for looking around after the walk-through
            stack.start_playground()
            summary["playground_url"] = stack.playground_url
        summary["pids"] = {name: svc.popen.pid for name, svc in stack.services.items() if svc.popen}
        summary["token"] = cfg.token
        write_summary(out / "summary.json", summary)
        finished = True
        if keep_running:
            console.print(
                f"[bold green]stack is up[/bold green]: open the playground at {stack.playground_url}/ ; "
                "press Ctrl-C to stop it"
            )
            while all(svc.running for svc in stack.services.values()):
                time.sleep(0.5)
            console.print("[red]a service exited; stopping the stack[/red]")
    except KeyboardInterrupt:
        interrupted = not finished
        console.print("interrupted: stopping the stack")
    except (StackError, ClientError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        console.print(f"logs: {cfg.log_dir}")
        raise typer.Exit(1) from None
    finally:
        # A second Ctrl-C must not cut the shutdown short: the services run in their own
        # sessions and would outlive us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        console.print("stopped")
    if interrupted:
        raise typer.Exit(130)


if __name__ == "__main__":
    typer.run(main)
