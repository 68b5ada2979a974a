"""Training conditions on exact snippets f(x)/|f(x)|, not on the bank's rank-r reconstructions."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from shared.factors import load_factors
from tests.support.model_fixtures import TINY, make_dataset_bank, make_folder, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.encoders.registry import load_encoder
from training.train import load_train_data


def _folder_and_bank(tmp_path, rank: int):
    make_folder(tmp_path / "ds", per_class=6, size=32)
    res = CliRunner().invoke(
        build_app(),
        ["build-bank", "--dataset", str(tmp_path / "ds"), "--encoder", "gmem/mnist-ssl", "--rank", str(rank)]
        + ["--out", str(tmp_path / "bank.safetensors")],
    )
    assert res.exit_code == 0, res.output
    return str(tmp_path / "ds"), str(tmp_path / "bank.safetensors")


def test_training_condition_is_the_exact_snippet_of_each_image(tmp_path):
    ds, bank = _folder_and_bank(tmp_path, rank=4)  # rank 4 of 128: reconstructions differ from snippets
    data, _ = load_train_data(ds, bank, "snippet")
    exact = torch.nn.functional.normalize(load_encoder("gmem/mnist-ssl").encode(data.x), dim=1)
    assert data.snippets is not None and data.snippets["kind"] == "exact"
    assert torch.allclose(data.cond, exact, atol=1e-6)
    recon = torch.from_numpy(load_factors(bank).snippets(np.arange(len(exact))))
    assert float((data.cond - recon).abs().max()) > 1e-3  # and not the bank's rank-4 rows


def test_a_bank_of_an_encoder_not_available_here_falls_back_and_says_so(tmp_path):
    make_folder(tmp_path / "ds", per_class=4)
    make_dataset_bank(tmp_path / "bank.safetensors", str(tmp_path / "ds"))  # encoder "test/bars"
    data, _ = load_train_data(str(tmp_path / "ds"), str(tmp_path / "bank.safetensors"), "snippet")
    assert data.snippets["kind"] == "rank-4 reconstruction" and "test/bars" in data.snippets["why"]
    recon = load_factors(tmp_path / "bank.safetensors").snippets(np.arange(len(data.x)))
    assert np.allclose(data.cond.numpy(), recon)
    out = tmp_path / "m.safetensors"
    res = CliRunner().invoke(
        build_app(),
        ["train", "--dataset", str(tmp_path / "ds"), "--bank", str(tmp_path / "bank.safetensors")]
        + ["--out", str(out), "--steps", "2", "--batch-size", "4", "--threads", "1"]
        + ["--sample-every", "1000", "--ckpt-every", "1000"],
    )
    assert res.exit_code == 0, res.output
    assert "not exact snippets" in res.output
    with safe_open(str(out), "pt") as fh:
        config = json.loads(fh.metadata()["config"])
    assert config["train_snippets"]["kind"] == "rank-4 reconstruction"
    assert config["p_uncond"] == 0.1  # the preset trains its CFG null
