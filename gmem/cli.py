"""`python -m gmem`: generate images, edit the memory bank and look inside it, from a shell.

Every command talks to the running services through shared.client; images land as
PNG files (one per image plus a grid). Service locations and the write token come
from GMEM_BANK_URL, GMEM_GENERATOR_URL and GMEM_BANK_TOKEN (gmem/settings.py) or
the flags below. ``--json`` prints machine-readable results for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from gmem.images import save_images
from gmem.settings import ClientSettings
from shared.client import BankClient, ClientError, GeneratorClient, Unavailable
from shared.errors import GMemError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GMem from the shell: generate images, insert and interpolate memory snippets, search the bank.",
)
console = Console()
err_console = Console(stderr=True)


@dataclass
class Ctx:
    settings: ClientSettings
    as_json: bool

    def bank(self) -> BankClient:
        return BankClient(
            self.settings.bank_url, token=self.settings.bank_token, timeout=self.settings.client_timeout_s
        )

    def generator(self) -> GeneratorClient:
        return GeneratorClient(self.settings.generator_url, timeout=self.settings.client_timeout_s)


@app.callback()
def _options(
    ctx: typer.Context,
    bank_url: Annotated[str | None, typer.Option(help="bank service URL [env GMEM_BANK_URL]")] = None,
    generator_url: Annotated[str | None, typer.Option(help="generator URL [env GMEM_GENERATOR_URL]")] = None,
    token: Annotated[str | None, typer.Option(help="bank write token [env GMEM_BANK_TOKEN]")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds per call [env GMEM_CLIENT_TIMEOUT_S]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print results as JSON")] = False,
) -> None:
    overrides = {
        k: v
        for k, v in {
            "bank_url": bank_url,
            "generator_url": generator_url,
            "bank_token": token,
            "client_timeout_s": timeout,
        }.items()
        if v is not None
    }
    try:
        settings = ClientSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err_console.print(
            f"[red]error:[/red] bad client setting ({problems}); check the flags and GMEM_* variables"
        )
        raise typer.Exit(2) from None
    ctx.obj = Ctx(settings=settings, as_json=as_json)


def _run(fn: Callable[[], Any]) -> Any:
    """Call the services; turn their typed errors into one readable line and exit status 1."""
    try:
        return fn()
    except Unavailable as exc:
        err_console.print(
            f"[red]error:[/red] {exc.message}\n"
            "Is the stack running? Start it with `make demo DEMO_ARGS=--keep-running` (see README.md)."
        )
    except ClientError as exc:
        hint = ""
        if exc.status == 401:
            hint = "\nPass the bank's token with --token or GMEM_BANK_TOKEN."
        err_console.print(f"[red]error:[/red] {exc.message}{hint}")
    except (GMemError, OSError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _emit(obj: Ctx, data: dict, table: Table | None = None) -> None:
    if obj.as_json:
        console.print_json(json.dumps(data))
    elif table is not None:
        console.print(table)


def _kv_table(title: str, data: dict) -> Table:
    t = Table(title=title, show_header=False)
    for k, v in data.items():
        t.add_row(str(k), str(v))
    return t


# ---------------------------------------------------------------- generate


@app.command()
def generate(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="number of images")] = 4,
    seed: Annotated[int | None, typer.Option(min=0, help="image k uses seed + k; random when absent")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="sampler steps; the model's default when absent")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="sde, euler or heun")] = None,
    snippet_id: Annotated[
        list[int] | None,
        typer.Option("--snippet-id", help="pin a bank snippet (repeat once per image, or give one for all)"),
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="base, user or all: where the noise picks snippets")
    ] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="classifier-free guidance scale; 1 = none")] = None,
    prompt: Annotated[str | None, typer.Option(help="text steering the images (needs a T2S adapter)")] = None,
    prompt_mode: Annotated[
        str | None,
        typer.Option(help="adapter (the adapter's snippet) or nearest (bank snippets nearest to it)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for the PNGs")] = Path("gmem-output"),
    prefix: Annotated[str, typer.Option(help="file name prefix")] = "sample",
    scale: Annotated[int, typer.Option(min=1, max=32, help="nearest-neighbour upscaling of saved PNGs")] = 1,
) -> None:
    """Draw images from the generator (POST /generate) and write them as PNGs plus a grid."""
    obj: Ctx = ctx.obj

    def call():
        with obj.generator() as gen:
            return gen.generate(
                n=n,
                seed=seed,
                steps=steps,
                sampler=sampler,
                snippet_ids=snippet_id,
                pool=pool,
                cfg_scale=cfg_scale,
                prompt=prompt,
                prompt_mode=prompt_mode,
            )

    res = _run(call)
    paths, grid_path = _run(lambda: save_images(res.images, out, prefix, scale=scale))
    data = {
        "images": [str(p) for p in paths],
        "grid": str(grid_path),
        "seed": res.seed,
        "indices": res.indices,
        "bank_version": res.bank_version,
        "model": res.model,
        "steps": res.steps,
        "sampler": res.sampler,
        "elapsed_ms": res.elapsed_ms,
    }
    if res.prompt is not None:
        data["prompt"] = res.prompt
    if not obj.as_json:
        console.print(
            f"{len(paths)} image(s) from seed {res.seed} ({res.sampler}, {res.steps} steps, "
            f"{res.elapsed_ms:.0f} ms), snippets {res.indices}"
        )
        if res.prompt and res.prompt.get("truncated"):
            console.print(f"prompt truncated to {res.prompt['max_tokens']} tokens: {res.prompt['read']!r}")
        console.print(f"grid: [bold]{grid_path}[/bold]")
    _emit(obj, data)


# ---------------------------------------------------------------- insert


def _load_feature(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(
            f"{path}: a feature file holds one vector (shape [d] or [1, d]); got shape {arr.shape}"
        )
    return arr


@app.command()
def insert(
    ctx: typer.Context,
    image: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="an image file; the bank's encoder makes the snippet"),
    ] = None,
    feature: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="a .npy file with one raw feature f(x) of length d"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="a name stored with the snippet")] = None,
    preview: Annotated[
        int, typer.Option(min=0, help="also generate this many images from the new snippet")
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, help="seed of the preview images")] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="sampler steps of the preview")] = None,
    out: Annotated[Path, typer.Option(help="folder for the preview PNGs")] = Path("gmem-output"),
) -> None:
    """Insert a style into the bank (POST /bank/snippets) from an image or a feature; prints its new id."""
    obj: Ctx = ctx.obj
    if (image is None) == (feature is None):
        err_console.print("[red]error:[/red] give exactly one of --image FILE or --feature FILE.npy")
        raise typer.Exit(2)

    def call():
        with obj.bank() as bank:
            if image is not None:
                return bank.insert_image(image, name=name)
            return bank.insert_feature(_load_feature(feature), name=name)  # type: ignore[arg-type]

    created = _run(call)
    data: dict[str, Any] = {"id": created.id, "version": created.version, "residual": created.residual}
    if preview:
        data.update(_preview(obj, [created.id], preview, seed, steps, out, f"snippet-{created.id}"))
    if not obj.as_json:
        res = "" if created.residual is None else f", residual {created.residual:.3f}"
        console.print(f"inserted snippet [bold]{created.id}[/bold] (bank version {created.version}{res})")
        if preview:
            console.print(f"preview: [bold]{data['grid']}[/bold]")
    _emit(obj, data)


def _preview(obj: Ctx, ids: list[int], n: int, seed: int, steps: int | None, out: Path, prefix: str) -> dict:
    def call():
        with obj.generator() as gen:
            return gen.generate(n=n, seed=seed, steps=steps, snippet_ids=ids)

    res = _run(call)
    paths, grid_path = _run(lambda: save_images(res.images, out, prefix))
    return {"images": [str(p) for p in paths], "grid": str(grid_path)}


# ---------------------------------------------------------------- interpolate


@app.command()
def interpolate(
    ctx: typer.Context,
    i: Annotated[int, typer.Argument(help="snippet id at alpha = 1")],
    j: Annotated[int, typer.Argument(help="snippet id at alpha = 0")],
    alpha: Annotated[
        list[float] | None,
        typer.Option(
            min=0.0, max=1.0, help="alpha values (repeatable); default: --points evenly from 0 to 1"
        ),
    ] = None,
    points: Annotated[int, typer.Option(min=1, max=64, help="number of alphas when --alpha is absent")] = 6,
    method: Annotated[str, typer.Option(help="linear or slerp")] = "linear",
    seed: Annotated[
        int, typer.Option(min=0, help="one noise for the whole strip, so only the snippet varies")
    ] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="sampler steps")] = None,
    images: Annotated[bool, typer.Option(help="generate one image per alpha")] = True,
    out: Annotated[Path, typer.Option(help="folder for the PNG strip")] = Path("gmem-output"),
) -> None:
    """Create snippets between i and j (POST /bank/interpolate) and draw a strip of images along alpha."""
    obj: Ctx = ctx.obj
    alphas = list(alpha) if alpha else [float(a) for a in np.linspace(0.0, 1.0, points)]

    def create():
        with obj.bank() as bank:
            return [bank.interpolate(i, j, a, method=method) for a in alphas]

    created = _run(create)
    data: dict[str, Any] = {"alphas": alphas, "ids": [c.id for c in created], "version": created[-1].version}
    if images:

        def draw():
            # One request per alpha with the same seed: identical noise, only the snippet changes.
            with obj.generator() as gen:
                return [
                    gen.generate(n=1, seed=seed, steps=steps, snippet_ids=[c.id]).images[0] for c in created
                ]

        pngs = _run(draw)
        paths, strip = _run(lambda: save_images(pngs, out, f"interp-{i}-{j}", grid_columns=len(pngs)))
        data.update(images=[str(p) for p in paths], grid=str(strip))
    if not obj.as_json:
        t = Table(title=f"{i} (alpha=1) .. {j} (alpha=0), {method}")
        t.add_column("alpha")
        t.add_column("new id")
        for a, c in zip(alphas, created, strict=True):
            t.add_row(f"{a:.3f}", str(c.id))
        console.print(t)
        if images:
            console.print(f"strip: [bold]{data['grid']}[/bold]")
    _emit(obj, data)


# ---------------------------------------------------------------- search


@app.command()
def search(
    ctx: typer.Context,
    snippet_id: Annotated[int | None, typer.Option("--id", help="neighbours of this bank snippet")] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="neighbours of this image (projected by the bank's encoder)"
        ),
    ] = None,
    feature: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="neighbours of this raw feature (.npy)")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="how many neighbours")] = 8,
) -> None:
    """Nearest snippets in the bank (POST /bank/search), nearest first, with their labels."""
    obj: Ctx = ctx.obj
    if sum(x is not None for x in (snippet_id, image, feature)) != 1:
        err_console.print("[red]error:[/red] give exactly one of --id N, --image FILE or --feature FILE.npy")
        raise typer.Exit(2)

    def call():
        with obj.bank() as bank:
            if image is not None:
                hits = bank.search(snippet=bank.project(image=image).snippet, k=k)
            elif feature is not None:
                hits = bank.search(feature=_load_feature(feature), k=k)
            else:
                hits = bank.search(snippet_id=snippet_id, k=k)
            return [(h, bank.get_snippet(h.id)) for h in hits]

    rows = _run(call)
    data = {
        "neighbors": [
            {"id": h.id, "distance": h.distance, "kind": s.kind, "label": s.label, "name": s.name}
            for h, s in rows
        ]
    }
    t = Table(title="nearest snippets")
    for col in ("id", "distance", "kind", "label", "name"):
        t.add_column(col)
    for row in data["neighbors"]:
        t.add_row(
            *(
                ("" if row[c] is None else f"{row[c]:.4f}" if c == "distance" else str(row[c]))
                for c in ("id", "distance", "kind", "label", "name")
            )
        )
    _emit(obj, data, t)


# ---------------------------------------------------------------- info


@app.command()
def info(ctx: typer.Context) -> None:
    """What the bank holds (GET /bank) and which model the generator serves (GET /model)."""
    obj: Ctx = ctx.obj
    data: dict[str, Any] = {"bank_url": obj.settings.bank_url, "generator_url": obj.settings.generator_url}
    failures = 0
    with obj.bank() as bank:
        try:
            data["bank"] = bank.info().model_dump()
        except ClientError as exc:
            data["bank"] = {"error": exc.message}
            failures += 1
    with obj.generator() as gen:
        try:
            m = gen.model_info()
            data["model"] = {k: v for k, v in vars(m).items() if k != "extra"} | m.extra
        except ClientError as exc:
            data["model"] = {"error": exc.message}
            failures += 1
    if obj.as_json:
        _emit(obj, data)
    else:
        console.print(_kv_table(f"bank at {obj.settings.bank_url}", data["bank"]))
        console.print(_kv_table(f"generator at {obj.settings.generator_url}", data["model"]))
    if failures == 2:
        raise typer.Exit(1)


def main() -> None:
    import gmem.jobs_cli  # noqa: F401 - registers submit/wait/cancel/events on app (it imports this module)

    app()
