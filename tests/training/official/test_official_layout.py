"""Our presets hold exactly the release's tensors (XL and B/1 shape-only, nothing allocated)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.official import fixtures as fx
from training.network.config import preset
from training.network.model import GMemDiT


def _meta_shapes(name: str, **overrides) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = GMemDiT(preset(name, **overrides))
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_fixture_layout_matches_the_release_counts():
    # Numbers measured on the authors' own modules (LINs-lab/GMem ``models/lightningdit.py``,
    # ``tokenizer/autoencoder.py``), not produced by our code.
    assert len(fx.XL_SHAPES) == 358 and len(fx.B_SHAPES) == 166
    total = {
        n: sum(math.prod(s) for s in sh.values()) for n, sh in (("XL", fx.XL_SHAPES), ("B", fx.B_SHAPES))
    }
    assert round(total["XL"] / 1e6, 2) == 683.16
    assert round(total["B"] / 1e6, 2) == 137.76
    vae = fx.vavae_shapes()
    assert len(vae) == 342 and round(sum(math.prod(s) for s in vae.values()) / 1e6, 1) == 69.8
    dec = {k: s for k, s in vae.items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert round(sum(math.prod(s) for s in dec.values()) / 1e6, 1) == 41.4


def test_xl_preset_has_exactly_the_release_keys_and_shapes():
    ours = _meta_shapes("gmem-XL/1")
    assert ours == fx.XL_SHAPES


def test_b1_lightning_preset_is_the_release_minus_the_repa_projector():
    ours = _meta_shapes("gmem-B/1-lightning")
    release = {k: s for k, s in fx.B_SHAPES.items() if not k.startswith("projector.")}
    assert ours == release


@pytest.mark.parametrize("name", ["gmem-XL/1", "gmem-B/1-lightning"])
def test_release_presets_describe_the_latent_space(name):
    cfg = preset(name)
    assert (cfg.space, cfg.input_size, cfg.in_channels, cfg.patch_size) == ("latent", 16, 32, 1)
    assert (cfg.snippet_dim, cfg.encoder) == (768, "timm/vit_base_patch14_dinov2")
    assert not cfg.learn_sigma and cfg.rope and cfg.mlp == "swiglu" and cfg.norm == "rmsnorm"
