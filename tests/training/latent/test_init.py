"""`train --init MODEL`: fine-tuning starts from the model's weights (bit equality at step 0) and checks the
fit."""

from __future__ import annotations

import numpy as np
from safetensors.torch import load_file

from shared.factors import BankMeta, load_factors, save_factors

from .conftest import BANK, latent_train_args, run_cli


def _args(cache_dir, out, bank=BANK, steps="0"):
    return [*latent_train_args(cache_dir, out, bank), "--steps", steps, "--batch-size", "8",
            "--preset", "gmem-tiny-latent", "--sample-every", "1000", "--ckpt-every", "1000",
            "--threads", "1"]  # fmt: skip


def test_init_starts_from_the_given_weights_bit_for_bit(latent_model, cache_dir, tmp_path):
    res = run_cli(*_args(cache_dir, tmp_path / "ft0.safetensors"), "--init", str(latent_model))
    assert res.exit_code == 0, res.output
    src, got = load_file(str(latent_model)), load_file(str(tmp_path / "ft0.safetensors"))
    assert set(src) == set(got)  # the REPA projector is kept too
    for k in src:
        assert src[k].dtype == got[k].dtype and np.array_equal(src[k].numpy(), got[k].numpy()), k
    # One step moves them: the equality above is not an accident of never training.
    res = run_cli(*_args(cache_dir, tmp_path / "ft1.safetensors", steps="1"), "--init", str(latent_model))
    assert res.exit_code == 0, res.output
    one = load_file(str(tmp_path / "ft1.safetensors"))
    assert any(not np.array_equal(src[k].numpy(), one[k].numpy()) for k in src)


def test_init_refuses_a_bank_of_another_encoder(latent_model, cache_dir, tmp_path):
    f = load_factors(BANK)
    other = tmp_path / "other.safetensors"
    meta = BankMeta(
        encoder="test/other",
        feature_dim=f.feature_dim,
        rank=f.rank,
        source=f.meta.source,
        explained_variance=0.5,
    )
    save_factors(other, f.mu, f.B, f.S, np.asarray(f.C), meta)
    res = run_cli(*_args(cache_dir, tmp_path / "x.safetensors", bank=other), "--init", str(latent_model))
    assert res.exit_code == 2 and "test/other" in res.output and "gmem/mnist-ssl" in res.output


def test_init_refuses_a_model_of_another_shape(cache_dir, tmp_path):
    pixel = BANK.parent / "model.safetensors"  # the embedded pixel-space model: 32x32x1, not 8x8x4 latents
    res = run_cli(*_args(cache_dir, tmp_path / "x.safetensors"), "--init", str(pixel))
    assert res.exit_code == 2 and "space: model 'pixel', this run 'latent'" in res.output


def test_init_in_pixel_space_keeps_the_embedded_model_bit_for_bit(tmp_path):
    pixel = BANK.parent / "model.safetensors"
    out = tmp_path / "px.safetensors"
    res = run_cli(
        "train",
        "--dataset",
        "mnist-5k:train",
        "--bank",
        str(BANK),
        "--init",
        str(pixel),
        "--steps",
        "0",
        "--out",
        str(out),
        "--threads",
        "1",
    )
    assert res.exit_code == 0, res.output
    src, got = load_file(str(pixel)), load_file(str(out))
    assert set(src) == set(got) and all(np.array_equal(src[k].numpy(), got[k].numpy()) for k in src)
