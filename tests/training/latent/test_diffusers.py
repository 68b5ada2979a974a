"""A diffusers AutoencoderKL, built small from a config and saved with save_pretrained, through our
interface."""

from __future__ import annotations

import diffusers
import pytest
import torch

from shared.errors import BankFileError
from training.latent.autoencoders import DIFFUSERS_KIND, load_autoencoder, load_model_decoder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.5,
    )
    out = tmp_path_factory.mktemp("sdvae") / "vae"
    vae.save_pretrained(str(out))
    return out, vae.eval()


def test_saved_autoencoderkl_encodes_and_decodes_through_our_interface(folder):
    path, reference = folder
    ae = load_autoencoder(path)
    assert (ae.kind, ae.image_channels, ae.latent_channels, ae.downsample) == (DIFFUSERS_KIND, 3, 4, 2)
    assert ae.scaling_factor == 0.5 and ae.shift_factor == 0.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = ae.encode(x)
    with torch.no_grad():
        assert torch.allclose(z, reference.encode(x).latent_dist.mean, atol=1e-5)
        img = ae.decode(z)
        assert torch.allclose(img, reference.decode(z).sample, atol=1e-5)
    assert z.shape == (2, 4, 16, 16) and img.shape == (2, 3, 32, 32)
    spec = ae.spec()
    assert spec["kind"] == DIFFUSERS_KIND and spec["scale"] == 2 and spec["out_channels"] == 3
    again = load_model_decoder(spec)  # what a model file's decoder field reopens
    assert torch.allclose(again(z), img, atol=1e-6)


def test_folder_without_config_is_refused_clearly(tmp_path):
    with pytest.raises(BankFileError, match="diffusers AutoencoderKL"):
        load_autoencoder(tmp_path)
