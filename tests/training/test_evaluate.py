"""Frechet distance and the eval command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shared.errors import InvalidInput
from tests.support.model_fixtures import make_dataset_bank, make_folder, make_model, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.evaluate import EVALNET_WEIGHTS, frechet_distance


def feats(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_fd_of_a_set_with_itself_is_zero_and_symmetric():
    a, b = feats(200, 5, 0), feats(200, 5, 1) * 2 + 1
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, b) - frechet_distance(b, a)) < 1e-6
    assert frechet_distance(a, b) > 1.0


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=4, max_size=4))
def test_fd_of_a_shift_is_the_squared_shift(shift):
    a = feats(100, 4, 3)
    m = np.asarray(shift)
    assert abs(frechet_distance(a, a + m) - float(m @ m)) < 1e-5 * (1 + float(m @ m))


def test_fd_of_gaussians_matches_the_closed_form():
    a = feats(20000, 3, 4)
    b = feats(20000, 3, 5) * 2.0
    # N(0, I) vs N(0, 4 I): Tr(I + 4I - 2 * 2I) = 3 * 1
    assert abs(frechet_distance(a, b) - 3.0) < 0.15


def test_fd_needs_two_samples():
    with pytest.raises(InvalidInput):
        frechet_distance(feats(1, 3, 0), feats(5, 3, 0))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ev")
    make_folder(root / "ds")
    make_dataset_bank(root / "bank.safetensors", str(root / "ds"))
    make_model(root / "model.safetensors")
    return root


def test_eval_command_reports_fd_and_consistency(files, tmp_path):
    assert Path(EVALNET_WEIGHTS).exists(), "the committed evalnet artifact is part of the repository"
    res = CliRunner().invoke(
        build_app(),
        [
            "eval",
            "--model",
            str(files / "model.safetensors"),
            "--bank",
            str(files / "bank.safetensors"),
            "--dataset",
            str(files / "ds"),
            "--n",
            "6",
            "--steps",
            "2",
            "--json-out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["n"] == 6 and out["steps"] == 2 and out["fd"] > 0
    assert 0.0 <= out["consistency"] <= 1.0  # labels come from the bank rows the noise picked


def test_eval_without_bank_for_a_snippet_model_says_so(files):
    res = CliRunner().invoke(build_app(), ["eval", "--model", str(files / "model.safetensors"), "--n", "4"])
    assert res.exit_code == 2 and "--bank" in res.output


def test_embedded_default_makes_digits_its_snippets_choose():
    """The committed model + bank: snippets of a class steer samples to that class (per the evalnet)."""
    import torch

    from shared.factors import load_factors
    from training.evaluate import EvalNet
    from training.files.modelfile import check_compatible, load_model
    from training.flow.generate import sample_tensor

    model_path, bank_path = (
        Path("artifacts/mnist-5k/model.safetensors"),
        Path("artifacts/mnist-5k/bank.safetensors"),
    )
    assert model_path.stat().st_size + bank_path.stat().st_size < 40 * 2**20
    model, bank = load_model(model_path), load_factors(bank_path)
    check_compatible(model.config, bank.meta)
    labels = np.asarray(bank.labels)
    evalnet = EvalNet()
    for digit in (1, 7):
        ids = np.where(labels == digit)[0][:6]
        x = sample_tensor(model.net, model.config, torch.from_numpy(bank.snippets(ids)), list(range(6)))
        assert (evalnet.classify(evalnet.features(x.clamp(-1, 1))) == digit).mean() >= 0.65
