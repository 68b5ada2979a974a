"""The GMem network: official key layout, adaLN-zero, S-Adapter masking, shapes."""

from __future__ import annotations

import pytest
import torch

from shared.errors import InvalidInput
from tests.support.model_fixtures import one_torch_thread  # noqa: F401
from training.network.config import preset
from training.network.model import GMemDiT, SnippetAdapter

TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, input_size=16, snippet_dim=8)


def official_keys(depth: int, h: int, hd: int, mlp_hidden: int) -> dict[str, tuple[int, ...]]:
    """The state_dict of the release's LightningDiT (LINs-lab/GMem ``models/lightningdit.py``), written out by
    hand."""
    keys = {
        "pos_embed": (1, 256, h),
        "x_embedder.proj.weight": (h, 32, 1, 1),
        "x_embedder.proj.bias": (h,),
        "t_embedder.mlp.0.weight": (h, 256),
        "t_embedder.mlp.0.bias": (h,),
        "t_embedder.mlp.2.weight": (h, h),
        "t_embedder.mlp.2.bias": (h,),
        "condition_projection.linear.weight": (h, 768),
        "condition_projection.linear.bias": (h,),
        "feat_rope.freqs_cos": (256, hd),
        "feat_rope.freqs_sin": (256, hd),
        "projector.0.0.weight": (2048, h),
        "projector.0.0.bias": (2048,),
        "projector.0.2.weight": (2048, 2048),
        "projector.0.2.bias": (2048,),
        "projector.0.4.weight": (768, 2048),
        "projector.0.4.bias": (768,),
        "final_layer.norm_final.weight": (h,),
        "final_layer.linear.weight": (32, h),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
        "final_layer.adaLN_modulation.1.bias": (2 * h,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update(
            {
                b + "norm1.weight": (h,),
                b + "norm2.weight": (h,),
                b + "attn.qkv.weight": (3 * h, h),
                b + "attn.qkv.bias": (3 * h,),
                b + "attn.proj.weight": (h, h),
                b + "attn.proj.bias": (h,),
                b + "mlp.w12.weight": (2 * mlp_hidden, h),
                b + "mlp.w12.bias": (2 * mlp_hidden,),
                b + "mlp.w3.weight": (h, mlp_hidden),
                b + "mlp.w3.bias": (h,),
                b + "adaLN_modulation.1.weight": (6 * h, h),
                b + "adaLN_modulation.1.bias": (6 * h,),
            }
        )
    return keys


@pytest.mark.parametrize(
    "name,depth,h,hd,mlp_hidden,count",
    [("gmem-XL/1", 28, 1152, 72, 3072, 358), ("gmem-B/1", 12, 768, 64, 2048, 166)],
)
def test_official_presets_have_the_release_state_dict(name, depth, h, hd, mlp_hidden, count):
    with torch.device("meta"):  # no XL weights are allocated
        net = GMemDiT(preset(name))
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(got) == count
    assert got == official_keys(depth, h, hd, mlp_hidden)


def test_sit_preset_uses_layernorm_gelu_and_learned_sigma_layout():
    with torch.device("meta"):
        net = GMemDiT(preset("sit-XL/2"))
    sd = net.state_dict()
    assert "blocks.0.mlp.fc1.weight" in sd and "blocks.0.norm1.weight" not in sd
    assert tuple(sd["final_layer.linear.weight"].shape) == (2 * 2 * 8, 1152)
    assert not any(k.startswith("feat_rope") for k in sd)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(InvalidInput, match="gmem-tiny"):
        preset("gmem-huge")


def test_forward_shape_and_velocity_only_channels():
    cfg = preset("gmem-tiny", **TINY, learn_sigma=True, in_channels=3)
    net = GMemDiT(cfg)
    x = torch.randn(3, 3, 16, 16)
    out = net(x, torch.rand(3), torch.nn.functional.normalize(torch.randn(3, 8), dim=1))
    assert out.shape == x.shape


def test_adaln_zero_init_outputs_zero_and_blocks_are_identity():
    net = GMemDiT(preset("gmem-tiny", **TINY)).eval()
    x = torch.randn(2, 1, 16, 16)
    c = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    assert torch.count_nonzero(net(x, torch.rand(2), c)) == 0
    h = torch.randn(2, 16, 32)
    cond = torch.randn(2, 32)
    assert torch.equal(net.blocks[0](h, cond, net.feat_rope), h)


def test_unpatchify_inverts_row_major_patch_order():
    cfg = preset("gmem-tiny", **TINY)
    net = GMemDiT(cfg)
    img = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    tokens = img.reshape(1, 1, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, 16)  # (h, w) x (p, q, c)
    assert torch.equal(net.unpatchify(tokens), img)


def _adapter(strategy: str, ratio: float = 0.4) -> SnippetAdapter:
    return SnippetAdapter(preset("gmem-tiny", **TINY, mask_strategy=strategy, mask_ratio=ratio, p_uncond=0.0))


def test_zero_mask_is_inverted_dropout_per_dimension_and_off_in_eval():
    torch.manual_seed(0)
    ad = _adapter("zero")
    c = torch.ones(4000, 8)
    m = ad.mask(c)
    zero_frac = float((m == 0).float().mean())
    assert abs(zero_frac - 0.4) < 0.02
    assert torch.allclose(m[m != 0], torch.full_like(m[m != 0], 1 / 0.6))
    counts = (m == 0).sum(1)  # per dimension, not whole vectors: rows have varying numbers of zeros
    assert int(counts.min()) < int(counts.max()) and bool(((counts > 0) & (counts < 8)).any())
    ad.eval()
    assert torch.equal(ad.mask(c), c)


def test_random_mask_replaces_about_ratio_of_dims_by_random_values():
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(2000, 8), dim=1)
    m = _adapter("random").mask(c)
    changed = float((m != c).float().mean())
    assert abs(changed - 0.4) < 0.03
    kept = m == c
    assert torch.equal(m[kept], c[kept])  # unmasked dims pass through unscaled
    # the replacements have the spread of a random unit vector's entries, N(0, 1/d)
    assert abs(float(m[~kept].std()) - 8**-0.5) < 0.03


def test_noise_mask_blurs_every_dim_and_stays_on_the_sphere():
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(4000, 64), dim=1)
    m = _adapter("noise", 0.4).mask(c)
    assert bool((m != c).all())
    assert torch.allclose(m.norm(dim=1), torch.ones(4000), atol=1e-5)
    # noise of relative norm 0.4: cos(s, s') is close to 1 / sqrt(1 + 0.4^2) = 0.928
    cos = float((m * c).sum(1).mean())
    assert 0.90 < cos < 0.95


def test_every_mask_strategy_has_a_function_in_the_one_table():
    from training.network.config import MaskStrategy
    from training.network.model import _MASKS

    assert set(_MASKS) == set(MaskStrategy) == {"zero", "random", "noise"}


def test_p_uncond_zeroes_whole_snippets_in_training_only():
    torch.manual_seed(0)
    ad = SnippetAdapter(preset("gmem-tiny", **TINY, mask_ratio=0.0, p_uncond=0.2))
    c = torch.nn.functional.normalize(torch.randn(5000, 8), dim=1)
    m = ad.mask(c)
    null = (m == 0).all(1)
    assert abs(float(null.float().mean()) - 0.2) < 0.02
    assert torch.equal(m[~null], c[~null])  # the other rows are untouched
    ad.eval()
    assert torch.equal(ad.mask(c), c)


def test_presets_trained_from_scratch_use_adaln_zero_and_a_trained_null():
    from training.network.config import PRESETS

    for name, cfg in PRESETS.items():
        assert cfg.init == "adaln-zero", name
        assert cfg.p_uncond > 0 and cfg.trained_null, name
    net = GMemDiT(preset("gmem-tiny", **TINY))
    assert float(net.final_layer.linear.weight.abs().sum()) == 0.0  # the network starts as v = 0


def test_ratio_zero_never_masks():
    c = torch.randn(10, 8)
    assert torch.equal(_adapter("zero", 0.0).mask(c), c)


def test_mlp_adapter_and_class_baseline_build_with_their_key_names():
    sd = GMemDiT(preset("gmem-tiny", **TINY, adapter="mlp")).state_dict()
    assert {"condition_projection.mlp.0.weight", "condition_projection.mlp.4.weight"} <= set(sd)
    cls = GMemDiT(preset("gmem-tiny", **TINY, conditioning="class"))
    assert "y_embedder.embedding_table.weight" in cls.state_dict()
    out = cls(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([3, -1]))
    assert out.shape == (2, 1, 16, 16)


def test_snippet_model_without_snippet_says_what_to_pass():
    net = GMemDiT(preset("gmem-tiny", **TINY))
    with pytest.raises(ValueError, match="snippet"):
        net(torch.randn(1, 1, 16, 16), torch.rand(1), None)
