"""VA-VAE f16d32 encoder import: release key set, an independent reference, latent stats kept."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from shared.errors import IncompatibleArtifacts
from tests.training.official import fixtures as fx
from tests.training.official import reference_vae as ref
from training.latent.autoencoders import load_autoencoder
from training.latent.vavae import autoencoder_state_from_checkpoint, vavae_shapes
from training.official.importer import import_vae


@pytest.fixture(scope="module")
def imported(tmp_path_factory, vavae_ckpt, latent_stats):
    out = tmp_path_factory.mktemp("vavae-full")
    import_vae(vavae_ckpt[0], out, latent_stats[0])
    return out


def test_autoencoder_key_set_is_the_release_autoencoder():
    assert vavae_shapes() == fx.vavae_shapes()


def test_encoder_matches_independent_reference(imported, vavae_ckpt):
    _, state = vavae_ckpt
    ae = load_autoencoder(imported / "vae.safetensors")
    assert (ae.kind, ae.latent_channels, ae.downsample, ae.image_channels) == ("vavae-f16d32", 32, 16, 3)
    # 64 px keeps the test cheap; the attention level is chosen as at 256 px (the release's layout).
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = ae.encode(x)
    with torch.no_grad():
        theirs = ref.encode_mean({k: v.float() for k, v in state.items()}, x, resolution=256)
    assert ours.shape == (2, 32, 4, 4)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
    # Reference sanity: a different weight moves the reference output, so the comparison can fail.
    bumped = dict(state)
    bumped["encoder.down.4.attn.1.q.weight"] = state["encoder.down.4.attn.1.q.weight"] * 3
    with torch.no_grad():
        assert not torch.allclose(ref.encode_mean(bumped, x), theirs, atol=1e-4)


def test_full_file_keeps_release_latent_stats_and_decoder(imported, vavae_ckpt, latent_stats):
    _, mean, std = latent_stats
    ae = load_autoencoder(imported / "vae.safetensors")
    got_mean, got_std = ae.latent_stats
    assert torch.allclose(torch.tensor(got_mean, dtype=torch.float64), mean.reshape(-1).double(), atol=1e-6)
    assert torch.allclose(torch.tensor(got_std, dtype=torch.float64), std.reshape(-1).double(), atol=1e-6)
    written = load_file(str(imported / "vae.safetensors"))
    for k, v in vavae_ckpt[1].items():
        if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            assert torch.equal(written[k], v.float()), k


def test_missing_encoder_key_is_named():
    state = fx.random_vavae_state(seed=4, drop=("encoder.down.4.attn.1.k.bias",))
    with pytest.raises(IncompatibleArtifacts, match=r"encoder\.down\.4\.attn\.1\.k\.bias"):
        autoencoder_state_from_checkpoint({"state_dict": state})


def test_decoder_only_file_refuses_to_encode(decoder_dir):
    ae = load_autoencoder(decoder_dir / "vae_decoder.safetensors")
    with pytest.raises(IncompatibleArtifacts, match="only a decoder"):
        ae.encode(torch.zeros(1, 3, 32, 32))
