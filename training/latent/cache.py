"""``python -m training cache``: the latent + snippet cache, written in one streaming pass.

One pass over the dataset in shards of ``--shard-size`` images. Shard k
(``shard_00000.safetensors`` ...) holds, for images ``k*S .. k*S+S-1`` in dataset order:

| tensor | shape | meaning |
|---|---|---|
| ``latents`` | [n, c, h, w] f32 | posterior mean of the autoencoder (un-normalised) |
| ``latents_flip`` | [n, c, h, w] f32 | the same for the horizontal flip (``--flip``) |
| ``snippets`` (``_flip``) | [n, d] f32 | ``f(x)/|f(x)|`` of the encoder |
| ``features`` (``_flip``) | [n, T, D] f16 | the encoder's patch tokens, REPA's target (``--repa``) |
| ``labels``, ``indices`` | [n] i64 | class label (-1 unknown) and dataset row |

Each shard's metadata carries its per-channel sums of the (unflipped) latents in
float64, so the per-channel mean/std in ``cache.json`` are the same whether the cache
was written in one pass or resumed. A shard is written atomically; a rerun with the
same arguments skips the shards already there (resume), and refuses a folder written
with other arguments. Memory holds one shard at a time (image folders are read
shard by shard), never the dataset.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import torch
import typer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from shared.errors import GMemError, IncompatibleArtifacts, InvalidInput
from shared.fileio import atomic_path, write_atomic
from training.data import MNIST_NAME, list_image_folder, load_dataset, read_image, to_model_input
from training.encoders.registry import load_encoder
from training.latent.autoencoders import load_autoencoder
from training.repa import patch_features

FORMAT = "gmem-latent-cache"
FORMAT_VERSION = "1"
MANIFEST = "cache.json"


@dataclass(frozen=True)
class Rows:
    """A dataset read by row ranges: size, labels, source id and ``read(start, stop) -> uint8 [n, H, W,
    C]``."""

    n: int
    labels: np.ndarray
    source: str
    read: Callable[[int, int], np.ndarray]


def open_rows(dataset: str) -> Rows:
    """mnist-5k (already in memory) or an image folder read lazily, shard by shard."""

    if dataset == MNIST_NAME or dataset.startswith(MNIST_NAME + ":"):
        ds = load_dataset(dataset)
        return Rows(len(ds), ds.labels, ds.source, lambda a, b: ds.images[a:b])
    root = Path(dataset)
    if not root.is_dir():
        load_dataset(dataset)  # raises the usual "unknown dataset" message
    files, labels, _ = list_image_folder(root)
    with Image.open(files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"
        size = first.size[0]
    return Rows(
        len(files),
        labels,
        str(root),
        lambda a, b: np.stack([read_image(p, mode, (size, size)) for p in files[a:b]]),
    )


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def _fingerprint(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True)


def encode_shard(
    images: np.ndarray, labels: np.ndarray, start: int, ae: Any, encoder: Any, flip: bool, repa: bool
) -> dict[str, torch.Tensor]:
    """All tensors of one shard (see the module docstring)."""

    x = to_model_input(images)
    variants = [("", x)] + ([("_flip", torch.flip(x, dims=[3]))] if flip else [])
    out: dict[str, torch.Tensor] = {}
    for suffix, xv in variants:
        out["latents" + suffix] = ae.encode(xv).cpu().contiguous()
        f = encoder.encode(xv)
        out["snippets" + suffix] = (f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)).contiguous()
        if repa:
            out["features" + suffix] = patch_features(encoder, xv).half().contiguous()
    out["labels"] = torch.from_numpy(np.asarray(labels, dtype=np.int64)).contiguous()
    out["indices"] = torch.arange(start, start + len(images), dtype=torch.int64)
    return out


def _channel_sums(latents: torch.Tensor) -> dict[str, str]:
    z = latents.double()
    return {
        "count": str(z.shape[0] * z.shape[2] * z.shape[3]),
        "sum": json.dumps(z.sum(dim=(0, 2, 3)).tolist()),
        "sumsq": json.dumps((z * z).sum(dim=(0, 2, 3)).tolist()),
    }


def write_cache(
    dataset: str,
    vae: str,
    encoder_id: str,
    out: Path,
    encoder_weights: str | None = None,
    shard_size: int = 1000,
    flip: bool = False,
    repa: bool = False,
    batch_size: int = 256,
    progress: bool = True,
    limit_shards: int | None = None,
) -> dict[str, Any]:
    """Write (or finish) the cache; returns the manifest. ``limit_shards`` stops early (tests of resume)."""

    if shard_size < 1:
        raise InvalidInput(f"--shard-size must be at least 1; got {shard_size}")
    rows = open_rows(dataset)
    ae = load_autoencoder(vae)
    enc = load_encoder(encoder_id, encoder_weights)
    args = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": rows.source,
        "n": rows.n,
        "shard_size": shard_size,
        "flip": flip,
        "repa": repa,
        "encoder": encoder_id,
        "vae": ae.spec(),
    }
    out.mkdir(parents=True, exist_ok=True)
    stamp = _fingerprint(args)
    n_shards = math.ceil(rows.n / shard_size)
    todo = [k for k in range(n_shards) if not _shard_done(out / shard_name(k), stamp)]
    bar = tqdm(
        total=rows.n,
        initial=(n_shards - len(todo)) * shard_size if todo else rows.n,
        desc="cache",
        unit="img",
        disable=not progress,
    )
    for written, k in enumerate(todo):
        if limit_shards is not None and written >= limit_shards:
            bar.close()
            return {**args, "complete": False}
        a, b = k * shard_size, min(rows.n, (k + 1) * shard_size)
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(a, b, batch_size):  # encode in batches, write the shard once
            e = min(b, s + batch_size)
            part = encode_shard(rows.read(s, e), rows.labels[s:e], s, ae, enc, flip, repa)
            for key, v in part.items():
                parts.setdefault(key, []).append(v)
        tensors = {key: torch.cat(v) for key, v in parts.items()}
        meta = {"fingerprint": stamp, "start": str(a), "stop": str(b), **_channel_sums(tensors["latents"])}
        with atomic_path(out / shard_name(k)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        bar.update(b - a)
    bar.close()
    written = sum(min(rows.n, (k + 1) * shard_size) - k * shard_size for k in todo)
    return {**finish_manifest(out, args, n_shards, enc.feature_dim), "written_now": written}


def _shard_done(path: Path, stamp: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            md = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - a torn or foreign file: rewrite it (shards are written atomically, so rare)
        return False
    if md.get("fingerprint") != stamp:
        raise IncompatibleArtifacts(
            f"{path} was written with other arguments ({md.get('fingerprint')}); "
            "use a fresh --out folder or the same arguments to resume"
        )
    return True


def finish_manifest(out: Path, args: dict[str, Any], n_shards: int, feature_dim: int) -> dict[str, Any]:
    """Per-channel mean/std from the shards' float64 sums, in shard order; writes cache.json."""
    count, total, total_sq = 0, None, None
    shape = None
    for k in range(n_shards):
        with safe_open(str(out / shard_name(k)), framework="pt") as fh:
            md = fh.metadata()
            shape = shape or list(fh.get_slice("latents").get_shape())[1:]
        s, sq = np.asarray(json.loads(md["sum"])), np.asarray(json.loads(md["sumsq"]))
        count += int(md["count"])
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
    mean = cast(np.ndarray, total) / count
    std = np.sqrt(np.maximum(cast(np.ndarray, total_sq) / count - mean**2, 0.0))
    manifest = {
        **args,
        "complete": True,
        "shards": n_shards,
        "latent_shape": shape,
        "feature_dim": feature_dim,
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "written_unix": int(time.time()),
    }
    write_atomic(out / MANIFEST, [(json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()])
    return manifest


def read_manifest(cache: str | os.PathLike[str]) -> dict[str, Any]:
    """``cache.json`` of a finished cache, format and version checked."""
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise InvalidInput(
            f"{cache}: no {MANIFEST}; the cache is missing or unfinished (rerun "
            "`python -m training cache` with the same arguments to finish it)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise IncompatibleArtifacts(
            f"{path}: format={manifest.get('format')!r} format_version="
            f"{manifest.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION!r}"
        )
    return cast("dict[str, Any]", manifest)


def read_cache(cache: str | os.PathLike[str], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Concatenate the named tensors over all shards, in dataset order (keys absent from the cache are
    skipped)."""
    manifest = read_manifest(cache)
    parts: dict[str, list[torch.Tensor]] = {}
    for k in range(int(manifest["shards"])):
        with safe_open(str(Path(cache) / shard_name(k)), framework="pt") as fh:
            for key in keys:
                if key in fh.keys():
                    parts.setdefault(key, []).append(fh.get_tensor(key))
    return {key: torch.cat(v) for key, v in parts.items()}


def tensor_shape(cache: str | os.PathLike[str], key: str) -> list[int]:
    """Shape of ``key`` in the first shard (no data read)."""
    read_manifest(cache)
    with safe_open(str(Path(cache) / shard_name(0)), framework="pt") as fh:
        if key not in fh.keys():
            raise InvalidInput(f"{cache} holds no {key!r} (written with --no-repa?)")
        return list(fh.get_slice(key).get_shape())


def cache_command(
    dataset: Annotated[
        str, typer.Option(help="mnist-5k[:train|:eval] or DIR/<class>/*.png", envvar="GMEM_DATASET")
    ],
    vae: Annotated[
        str,
        typer.Option(
            help="gmem-vae file, converted VA-VAE, or diffusers AutoencoderKL folder", envvar="GMEM_VAE"
        ),
    ],
    encoder: Annotated[
        str,
        typer.Option(
            help="snippet encoder id (gmem/mnist-ssl, gmem/mnist-cnn, timm/vit_base_patch14_dinov2)",
            envvar="GMEM_ENCODER",
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="cache folder (created; resumed when it holds shards)", envvar="GMEM_CACHE")
    ],
    encoder_weights: Annotated[
        str | None, typer.Option(help="local encoder weights", envvar="GMEM_ENCODER_WEIGHTS")
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="images per shard (bounds memory)", envvar="GMEM_SHARD_SIZE")
    ] = 1000,
    flip: Annotated[
        bool, typer.Option(help="also cache each image's horizontal flip", envvar="GMEM_CACHE_FLIP")
    ] = False,
    repa: Annotated[
        bool,
        typer.Option(
            "--repa/--no-repa",
            help="also cache the encoder's patch features (REPA)",
            envvar="GMEM_CACHE_REPA",
        ),
    ] = True,
    threads: Annotated[int, typer.Option(help="CPU threads", envvar="GMEM_THREADS")] = 1,
) -> None:
    """Write the latent + snippet (+ REPA feature) cache of a dataset in one streaming pass."""
    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    try:
        manifest = write_cache(dataset, vae, encoder, out, encoder_weights, shard_size, flip, repa)
    except GMemError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    dt = time.time() - t0
    typer.echo(
        f"wrote {out}: {manifest['n']} images in {manifest['shards']} shards, latents "
        f"{manifest['latent_shape']}; encoded {manifest['written_now']} now, "
        f"{manifest['written_now'] / max(dt, 1e-9):.0f} images/s"
    )
