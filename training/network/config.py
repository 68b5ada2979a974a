"""What one GMem network is: architecture, data space, conditioning and its sampling defaults.

The model file stores this as one flat JSON object (see ``training.files.modelfile``);
the option sets are ``StrEnum``s so a typo in a file or a preset fails when the
config is built, and code dispatches on them through tables.

Presets follow facebookresearch/DiT (``models.py``: DiT-S/B/XL sizes), willisma/SiT
(``sit-XL/2``: learned sigma, LayerNorm, GELU) and hustvl/LightningDiT
(``models/lightningdit.py``: SwiGLU, RMSNorm, RoPE), with GMem's release sizes
(LINs-lab/GMem, paper Table 1: B/1 and XL/1 on 16x16x32 VA-VAE latents).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from shared.errors import InvalidInput


class Space(StrEnum):
    pixel = "pixel"
    latent = "latent"


class Conditioning(StrEnum):
    snippet = "snippet"
    class_ = "class"  # the class-conditional comparison baseline (DiT's label embedding)
    none = "none"


class MaskStrategy(StrEnum):
    """The S-Adapter's snippet masks (paper appendix G.5; ``training.network.model._MASKS``)."""

    zero = "zero"  # masked dims set to 0, kept dims scaled 1/(1-p): the release's nn.Dropout(p)
    random = "random"  # masked dims replaced by random values, N(0, 1/d)
    noise = "noise"  # Gaussian noise of relative size p added to every dim, then re-normalised


class Mlp(StrEnum):
    swiglu = "swiglu"
    gelu = "gelu"


class Norm(StrEnum):
    rmsnorm = "rmsnorm"
    layernorm = "layernorm"


class Init(StrEnum):
    adaln_zero = "adaln-zero"
    xavier = "xavier"


class AdapterKind(StrEnum):
    linear = "linear"
    mlp = "mlp"


class SdeSolver(StrEnum):
    euler = "euler"  # Euler-Maruyama
    heun = "heun"  # the release's Heun SDE with a noise-free last step


def choices(kind: type[StrEnum]) -> str:
    """``"a, b or c"``: the values of an option set, for error messages."""
    values = [m.value for m in kind]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


@dataclass(frozen=True)
class SamplingDefaults:
    """How the network samples unless a request says otherwise (recorded in the model file)."""

    sampler: str = "heun"
    steps: int = 20
    sde_solver: SdeSolver = SdeSolver.euler
    diffusion_norm: float = 1.0  # SDE diffusion w(t) = norm * (1 - t)
    last_step_size: float = 0.004  # Heun-SDE noise-free "mean" last step
    time_shift: float = 1.0  # ODE grid t' = s t / (1 + (s - 1) t); 1 = none
    cfg_interval_start: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sde_solver", SdeSolver(self.sde_solver))


# The model file's JSON key of each sampling default (flat keys, as every model file has them).
SAMPLING_KEYS: dict[str, str] = {
    "sampler": "default_sampler",
    "steps": "default_steps",
    "sde_solver": "sde_solver",
    "diffusion_norm": "diffusion_norm",
    "last_step_size": "last_step_size",
    "time_shift": "time_shift",
    "cfg_interval_start": "cfg_interval_start",
}


@dataclass(frozen=True)
class GMemConfig:
    """Architecture, data space and sampling defaults of one GMem network (stored in the model file)."""

    name: str = "gmem-tiny"
    # data space
    space: Space = Space.pixel
    input_size: int = 32
    in_channels: int = 1
    # pixel: images in [-1, 1]; latent: (z - mean) / std * multiplier, per channel
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    latent_multiplier: float = 1.0
    decoder: dict[str, str] | None = (
        None  # e.g. {"kind": "vavae-f16d32", "weights": "..."} (training/official/vae.py)
    )
    # transformer
    patch_size: int = 2
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    mlp: Mlp = Mlp.swiglu
    norm: Norm = Norm.rmsnorm
    qk_norm: bool = False
    rope: bool = True
    learn_sigma: bool = False  # SiT/DiT predict 2C channels; only the first C are the velocity
    init: Init = Init.adaln_zero
    # conditioning (S-Adapter)
    conditioning: Conditioning = Conditioning.snippet
    snippet_dim: int = 128
    encoder: str = "gmem/mnist-ssl"
    adapter: AdapterKind = AdapterKind.linear
    mask_ratio: float = 0.4
    mask_strategy: MaskStrategy = MaskStrategy.zero
    # Probability that a training step replaces a whole snippet by the zero vector, so the CFG null is an
    # input the network was trained on. 0 = no trained null (the release: its dropout never zeroes a whole
    # snippet, yet CFG uses zeros); such models refuse cfg_scale != 1 against the zero null.
    p_uncond: float = 0.0
    num_classes: int = 10  # only for conditioning="class" (the comparison baseline)
    # REPA projector (train-time alignment; kept so official checkpoints load strictly)
    repa_dim: int = 0  # 0 = no projector
    repa_hidden: int = 2048  # projector width (the release's 2048; training/repa.py)
    encoder_depth: int = 4
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    def __post_init__(self) -> None:
        # Strings from JSON or the command line become their option set; an unknown value is a ValueError.
        for name, kind in _OPTION_FIELDS.items():
            object.__setattr__(self, name, kind(getattr(self, name)))

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> GMemConfig:
        """Raise ValueError on sizes that cannot build a network."""
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.rope and self.head_dim % 4:
            raise ValueError(f"RoPE needs head_dim divisible by 4; got {self.head_dim}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1); got {self.mask_ratio}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1); got {self.p_uncond}")
        return self

    @property
    def trained_null(self) -> bool:
        """Whether the zero snippet (the CFG null) is an input this network was trained on."""
        return self.conditioning != Conditioning.snippet or self.p_uncond > 0


_OPTION_FIELDS: dict[str, type[StrEnum]] = {
    "space": Space,
    "mlp": Mlp,
    "norm": Norm,
    "init": Init,
    "conditioning": Conditioning,
    "adapter": AdapterKind,
    "mask_strategy": MaskStrategy,
}
_FIELDS = frozenset(f.name for f in fields(GMemConfig))


def with_overrides(cfg: GMemConfig, **overrides: Any) -> GMemConfig:
    """``cfg`` with fields replaced; sampling defaults may be named by their model-file keys
    (``default_steps``)."""
    by_key = {key: name for name, key in SAMPLING_KEYS.items()}
    sampling = {by_key[k]: overrides.pop(k) for k in list(overrides) if k in by_key and k not in _FIELDS}
    if sampling:
        overrides["sampling"] = replace(overrides.get("sampling", cfg.sampling), **sampling)
    return replace(cfg, **overrides)


#################################################################################
#                                  Presets                                      #
#################################################################################


def _lightning(cfg: GMemConfig) -> GMemConfig:
    """hustvl/LightningDiT ``models/lightningdit.py`` blocks, as the GMem release uses them."""
    # The release comments out LightningDiT's adaLN-zero init (lightningdit.py:375-383), which only matters
    # when training from scratch; our presets keep DiT's and LightningDiT's adaLN-zero, and official
    # checkpoints load over it.
    return replace(cfg, mlp=Mlp.swiglu, norm=Norm.rmsnorm, rope=True, adapter=AdapterKind.linear)


def _latent_vavae(cfg: GMemConfig) -> GMemConfig:
    """16x16x32 VA-VAE latents with DINOv2-B/14 snippets and the release's Heun SDE (49 steps, CFG from t =
    0.89)."""
    return replace(
        cfg,
        space=Space.latent,
        input_size=16,
        in_channels=32,
        snippet_dim=768,
        encoder="timm/vit_base_patch14_dinov2",
        decoder={"kind": "vavae-f16d32"},
        sampling=replace(
            cfg.sampling, sampler="sde", sde_solver=SdeSolver.heun, steps=49, cfg_interval_start=0.89
        ),
    )


# From-scratch presets train the CFG null (p_uncond 0.1, as DiT's class dropout); release imports set 0.
_BASE = GMemConfig(p_uncond=0.1)
_RELEASE = _lightning(_latent_vavae(replace(_BASE, patch_size=1)))

PRESETS: dict[str, GMemConfig] = {
    "gmem-tiny": replace(_BASE, name="gmem-tiny", patch_size=4, hidden_size=128, depth=6, num_heads=2),
    # Latent space of the embedded tiny VAE (8x8x4 for mnist-5k); patch 2 (16 tokens) keeps CPU runs short.
    "gmem-tiny-latent": replace(
        _BASE,
        name="gmem-tiny-latent",
        space=Space.latent,
        input_size=8,
        in_channels=4,
        patch_size=2,
        hidden_size=128,
        depth=6,
        num_heads=2,
        repa_hidden=256,
        encoder_depth=2,
    ),
    "gmem-S/2": replace(_BASE, name="gmem-S/2", patch_size=2, hidden_size=384, depth=12, num_heads=6),
    "gmem-B/1": replace(_RELEASE, name="gmem-B/1", hidden_size=768, depth=12, num_heads=12, repa_dim=768),
    "gmem-XL/1": replace(_RELEASE, name="gmem-XL/1", hidden_size=1152, depth=28, num_heads=16, repa_dim=768),
    "gmem-B/1-lightning": replace(
        _RELEASE, name="gmem-B/1-lightning", hidden_size=768, depth=12, num_heads=12, repa_dim=0
    ),
    "sit-XL/2": replace(
        _BASE,
        name="sit-XL/2",
        space=Space.latent,
        input_size=32,
        in_channels=4,
        snippet_dim=768,
        encoder="timm/vit_base_patch14_dinov2",
        decoder={"kind": "sd-vae-ft-ema"},
        patch_size=2,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp=Mlp.gelu,
        norm=Norm.layernorm,
        rope=False,
        learn_sigma=True,
        sampling=replace(_BASE.sampling, sampler="sde", steps=250),
    ),
}


def preset(name: str, **overrides: Any) -> GMemConfig:
    """A named preset with field overrides (see ``with_overrides``); unknown names list the choices."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return with_overrides(PRESETS[name], **overrides).validate()
