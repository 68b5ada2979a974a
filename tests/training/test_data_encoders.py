"""Datasets (mnist-5k, image folders) and encoders (embedded, timm with local weights), end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shared.errors import EncoderUnavailable, IncompatibleArtifacts, InvalidImage, InvalidInput
from shared.factors import load_factors
from training.data import load_dataset, to_model_input
from training.encoders.registry import DEFAULT_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD, load_encoder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist-5k")


def test_mnist_5k_shapes_padding_and_splits(mnist):
    assert mnist.images.shape == (5000, 32, 32, 1) and mnist.images.dtype == np.uint8
    assert mnist.labels.dtype == np.int64 and np.array_equal(np.bincount(mnist.labels), [500] * 10)
    # 2 px of zero padding on every side, digits inside.
    border = np.concatenate(
        [
            mnist.images[:, :2].ravel(),
            mnist.images[:, -2:].ravel(),
            mnist.images[:, :, :2].ravel(),
            mnist.images[:, :, -2:].ravel(),
        ]
    )
    assert border.max() == 0 and mnist.images.max() == 255
    train, held = load_dataset("mnist-5k:train"), load_dataset("mnist-5k:eval")
    assert (len(train), len(held)) == (4500, 500)
    assert train.source == "mnist-5k:train" and held.source == "mnist-5k:eval"
    idx = np.arange(5000)
    np.testing.assert_array_equal(train.images, mnist.images[idx % 10 != 9])
    np.testing.assert_array_equal(held.labels, mnist.labels[idx % 10 == 9])
    assert np.array_equal(np.bincount(held.labels), [50] * 10)
    with pytest.raises(InvalidInput, match="split"):
        load_dataset("mnist-5k:test")
    with pytest.raises(InvalidInput, match="unknown dataset"):
        load_dataset("imagenet-nowhere")


def test_to_model_input_range_and_layout(mnist):
    x = to_model_input(mnist.images[:3])
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert to_model_input(mnist.images[0]).shape == (1, 1, 32, 32)


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "zebra").mkdir(parents=True)
    (root / "apple").mkdir()
    (root / "empty_class").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "zebra" / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(root / "zebra" / "b.JPG")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "apple" / "c.webp")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)).save(root / "apple" / "d.png")
    (root / "apple" / "notes.txt").write_text("not an image, ignored")


def test_image_folder_labels_modes_and_sizes(tmp_path: Path):
    _write_folder(tmp_path)
    ds = load_dataset(str(tmp_path))
    assert ds.class_names == ("apple", "empty_class", "zebra")
    np.testing.assert_array_equal(ds.labels, [0, 0, 2, 2])
    # The first file (apple/c.webp, RGB 16x16) sets mode and size for all.
    assert ds.images.shape == (4, 16, 16, 3) and ds.images.dtype == np.uint8
    ds2 = load_dataset(str(tmp_path), mode="L", size=8)
    assert ds2.images.shape == (4, 8, 8, 1)


def test_bank_from_an_image_folder_through_the_embedded_encoder(tmp_path: Path):
    from training.bank.build import run_build

    _write_folder(tmp_path / "images")
    out = tmp_path / "bank.safetensors"
    meta = run_build(out, 2, None, str(tmp_path / "images"), None, None, None, None)
    bank = load_factors(out)
    assert meta.encoder == "gmem/mnist-ssl" and bank.meta.source == str(tmp_path / "images")
    np.testing.assert_array_equal(np.asarray(bank.labels), [0, 0, 2, 2])
    assert (bank.size, bank.feature_dim, bank.rank) == (4, 128, 2)


def test_image_folder_errors_name_the_problem(tmp_path: Path):
    _write_folder(tmp_path)
    (tmp_path / "zebra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(InvalidImage, match="broken.png"):
        load_dataset(str(tmp_path))
    empty = tmp_path / "nothing"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="no images"):
        load_dataset(str(empty))
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(InvalidInput, match="no class subfolders"):
        load_dataset(str(bare))


def test_embedded_encoder_and_evalnet_artifacts(mnist):
    enc = load_encoder("gmem/mnist-cnn")
    assert (enc.id, enc.feature_dim, enc.channels, enc.resolution) == ("gmem/mnist-cnn", 128, 1, 32)
    x = to_model_input(mnist.images[:64])
    f = enc.encode(x)
    assert f.shape == (64, 128) and torch.isfinite(f).all()
    # Batching does not change features; PIL input gives the same features as arrays.
    torch.testing.assert_close(enc.encode(x, batch_size=7), f, atol=1e-5, rtol=1e-5)
    pil = [Image.fromarray(img[:, :, 0]) for img in mnist.images[:4]]
    np.testing.assert_allclose(enc.encode_pil(pil), f[:4].numpy(), atol=1e-5)
    evalnet = load_encoder("gmem/mnist-evalnet")
    assert evalnet.feature_dim == 64
    held = load_dataset("mnist-5k:eval")
    with torch.no_grad():
        logits = evalnet.net(to_model_input(held.images))
    accuracy = float((logits.argmax(1).numpy() == held.labels).mean())
    assert accuracy > 0.95, accuracy


def test_encoder_errors(tmp_path: Path):
    with pytest.raises(InvalidInput, match="unknown encoder"):
        load_encoder("clip/whatever")
    with pytest.raises(EncoderUnavailable, match="encoder-weights"):
        load_encoder("timm/vit_tiny_patch16_224")
    with pytest.raises(EncoderUnavailable, match="not found"):
        load_encoder("gmem/mnist-cnn", str(tmp_path / "none.safetensors"))
    with pytest.raises(IncompatibleArtifacts, match="gmem/mnist-evalnet"):
        load_encoder("gmem/mnist-cnn", DEFAULT_WEIGHTS["gmem/mnist-evalnet"])
    with pytest.raises(InvalidInput, match="unknown timm architecture"):
        load_encoder("timm/not_a_model", str(tmp_path / "w.pth"))


def _tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()


def test_timm_tiny_vit_from_local_weights(tmp_path: Path, mnist):
    from safetensors.torch import save_file

    net = _tiny_vit()
    save_file(
        net.state_dict(),
        str(tmp_path / "vit.safetensors"),
        metadata={"timm_kwargs": json.dumps({"img_size": 32})},
    )
    enc = load_encoder("timm/vit_tiny_patch16_224", str(tmp_path / "vit.safetensors"))
    assert (enc.feature_dim, enc.channels, enc.resolution) == (192, 3, 32)
    x = to_model_input(mnist.images[:5])  # grey: repeated to RGB by the encoder
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.forward_features(((x.repeat(1, 3, 1, 1) + 1) / 2 - mean) / std)[:, 0]
    torch.testing.assert_close(enc.encode(x), expected, atol=1e-5, rtol=1e-5)
    # The same weights as a plain torch state dict (.pth, weights-only) need the size passed another way:
    # without it the arch's default (224) is used and the pos table is resampled to that grid.
    torch.save(net.state_dict(), tmp_path / "vit.pth")
    enc224 = load_encoder("timm/vit_tiny_patch16_224", str(tmp_path / "vit.pth"))
    assert enc224.resolution == 224 and enc224.encode(x).shape == (5, 192)


@pytest.mark.slow
def test_dinov2_follows_the_papers_preprocessing(tmp_path: Path, mnist):
    """timm/vit_base_patch14_dinov2 from a DINOv2 hub-style checkpoint (518 px pos table, mask_token)."""
    import timm
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    # Reference, written from LINs-lab/GMem ``models/dinov2.py``: pos table resampled once to 16x16 (+CLS)
    # bicubic + antialias; [-1,1] -> [0,1] -> ImageNet mean/std -> bicubic resize to 224; CLS after final
    # norm.
    ref = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    hub = {k: v.clone() for k, v in ref.state_dict().items()}
    hub["pos_embed"] = torch.randn(1, 1 + 37 * 37, 768) * 0.02  # the hub checkpoint's native 518 px table
    hub["mask_token"] = torch.zeros(1, 768)
    torch.save(hub, tmp_path / "dinov2_vitb14.pth")
    enc = load_encoder("timm/vit_base_patch14_dinov2", str(tmp_path / "dinov2_vitb14.pth"))
    assert (enc.feature_dim, enc.resolution, enc.channels) == (768, 224, 3)
    state = {k: v for k, v in hub.items() if k != "mask_token"}
    state["pos_embed"] = resample_abs_pos_embed(
        hub["pos_embed"], new_size=(16, 16), num_prefix_tokens=1, interpolation="bicubic", antialias=True
    )
    ref.load_state_dict(state)
    x = to_model_input(mnist.images[:1])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    prepared = F.interpolate(
        ((x.repeat(1, 3, 1, 1) + 1) / 2 - mean) / std, size=224, mode="bicubic", align_corners=False
    )
    with torch.no_grad():
        expected = ref.forward_features(prepared)[:, 0]
    torch.testing.assert_close(enc.encode(x), expected, atol=1e-4, rtol=1e-4)


def test_train_encoder_command_writes_a_loadable_encoder(tmp_path: Path):
    out = tmp_path / "enc.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train-encoder",
            "--kind",
            "mnist-cnn",
            "--dataset",
            "mnist-5k:eval",
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    enc = load_encoder("gmem/mnist-cnn", str(out))
    assert enc.feature_dim == 128


def test_end_to_end_bank_of_mnist_clusters_by_digit(tmp_path: Path, mnist):
    """build-bank --dataset mnist-5k with the committed encoder: same-digit snippets are nearest."""
    out = tmp_path / "bank.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "build-bank",
            "--dataset",
            "mnist-5k",
            "--encoder",
            "gmem/mnist-cnn",
            "--rank",
            "32",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    bank = load_factors(out)
    assert (bank.size, bank.feature_dim, bank.rank) == (5000, 128, 32)
    assert bank.meta.source == "mnist-5k" and bank.meta.encoder == "gmem/mnist-cnn"
    np.testing.assert_array_equal(np.asarray(bank.labels), mnist.labels)
    assert 0.8 < bank.meta.explained_variance <= 1.0
    s = bank.snippets(np.arange(bank.size)).astype(np.float64)
    labels = mnist.labels
    sim = s @ s.T
    np.fill_diagonal(sim, np.nan)
    # Mean similarity within a digit beats the similarity to every other digit, for every digit.
    block = np.array([[np.nanmean(sim[labels == a][:, labels == b]) for b in range(10)] for a in range(10)])
    for a in range(10):
        assert block[a, a] > np.delete(block[a], a).max() + 0.1, block[a]
    # And the nearest other snippet is of the same digit almost always.
    nearest = np.nanargmax(sim, axis=1)
    assert (labels[nearest] == labels).mean() > 0.95


def test_center_crop_keeps_aspect_and_takes_the_middle():
    from PIL import Image

    from training.encoders.registry import center_crop

    # 96 x 32: a white band only in the middle third; a stretch would keep the black sides.
    arr = np.zeros((32, 96), dtype=np.uint8)
    arr[:, 32:64] = 255
    out = np.asarray(center_crop(Image.fromarray(arr), 32))
    assert out.shape == (32, 32)
    assert out.min() > 200
    # A large image is reduced to the target size exactly.
    big = center_crop(Image.fromarray(np.zeros((600, 500), dtype=np.uint8)), 256)
    assert big.size == (256, 256)
