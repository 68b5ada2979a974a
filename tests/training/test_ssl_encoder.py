"""The default snippet encoder gmem/mnist-ssl: self-supervised views, its loss, the command and the file."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from tests.support.model_fixtures import make_folder, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.encoders.registry import DEFAULT_ENCODER, load_encoder
from training.encoders.ssl import augment, nt_xent


def test_augment_gives_new_views_in_range_repeatable_by_seed():
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= -1 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float((a - x).abs().mean()) > 0.05  # a view is not the image


def test_nt_xent_rewards_views_that_find_their_partner():
    torch.manual_seed(0)
    z = torch.randn(64, 16)
    matched = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2)
    unmatched = nt_xent(z, torch.randn(64, 16), 0.2)
    assert float(matched) < 0.3 * float(unmatched)
    assert float(unmatched) > 0.8 * torch.log(torch.tensor(127.0))  # chance: 1 of 2N - 1 = 127


def test_train_encoder_mnist_ssl_writes_a_loadable_self_supervised_encoder(tmp_path):
    make_folder(tmp_path / "ds", per_class=6, size=32)
    out = tmp_path / "ssl.safetensors"
    res = CliRunner().invoke(
        build_app(),
        ["train-encoder", "--kind", "mnist-ssl", "--dataset", str(tmp_path / "ds"), "--out", str(out)]
        + ["--epochs", "2", "--threads", "1"],
    )
    assert res.exit_code == 0, res.output
    enc = load_encoder("gmem/mnist-ssl", str(out))
    assert (enc.id, enc.feature_dim) == ("gmem/mnist-ssl", 128)
    f = enc.encode(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert f.shape == (3, 128) and bool(torch.isfinite(f).all())
    from safetensors import safe_open

    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert "no labels" in meta["objective"] and "probe_knn10_acc" in meta and "nt_xent" in meta


def test_the_default_bank_encoder_is_the_self_supervised_one_and_it_ships():
    assert DEFAULT_ENCODER == "gmem/mnist-ssl"
    from shared.factors import load_factors

    bank = load_factors("artifacts/mnist-5k/bank.safetensors")
    assert bank.meta.encoder == DEFAULT_ENCODER
    assert bank.meta.rank == bank.meta.feature_dim  # lossless: the bank holds the exact snippets
    enc = load_encoder(DEFAULT_ENCODER)
    assert enc.feature_dim == bank.meta.feature_dim
