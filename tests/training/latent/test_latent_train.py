"""`train --space latent`: the model file records space, VAE and normalisation; sample, eval and the
generator use it."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
from PIL import Image
from safetensors.torch import load_file

from tests.support.services import start_bank, start_generator
from training.files.modelfile import load_model, read_model_meta
from training.latent.cache import read_manifest

from .conftest import BANK, SHORT_RUN, VAE, latent_train_args, run_cli


def test_model_file_records_space_vae_and_normalisation(latent_model, cache_dir):
    meta = read_model_meta(latent_model)
    manifest = read_manifest(cache_dir)
    assert meta["space"] == "latent" and meta["input_size"] == 8 and meta["in_channels"] == 4
    assert meta["decoder"]["kind"] == "gmem/tiny-vae" and meta["decoder"]["weights"] == str(VAE.resolve())
    assert meta["latent_mean"] == manifest["latent_mean"] and meta["latent_std"] == manifest["latent_std"]
    assert meta["normalization"]["space"] == "latent"
    assert (
        meta["repa_dim"] == 128  # gmem/mnist-ssl's 4x4 map has 128 channels
        and meta["encoder_depth"] == 2
        and meta["train"]["options"]["repa_weight"] == 0.5
    )
    run = latent_model.parent / "model-run"
    assert (run / "loss.png").is_file() and (run / "samples" / "step_0000024.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        "step_0000012.safetensors",
        "step_0000024.safetensors",
    ]
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))
    # The preview grid is decoded pixels (32 px cells), not 8x8 latents.
    assert Image.open(run / "samples" / "step_0000024.png").size[0] > 4 * 32


def test_resume_from_checkpoint_ends_with_the_same_weights(latent_model, cache_dir, tmp_path):
    out = tmp_path / "resumed.safetensors"
    res = run_cli(
        *latent_train_args(cache_dir, out),
        *SHORT_RUN,
        "--resume",
        str(latent_model.parent / "model-run" / "checkpoints" / "step_0000012.safetensors"),
    )
    assert res.exit_code == 0, res.output
    a, b = load_file(str(latent_model)), load_file(str(out))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_sample_and_eval_decode_through_the_recorded_vae(latent_model, tmp_path):
    model = load_model(latent_model)
    assert model.decoder.kind == "gmem/tiny-vae"
    png = tmp_path / "grid.png"
    res = run_cli(
        "sample",
        "--model",
        str(latent_model),
        "--bank",
        str(BANK),
        "--n",
        "4",
        "--seed",
        "3",
        "--out",
        str(png),
    )
    assert res.exit_code == 0, res.output
    assert Image.open(png).size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
    res = run_cli(
        "eval", "--model", str(latent_model), "--bank", str(BANK), "--dataset", "mnist-5k:eval", "--n", "20"
    )
    assert res.exit_code == 0, res.output
    assert '"fd"' in res.output


def test_generator_serves_latent_model_at_dataset_resolution(latent_model, tmp_path):
    bank = start_bank(tmp_path)
    try:
        gen = start_generator(tmp_path, bank.url, model=latent_model)
        try:
            info = httpx.get(gen.url + "/model", timeout=30).json()
            assert (info["resolution"], info["channels"]) == (32, 1)
            r = httpx.post(gen.url + "/generate", json={"n": 2, "seed": 5}, timeout=120)
            assert r.status_code == 200, r.text
            again = httpx.post(gen.url + "/generate", json={"n": 2, "seed": 5}, timeout=120).json()
        finally:
            gen.stop()
    finally:
        bank.stop()
    body = r.json()
    assert len(body["images"]) == 2 and body["images"] == again["images"]
    for b64 in body["images"]:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.format == "PNG" and img.size == (32, 32) and img.mode == "L"
        assert np.asarray(img).std() > 0  # decoded pixels, not a constant fill
