"""`python -m training train`: flow-matching training of a GMem network on a dataset and its bank.

Image i of the dataset is paired with bank row i (its own snippet, as in the
release). AdamW, EMA, grad clipping, bf16 autocast on GPU, resumable
checkpoints, DDP under ``torchrun``. Every step's batch, times, noise and masks
derive from (seed, step, rank), so a resumed run continues exactly where the
checkpoint left it. The model file written at the end holds the EMA weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.distributed as dist
import typer
from tqdm import tqdm

from shared.errors import GMemError, IncompatibleArtifacts, InvalidInput
from shared.factors import load_factors
from training.data import TrainData, load_dataset, to_model_input
from training.encoders.registry import load_encoder
from training.files.checkpoint import check_same_architecture, load_checkpoint, restore, save_checkpoint
from training.files.modelfile import save_model
from training.flow.generate import sample_tensor, to_uint8
from training.flow.transport import PATH, flow_matching_loss, sample_time
from training.network.config import Conditioning, GMemConfig, MaskStrategy, choices, preset
from training.network.model import GMemDiT, count_parameters
from training.repa import repa_loss
from training.sample import make_grid, save_png


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation settings of one run (recorded in checkpoints and the model file)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    time_sampling: str = "logit-normal"
    cosine_loss: bool = False
    repa_weight: float = 0.0  # lambda of the REPA loss (training/repa.py); 0 = off
    seed: int = 0
    log_every: int = 25
    sample_every: int = 500
    ckpt_every: int = 500
    ckpt_at: tuple[int, ...] = ()  # extra checkpoint steps (log-spaced curves: bench.reproduce)


def load_train_data(
    dataset: str, bank: str | None, conditioning: str, encoder_weights: str | None = None
) -> tuple[TrainData, Any]:
    """Open the dataset (and bank), check they pair row by row; returns the data and the bank meta."""
    ds = load_dataset(dataset)
    if len(ds) == 0:
        raise InvalidInput(f"dataset {dataset!r} holds no images")
    x = to_model_input(ds.images)
    preview = np.linspace(0, len(ds) - 1, 16).round().astype(int).tolist()
    meta, cond, how = None, None, None
    if conditioning == "snippet":
        if bank is None:
            raise InvalidInput("snippet conditioning needs --bank FILE (built from the same dataset)")
        factors = load_factors(bank)
        meta = factors.meta
        if factors.size != len(ds) or (factors.meta.source and factors.meta.source != ds.source):
            raise IncompatibleArtifacts(
                f"bank {bank} has {factors.size} rows from source {factors.meta.source!r}, "
                f"dataset {dataset!r} has "
                f"{len(ds)} images from source {ds.source!r}; "
                f"row i of the bank must be the snippet of image i: "
                "build the bank from this dataset (python -m training build-bank --dataset ...)"
            )
        cond, how = exact_snippets(x, factors, encoder_weights)
    elif conditioning == "class":
        if np.any(ds.labels < 0):
            raise InvalidInput(f"dataset {dataset!r} has unlabelled images; class conditioning needs labels")
        cond = torch.from_numpy(ds.labels.astype(np.int64))
    return TrainData(x=x, cond=cond, source=ds.source, preview_ids=preview, snippets=how), meta


# A bank row and the exact snippet of its image must agree at least this well (mean cosine) for the exact
# snippets to be trusted as the bank's: a rank-32 bank of the embedded encoder reaches 0.98, a lossless one 1.
_EXACT_AGREEMENT = 0.95


def exact_snippets(
    x: torch.Tensor, factors: Any, weights: str | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training condition of every image: the exact snippet ``f(x)/|f(x)|`` (paper eq. 3), encoded here
    with the bank's encoder, not the bank's rank-r reconstruction.

    Falls back to the reconstructions, and says so in the returned record (written to the model file),
    when the bank's encoder cannot be loaded here (foreign weights) or its snippets do not match the bank
    (the bank was built with other weights)."""
    meta = factors.meta
    recon = torch.from_numpy(factors.snippets(np.arange(factors.size)))
    record: dict[str, Any] = {"encoder": meta.encoder, "bank_rank": meta.rank}
    try:
        enc = load_encoder(meta.encoder, weights)
    except GMemError as exc:  # not loadable here (EncoderUnavailable, foreign weights, unknown id)
        return recon, {**record, "kind": f"rank-{meta.rank} reconstruction", "why": str(exc)}
    f = enc.encode(x)
    exact = torch.nn.functional.normalize(f, dim=1) if meta.normalized else f
    agreement = float(torch.nn.functional.cosine_similarity(exact, recon, dim=1).mean())
    record["mean_cosine_to_bank"] = round(agreement, 6)
    if exact.shape != recon.shape or agreement < _EXACT_AGREEMENT:
        why = f"exact snippets of {meta.encoder} agree with the bank only to mean cosine {agreement:.3f}"
        return recon, {**record, "kind": f"rank-{meta.rank} reconstruction", "why": why}
    return exact.float(), {**record, "kind": "exact"}


def lr_at(step: int, opts: TrainOptions) -> float:
    """Constant learning rate after a linear warm-up."""
    return opts.lr * min(1.0, (step + 1) / max(1, opts.warmup))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * net``; buffers copied."""
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for eb, b in zip(ema.buffers(), net.buffers(), strict=True):
        eb.copy_(b)


def step_indices(data: TrainData, opts: TrainOptions, step: int, rank: int, world: int) -> torch.Tensor:
    """Rows of this rank's batch at ``step``."""
    g = torch.Generator().manual_seed(opts.seed * 1_000_003 + step)
    return torch.randint(0, data.x.shape[0], (opts.batch_size,), generator=g)[rank::world]


def step_batch(
    data: TrainData, opts: TrainOptions, step: int, rank: int, world: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """This rank's (x_data, cond, t, eps) of ``step``: a pure function of (seed, step, rank)."""
    idx = step_indices(data, opts, step, rank, world)
    g_rank = torch.Generator().manual_seed((opts.seed * 1_000_003 + step) * 64 + rank)
    x = data.x[idx]
    t = sample_time(len(idx), opts.time_sampling, generator=g_rank)  # type: ignore[arg-type]
    eps = torch.randn(x.shape, generator=g_rank)
    cond = data.cond[idx].to(device) if data.cond is not None else None
    return x.to(device), cond, t.to(device), eps.to(device)


def preview_grid(ema: GMemDiT, cfg: GMemConfig, data: TrainData, path: Path) -> None:
    """Sample the fixed preview snippets with the EMA network (heun, 10 steps) and save a grid."""
    cond = data.cond[data.preview_ids] if data.cond is not None else None
    was_training = ema.training
    ema.eval()
    x = sample_tensor(ema, cfg, cond, list(range(len(data.preview_ids))), steps=10, sampler="heun")
    ema.train(was_training)
    if data.decode is not None:
        x = data.decode(x)
    save_png(make_grid(to_uint8(x)), path)


def plot_losses(history: list[tuple[int, float]], path: Path) -> None:
    # matplotlib takes about a second to import and only the loss plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

    if not history:
        return
    steps, losses = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (mean over log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    return dist.get_rank(), world, device


def train(
    cfg: GMemConfig,
    opts: TrainOptions,
    data: TrainData,
    out: Path,
    run_dir: Path,
    resume: Path | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Run (or continue) training to ``opts.steps``; writes checkpoints, previews and the EMA model file."""
    ckpt = load_checkpoint(resume) if resume else None  # read and checked before anything is written
    if ckpt is not None:
        check_same_architecture(ckpt.config, cfg, str(resume))
    rank, world, device = _dist_setup()
    torch.manual_seed(opts.seed)
    net = GMemDiT(cfg).to(device)
    if init_state is not None:  # --init: fine-tune from a model file's weights (paper 5.3)
        net.load_state_dict(init_state, strict=True)
    if cfg.repa_dim and opts.repa_weight <= 0:
        net.projector.requires_grad_(
            False
        )  # kept for the file layout; untrained, and DDP must not wait on it
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay)
    start, history = 0, []
    if ckpt is not None:
        restore(ckpt, net, ema, opt)
        start, history = ckpt.step, [tuple(h) for h in ckpt.state.get("history", [])]
    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.index is not None else None
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=opts.steps, initial=start, disable=not progress or rank != 0, desc="train", unit="step")
    acc, n_acc, t0 = 0.0, 0, time.time()
    net.train()
    for step in range(start, opts.steps):
        x_data, cond, t, eps = step_batch(data, opts, step, rank, world, device)
        torch.manual_seed(opts.seed * 7919 + step * world + rank)  # S-Adapter masks and label drops
        for group in opt.param_groups:
            group["lr"] = lr_at(step, opts)
        with autocast:
            v, projected = model(PATH.x_t(x_data, eps, t), t, cond, return_features=True)
        loss = flow_matching_loss(v, PATH.velocity(x_data, eps, t), cosine=opts.cosine_loss).total
        if opts.repa_weight > 0 and data.repa is not None:
            target = data.repa[step_indices(data, opts, step, rank, world)].to(device)
            loss = loss + opts.repa_weight * repa_loss(projected, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), opts.grad_clip)
        opt.step()
        update_ema(ema, net, min(opts.ema_decay, (1 + step) / (10 + step)))
        acc, n_acc = acc + loss.item(), n_acc + 1
        done = step + 1
        bar.update(1)
        if done % opts.log_every == 0 or done == opts.steps:
            history.append((done, acc / n_acc))
            bar.set_postfix(loss=f"{acc / n_acc:.4f}")
            if rank == 0:
                with (run_dir / "log.jsonl").open("a") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "step": done,
                                "loss": acc / n_acc,
                                "lr": lr_at(step, opts),
                                "elapsed_s": round(time.time() - t0, 2),
                            }
                        )
                        + "\n"
                    )
            acc, n_acc = 0.0, 0
        if rank == 0 and (done % opts.sample_every == 0 or done == opts.steps):
            preview_grid(ema, cfg, data, run_dir / "samples" / f"step_{done:07d}.png")
            plot_losses(history, run_dir / "loss.png")
        if rank == 0 and (done % opts.ckpt_every == 0 or done == opts.steps or done in opts.ckpt_at):
            state = {"options": dataclasses.asdict(opts), "history": history, "source": data.source}
            save_checkpoint(
                run_dir / "checkpoints" / f"step_{done:07d}.safetensors", done, net, ema, opt, cfg, state
            )
    bar.close()
    summary = {
        "steps": opts.steps,
        "final_loss": history[-1][1] if history else math.nan,
        "dataset": data.source,
        "options": dataclasses.asdict(opts),
    }
    if rank == 0:
        save_model(out, ema, cfg, {**(extra or {}), "train": summary})
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def build_config(preset_name: str, bank_meta: Any, data: TrainData, **overrides: Any) -> GMemConfig:
    """Preset + dataset shape + bank's snippet dim/encoder + command-line overrides."""
    set_ = {k: v for k, v in overrides.items() if v is not None}
    cfg = preset(preset_name)
    if cfg.space != "pixel":
        raise InvalidInput(
            f"preset {preset_name!r} is a latent-space network; `train` here trains pixel-space "
            "networks (gmem-tiny, gmem-S/2); for latent space add --space latent --vae ... --cache ..."
        )
    _, c, h, _ = data.x.shape
    set_.update(input_size=h, in_channels=c)
    if bank_meta is not None:
        set_.update(snippet_dim=bank_meta.feature_dim, encoder=bank_meta.encoder)
    return preset(preset_name, **set_)


_OPT = TrainOptions()  # the command line's defaults are the dataclass's


def train_command(
    out: Annotated[Path, typer.Option(help="model file to write (EMA weights)", envvar="GMEM_OUT")],
    dataset: Annotated[
        str | None,
        typer.Option(help="mnist-5k[:train|:eval] or DIR/<class>/*.png (pixel space)", envvar="GMEM_DATASET"),
    ] = None,
    bank: Annotated[
        Path | None, typer.Option(help="bank factors file built from the dataset", envvar="GMEM_BANK")
    ] = None,
    preset_name: Annotated[
        str, typer.Option("--preset", help="network preset", envvar="GMEM_PRESET")
    ] = "gmem-tiny",
    steps: Annotated[
        int, typer.Option(help="total optimisation steps", envvar="GMEM_TRAIN_STEPS")
    ] = _OPT.steps,
    batch_size: Annotated[
        int, typer.Option(help="global batch size", envvar="GMEM_BATCH_SIZE")
    ] = _OPT.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW learning rate", envvar="GMEM_LR")] = _OPT.lr,
    mask_ratio: Annotated[
        float | None,
        typer.Option(
            help=f"S-Adapter mask ratio (default {GMemConfig.mask_ratio})", envvar="GMEM_MASK_RATIO"
        ),
    ] = None,
    mask_strategy: Annotated[
        str | None, typer.Option(help=choices(MaskStrategy), envvar="GMEM_MASK_STRATEGY")
    ] = None,
    conditioning: Annotated[
        str, typer.Option(help=choices(Conditioning), envvar="GMEM_CONDITIONING")
    ] = GMemConfig.conditioning.value,
    resume: Annotated[
        Path | None, typer.Option(help="checkpoint .safetensors to continue", envvar="GMEM_RESUME")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="checkpoints, previews, loss curve", envvar="GMEM_RUN_DIR")
    ] = None,
    seed: Annotated[int, typer.Option(help="training seed", envvar="GMEM_SEED")] = _OPT.seed,
    ema_decay: Annotated[float, typer.Option(help="EMA decay", envvar="GMEM_EMA_DECAY")] = _OPT.ema_decay,
    time_sampling: Annotated[
        str, typer.Option(help="uniform or logit-normal", envvar="GMEM_TIME_SAMPLING")
    ] = _OPT.time_sampling,
    cosine_loss: Annotated[
        bool, typer.Option(help="add the release's cosine loss", envvar="GMEM_COSINE_LOSS")
    ] = _OPT.cosine_loss,
    sample_every: Annotated[
        int, typer.Option(help="preview grid every N steps", envvar="GMEM_SAMPLE_EVERY")
    ] = _OPT.sample_every,
    ckpt_every: Annotated[
        int, typer.Option(help="checkpoint every N steps", envvar="GMEM_CKPT_EVERY")
    ] = _OPT.ckpt_every,
    default_sampler: Annotated[
        str | None, typer.Option(help="sampler recorded in the model file", envvar="GMEM_DEFAULT_SAMPLER")
    ] = None,
    default_steps: Annotated[
        int | None, typer.Option(help="steps recorded in the model file", envvar="GMEM_DEFAULT_STEPS")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads", envvar="GMEM_THREADS")] = 2,
    space: Annotated[
        str, typer.Option(help="pixel, or latent (needs --vae and --cache)", envvar="GMEM_SPACE")
    ] = "pixel",
    vae: Annotated[
        str | None,
        typer.Option(help="autoencoder the cache was written with (latent space)", envvar="GMEM_VAE"),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="latent + snippet cache folder (python -m training cache)", envvar="GMEM_CACHE"),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="model file to fine-tune from (new dataset and bank)", envvar="GMEM_INIT"),
    ] = None,
    encoder_weights: Annotated[
        Path | None,
        typer.Option(
            help="weights of the bank's encoder, to train on exact snippets f(x)/|f(x)| (embedded: default)",
            envvar="GMEM_ENCODER_WEIGHTS",
        ),
    ] = None,
    repa: Annotated[
        str | None,
        typer.Option(help="REPA preset: release (block 4, lambda 0.5, DINOv2) or mnist", envvar="GMEM_REPA"),
    ] = None,
    repa_weight: Annotated[
        float | None, typer.Option(help="REPA lambda (overrides the preset)", envvar="GMEM_REPA_WEIGHT")
    ] = None,
    repa_depth: Annotated[
        int | None,
        typer.Option(help="REPA aligns the tokens after this many blocks", envvar="GMEM_REPA_DEPTH"),
    ] = None,
) -> None:
    """Train a GMem network; image i is conditioned on bank row i."""
    torch.set_num_threads(max(1, threads))
    try:
        if conditioning not in set(Conditioning):
            raise InvalidInput(f"--conditioning must be {choices(Conditioning)}; got {conditioning!r}")
        if mask_strategy is not None and mask_strategy not in set(MaskStrategy):
            raise InvalidInput(f"--mask-strategy must be {choices(MaskStrategy)}; got {mask_strategy!r}")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise InvalidInput(f"cannot write the model file into {out.parent}; choose a writable --out")
        fields = dict(
            conditioning=conditioning,
            mask_ratio=mask_ratio,
            mask_strategy=mask_strategy,
            default_sampler=default_sampler,
            default_steps=default_steps,
        )
        if space == "latent" or repa:
            from training.latent.train_latent import prepare_latent  # latent-space modules only when asked

            data, bank_meta, cfg, weight = prepare_latent(
                space, vae, cache, bank, preset_name, repa, repa_weight, repa_depth, fields
            )
        elif space == "pixel":
            if dataset is None:
                raise InvalidInput(
                    "pixel-space training needs --dataset (or --space latent --vae ... --cache ...)"
                )
            weights = str(encoder_weights) if encoder_weights else None
            data, bank_meta = load_train_data(dataset, str(bank) if bank else None, conditioning, weights)
            cfg, weight = build_config(preset_name, bank_meta, data, **fields), 0.0
        else:
            raise InvalidInput(f"--space must be pixel or latent; got {space!r}")
        init_state = None
        if init is not None:
            from training.latent.train_latent import init_from_model  # only for fine-tuning

            cfg, init_state = init_from_model(str(init), cfg)
        opts = TrainOptions(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            ema_decay=ema_decay,
            seed=seed,
            time_sampling=time_sampling,
            cosine_loss=cosine_loss,
            sample_every=sample_every,
            ckpt_every=ckpt_every,
            repa_weight=weight,
        )
        extra: dict[str, Any] = {"id": f"{cfg.name}/{data.source}"}
        if bank_meta is not None:
            extra["bank"] = {
                "source": bank_meta.source,
                "encoder": bank_meta.encoder,
                "feature_dim": bank_meta.feature_dim,
                "rank": bank_meta.rank,
            }
        if data.snippets is not None:
            extra["train_snippets"] = data.snippets
            if data.snippets["kind"] != "exact":
                typer.echo(
                    f"note: training on {data.snippets['kind']}s, not exact snippets: {data.snippets['why']}"
                )
        typer.echo(
            f"{cfg.name}: {count_parameters(GMemDiT(cfg)) / 1e6:.2f}M parameters, "
            f"{data.x.shape[0]} images, conditioning={cfg.conditioning}"
        )
        if init is not None:
            extra["init"] = str(init)
        summary = train(
            cfg,
            opts,
            data,
            out,
            run_dir or out.parent / (out.stem + "-run"),
            resume,
            extra,
            init_state=init_state,
        )
    except (GMemError, ValueError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from exc
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"wrote {out} (final loss {summary['final_loss']:.4f})")
