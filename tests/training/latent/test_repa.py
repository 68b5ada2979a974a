"""REPA: its gradient reaches the projector and the chosen block (and nothing after it); options checked."""

from __future__ import annotations

import torch

from training.network.config import preset
from training.network.model import GMemDiT
from training.repa import REPA_PRESETS, repa_loss, resample_tokens

from .conftest import latent_train_args, run_cli


def _net(depth: int) -> GMemDiT:
    torch.manual_seed(0)
    cfg = preset("gmem-tiny-latent", repa_dim=64, encoder_depth=depth, snippet_dim=128, init="xavier")
    return GMemDiT(cfg).train()


def test_repa_gradient_reaches_projector_and_chosen_block_only():
    net = _net(depth=3)
    x, t, c = (
        torch.randn(4, 4, 8, 8),
        torch.rand(4),
        torch.nn.functional.normalize(torch.randn(4, 128), dim=1),
    )
    _, projected = net(x, t, c, return_features=True)
    assert projected.shape == (4, 16, 64)
    repa_loss(projected, torch.randn(4, 16, 64)).backward()
    proj_grads = [p.grad for p in net.projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in proj_grads)
    assert net.blocks[2].attn.qkv.weight.grad.abs().sum() > 0  # the chosen block (tokens after 3 blocks)
    assert net.blocks[0].mlp.w12.weight.grad.abs().sum() > 0  # and the blocks before it
    assert all(p.grad is None for p in net.blocks[3].parameters())  # later blocks do not feed the projector
    assert all(p.grad is None for p in net.final_layer.parameters())


def test_repa_loss_is_one_minus_cosine():
    a = torch.randn(2, 5, 8)
    assert torch.allclose(repa_loss(a, 3 * a), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(repa_loss(a, -a), torch.tensor(2.0), atol=1e-6)
    tokens = torch.randn(1, 16, 3)
    assert resample_tokens(tokens, 4) is tokens and resample_tokens(tokens, 8).shape == (1, 64, 3)


def test_release_preset_is_block_4_lambda_half_dinov2():
    p = REPA_PRESETS["release"]
    assert (p.encoder_depth, p.weight, p.encoder) == (4, 0.5, "timm/vit_base_patch14_dinov2")
    assert preset("gmem-XL/1").repa_dim == 768 and preset("gmem-XL/1").repa_hidden == 2048


def test_repa_options_are_checked(cache_dir, tmp_path):
    base = [
        *latent_train_args(cache_dir, tmp_path / "m.safetensors"),
        "--steps",
        "1",
        "--preset",
        "gmem-tiny-latent",
    ]
    res = run_cli(*base, "--repa", "release")
    assert res.exit_code == 2 and "aligns to 'timm/vit_base_patch14_dinov2'" in res.output
    res = run_cli(*base, "--repa", "mnist", "--repa-depth", "9")
    assert res.exit_code == 2 and "between 1 and the network's 6 blocks" in res.output
    res = run_cli(*base, "--repa", "nope")
    assert res.exit_code == 2 and "unknown --repa preset" in res.output
