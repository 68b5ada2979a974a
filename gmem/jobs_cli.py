"""`gmem submit | wait | cancel | events`: generation jobs from the shell (CONTRACT.md section 7)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gmem.cli import Ctx, _emit, _run, app, console
from gmem.images import save_images


@app.command()
def submit(
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
    cfg_scale: Annotated[float | None, typer.Option(help="classifier-free guidance scale; 1 = none")] = None,
    preview_every: Annotated[
        int | None, typer.Option(min=1, help="a preview with every k-th progress event")
    ] = None,
) -> None:
    """Queue a generation job (POST /jobs) and print its id; follow it with `gmem wait ID`."""
    obj: Ctx = ctx.obj

    def call():
        with obj.generator() as gen:
            return gen.submit(
                n=n,
                seed=seed,
                steps=steps,
                sampler=sampler,
                snippet_ids=snippet_id,
                cfg_scale=cfg_scale,
                preview_every=preview_every,
            )

    created = _run(call)
    if obj.as_json:
        _emit(obj, created.model_dump())
    else:
        console.print(created.id)


@app.command()
def wait(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id from `gmem submit`")],
    out: Annotated[Path, typer.Option(help="folder for the PNGs")] = Path("gmem-output"),
    prefix: Annotated[str, typer.Option(help="file name prefix")] = "job",
) -> None:
    """Follow a job with a progress bar until it ends; write its images as PNGs."""
    obj: Ctx = ctx.obj

    def call():
        with (
            obj.generator() as gen,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeElapsedColumn(),
                console=console,
                disable=obj.as_json,
            ) as bar,
        ):
            task = bar.add_task(f"job {job_id[:8]}", total=None)
            return gen.wait(
                job_id,
                on_progress=lambda ev: bar.update(task, completed=ev.data["step"], total=ev.data["steps"]),
            )

    info = _run(call)
    data = info.model_dump(exclude={"result"})
    if info.status == "succeeded" and info.result is not None:
        images = [base64.b64decode(s) for s in info.result["images"]]
        paths, grid = _run(lambda: save_images(images, out, prefix))
        data.update(images=[str(p) for p in paths], grid=str(grid), seed=info.result["seed"])
        if not obj.as_json:
            console.print(f"{info.status}: {len(paths)} image(s), grid [bold]{grid}[/bold]")
    elif not obj.as_json:
        console.print(f"{info.status}" + (f": {info.error.message}" if info.error else ""))
    _emit(obj, data)
    if info.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job (DELETE /jobs/{id}); it stops at the next step boundary."""
    obj: Ctx = ctx.obj

    def call():
        with obj.generator() as gen:
            return gen.cancel(job_id)

    res = _run(call)
    _emit(obj, res.model_dump())
    if not obj.as_json:
        console.print(f"{res.id}: {res.status} (cancellation requested)")


@app.command()
def events(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Print a job's server-sent events, one JSON object per line, until `done` (previews elided)."""
    obj: Ctx = ctx.obj

    def call():
        with obj.generator() as gen:
            for ev in gen.events(job_id):
                data = {k: ("<png>" if k == "preview" else v) for k, v in ev.data.items()}
                if ev.event == "done" and isinstance(data.get("result"), dict):
                    data["result"] = {**data["result"], "images": f"<{len(data['result']['images'])} png>"}
                console.print(
                    json.dumps({"event": ev.event, "data": data}),
                    soft_wrap=True,
                    markup=False,
                    highlight=False,
                )

    _run(call)
