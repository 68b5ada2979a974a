"""VA-VAE f16d32 decoder: release key set, shapes, import errors, pixel mapping."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from shared.errors import IncompatibleArtifacts
from tests.training.official import fixtures as fx
from training.official.importer import import_vae
from training.official.vae import decoder_shapes, decoder_state_from_checkpoint, load_decoder, to_uint8


def test_decoder_key_set_is_the_release_decoder():
    release = {k: s for k, s in fx.vavae_shapes().items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert decoder_shapes() == release


def test_import_writes_decoder_that_maps_16x16x32_to_256x256x3(vavae_ckpt, tmp_path):
    path, state = vavae_ckpt
    report = import_vae(path, tmp_path)
    written = load_file(str(tmp_path / "vae_decoder.safetensors"))
    assert set(written) == set(decoder_shapes())
    for k, v in written.items():
        assert torch.equal(v, state[k]), k
    assert report.tensors == len(written)
    assert any("loss" in n and "foundation_model" in n for n in report.notes)
    dec = load_decoder(tmp_path / "vae_decoder.safetensors")
    seen = {}
    dec.decoder.register_forward_hook(lambda mod, args, out: seen.update(h=args[0]))
    z = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = dec.decode(z)
    assert img.shape == (1, 3, 256, 256) and torch.isfinite(img).all()
    # decode = decoder(post_quant_conv(z)), with the release's 1x1 conv weights.
    by_hand = torch.nn.functional.conv2d(z, state["post_quant_conv.weight"], state["post_quant_conv.bias"])
    assert torch.allclose(seen["h"], by_hand, atol=1e-6)
    pixels = to_uint8(img)
    assert pixels.shape == (1, 256, 256, 3) and pixels.dtype == torch.uint8


def test_decoder_found_beside_a_moved_model_folder(decoder_dir, tmp_path):
    spec = {"kind": "vavae-f16d32", "weights": str(tmp_path / "gone" / "vae_decoder.safetensors")}
    dec = load_decoder(spec, base_dir=decoder_dir)
    assert dec.cfg.latent_resolution == 16
    with pytest.raises(IncompatibleArtifacts, match=r"decoder kind 'sd-vae-ft-ema' is not supported"):
        load_decoder({"kind": "sd-vae-ft-ema", "weights": "x"})


def test_missing_decoder_key_is_named():
    state = fx.random_vavae_state(seed=4, drop=("decoder.up.4.attn.2.proj_out.weight",))
    with pytest.raises(IncompatibleArtifacts, match=r"decoder\.up\.4\.attn\.2\.proj_out\.weight"):
        decoder_state_from_checkpoint({"state_dict": state})


def test_unexpected_decoder_key_is_named():
    state = fx.random_vavae_state(seed=4)
    state["decoder.up.4.attn.3.q.weight"] = torch.zeros(512, 512, 1, 1)
    with pytest.raises(IncompatibleArtifacts, match=r"unexpected.*decoder\.up\.4\.attn\.3\.q\.weight"):
        decoder_state_from_checkpoint({"state_dict": state})


def test_wrong_shape_is_named():
    state = fx.random_vavae_state(seed=4)
    state["post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1)  # an SD-VAE (4 channels), not f16d32
    with pytest.raises(IncompatibleArtifacts, match=r"post_quant_conv\.weight \[4, 4, 1, 1\]"):
        decoder_state_from_checkpoint({"state_dict": state})


def test_latents_of_wrong_shape_are_refused(decoder_dir):
    dec = load_decoder(decoder_dir / "vae_decoder.safetensors")
    with pytest.raises(IncompatibleArtifacts, match=r"\[N, 32, 16, 16\]"):
        dec.decode(torch.zeros(1, 4, 32, 32))


def test_pixel_mapping_is_the_releases_truncating_127_5x_plus_128():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 0.99, 1.0, 2.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    got = to_uint8(x)[0, 0, :, 0].tolist()
    # 127.5 x + 128 clamped to [0, 255] and truncated: -1 -> 0.5 -> 0; 0 -> 128; 0.99 -> 254.225 -> 254.
    assert got == [0, 0, 128, 191, 254, 255, 255]
