"""`sample` and `eval` refuse CFG against a zero null the model file records no training on (exit 2).

The zero snippet is the CFG null; a network trained with p_uncond 0 never saw it, so guiding against it
steers by noise. Files written before p_uncond existed load as 0. cfg_scale 1 is unaffected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from shared.errors import InvalidInput
from tests.support.model_fixtures import make_dataset_bank, make_folder, make_model, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.flow.generate import check_cfg
from training.network.config import GMemConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cfgnull")
    make_folder(root / "ds")
    make_dataset_bank(root / "bank.safetensors", str(root / "ds"))
    make_model(root / "untrained.safetensors", p_uncond=0.0)
    make_model(root / "trained.safetensors", p_uncond=0.1)
    # A file from before p_uncond existed: the same model with the key removed from its config JSON.
    with safe_open(str(root / "trained.safetensors"), framework="pt") as fh:
        meta, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    config = json.loads(meta["config"])
    del config["p_uncond"]
    save_file(tensors, str(root / "legacy.safetensors"), metadata={**meta, "config": json.dumps(config)})
    return root


def sample(files: Path, model: str, out: Path, *extra: str):
    args = ["sample", "--model", str(files / model), "--bank", str(files / "bank.safetensors")]
    return CliRunner().invoke(build_app(), [*args, "--n", "2", "--steps", "2", "--out", str(out), *extra])


def evaluate(files: Path, model: str, *extra: str):
    args = ["eval", "--model", str(files / model), "--bank", str(files / "bank.safetensors")]
    return CliRunner().invoke(
        build_app(), [*args, "--dataset", str(files / "ds"), "--n", "4", "--steps", "2", *extra]
    )


def assert_refused(res, scale: str) -> None:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a message, not a traceback
    assert res.output.startswith(f"error: --cfg-scale {scale} needs a CFG null the network was trained on")
    assert "records none (p_uncond 0" in res.output and "use --cfg-scale 1" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("model", ["untrained.safetensors", "legacy.safetensors"])
def test_sample_refuses_cfg_on_a_model_without_a_trained_null(files, tmp_path, model):
    out = tmp_path / "grid.png"
    assert_refused(sample(files, model, out, "--cfg-scale", "2"), "2")
    assert_refused(sample(files, model, out, "--cfg-scale", "0.5"), "0.5")
    assert not out.exists()
    assert sample(files, model, out, "--cfg-scale", "1").exit_code == 0 and out.exists()


def test_sample_guides_a_model_with_a_trained_null(files, tmp_path):
    plain, guided = tmp_path / "plain.png", tmp_path / "guided.png"
    assert sample(files, "trained.safetensors", plain).exit_code == 0
    res = sample(files, "trained.safetensors", guided, "--cfg-scale", "3")
    assert res.exit_code == 0, res.output
    assert Image.open(guided).tobytes() != Image.open(plain).tobytes()


def test_eval_refuses_cfg_on_a_model_without_a_trained_null_and_guides_one_with(files, tmp_path):
    for model in ("untrained.safetensors", "legacy.safetensors"):
        assert_refused(
            evaluate(files, model, "--cfg-scale", "2", "--json-out", str(tmp_path / "r.json")), "2"
        )
        assert not (tmp_path / "r.json").exists()
    res = evaluate(files, "trained.safetensors", "--cfg-scale", "2", "--json-out", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 4


def test_check_cfg_allows_what_has_a_trained_null_and_refuses_non_finite_scales():
    check_cfg(GMemConfig(p_uncond=0.0), 1.0)
    check_cfg(GMemConfig(p_uncond=0.1), 4.0)
    check_cfg(GMemConfig(conditioning="class", p_uncond=0.0), 4.0)  # not snippet-guided: no zero null
    with pytest.raises(InvalidInput, match="cfg_scale 4 needs a CFG null"):
        check_cfg(GMemConfig(p_uncond=0.0), 4.0)
    with pytest.raises(InvalidInput, match="finite"):
        check_cfg(GMemConfig(p_uncond=0.1), float("nan"))
