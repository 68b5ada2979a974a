"""The latent + snippet cache: identical whether written in one pass or resumed; contents are what they
say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared.errors import IncompatibleArtifacts
from training.data import load_dataset, to_model_input
from training.encoders.registry import load_encoder
from training.latent.autoencoders import load_autoencoder
from training.latent.cache import read_cache, read_manifest, shard_name, write_cache

from .conftest import VAE

ARGS = dict(
    dataset="mnist-5k:eval",
    vae=str(VAE),
    encoder_id="gmem/mnist-cnn",
    shard_size=128,
    flip=True,
    repa=True,
    batch_size=50,
    progress=False,
)


def _files(folder):
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard_*.safetensors"))}


def test_resumed_cache_equals_one_pass(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_cache(out=one, **ARGS)
    partial = write_cache(out=two, limit_shards=2, **ARGS)
    assert partial["complete"] is False and not (two / "cache.json").exists()
    assert len(list(two.glob("shard_*.safetensors"))) == 2
    write_cache(out=two, **ARGS)  # resume: writes shards 2 and 3 only
    a, b = _files(one), _files(two)
    assert list(a) == [shard_name(k) for k in range(4)] == list(b)
    for name in a:
        assert set(a[name]) == set(b[name])
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    ma, mb = (json.loads((d / "cache.json").read_text()) for d in (one, two))
    for key in ("latent_mean", "latent_std", "latent_shape", "n", "shards"):
        assert ma[key] == mb[key]


def test_cache_contents_match_the_autoencoder_and_encoder(tmp_path):
    write_cache(out=tmp_path / "c", **ARGS)
    t = read_cache(tmp_path / "c", ("latents", "latents_flip", "snippets", "features", "labels", "indices"))
    ds = load_dataset("mnist-5k:eval")
    assert t["latents"].shape == (500, 4, 8, 8) and t["features"].shape == (500, 16, 64)
    assert torch.equal(t["indices"], torch.arange(500)) and np.array_equal(t["labels"].numpy(), ds.labels)
    x = to_model_input(ds.images[:7])
    ae, enc = load_autoencoder(VAE), load_encoder("gmem/mnist-cnn")
    assert torch.allclose(t["latents"][:7], ae.encode(x), atol=1e-5)
    assert torch.allclose(t["latents_flip"][:7], ae.encode(torch.flip(x, dims=[3])), atol=1e-5)
    f = enc.encode(x)
    assert torch.allclose(t["snippets"][:7], f / f.norm(dim=1, keepdim=True), atol=1e-6)
    # Per-channel statistics, computed independently from the stored latents.
    m = read_manifest(tmp_path / "c")
    z = t["latents"].double()
    assert np.allclose(m["latent_mean"], z.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(m["latent_std"], z.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-7)


def test_resume_with_other_arguments_is_refused(tmp_path):
    write_cache(out=tmp_path / "c", limit_shards=1, **ARGS)
    with pytest.raises(IncompatibleArtifacts, match="other arguments"):
        write_cache(out=tmp_path / "c", **{**ARGS, "flip": False})


def test_unfinished_cache_is_not_trained_on(tmp_path):
    from shared.errors import InvalidInput

    write_cache(out=tmp_path / "c", limit_shards=1, **ARGS)
    with pytest.raises(InvalidInput, match="unfinished"):
        read_manifest(tmp_path / "c")
