"""Model file round trip, refusal of unknown formats and mismatched banks, generate(), the sample grid."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from shared.errors import BankFileError, DimensionMismatch, IncompatibleArtifacts, ModelFileError
from shared.factors import BankMeta, load_factors
from tests.support.model_fixtures import make_dataset_bank, make_folder, make_model, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.files.modelfile import check_compatible, load_model, read_model_meta
from training.flow.generate import generate, initial_noise, to_png
from training.sample import make_grid


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    make_folder(root / "ds")
    make_dataset_bank(root / "bank.safetensors", str(root / "ds"))
    make_model(root / "model.safetensors")
    return root


def unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_model_file_round_trip_keeps_weights_config_and_outputs(files, tmp_path):
    model = load_model(files / "model.safetensors")
    assert not model.net.training and model.id == "test-tiny" and model.decoder is None
    meta = read_model_meta(files / "model.safetensors")
    assert meta["snippet_dim"] == 8 and meta["space"] == "pixel" and meta["default_steps"] == 3
    from training.files.modelfile import save_model

    save_model(tmp_path / "copy.safetensors", model.net, model.config, {"id": "copy"})
    copy = load_model(tmp_path / "copy.safetensors")
    assert copy.config == model.config and copy.id == "copy"
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, copy.net.state_dict()[k])
    assert np.array_equal(generate(model, unit(2), [1, 2]), generate(copy, unit(2), [1, 2]))


def test_unknown_format_or_version_is_refused_naming_both(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "gmem-model", "format_version": "7"})
    with pytest.raises(ModelFileError, match=r"format='gmem-model' format_version='7'.*format_version='1'"):
        load_model(path)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "gmem-bank", "format_version": "1"})
    with pytest.raises(ModelFileError, match="gmem-bank"):
        load_model(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert not isinstance(info.value, BankFileError)  # a model file is not a bank file


def test_mismatched_bank_is_refused_naming_both_dims_and_encoders(files):
    model = load_model(files / "model.safetensors")
    bank = load_factors(files / "bank.safetensors")
    check_compatible(model.config, bank.meta)  # the matching pair passes
    other = BankMeta(
        encoder="timm/vit_base_patch14_dinov2", feature_dim=768, rank=4, source="x", explained_variance=1.0
    )
    with pytest.raises(IncompatibleArtifacts) as err:
        check_compatible(model.meta, other)
    assert "model 8, bank 768" in err.value.message
    assert "'test/bars'" in err.value.message and "'timm/vit_base_patch14_dinov2'" in err.value.message


def test_generate_is_deterministic_per_seed_and_batch_independent(files):
    model = load_model(files / "model.safetensors")
    s = unit(3)
    batch = generate(model, s, [10, 11, 12], steps=3, sampler="sde")
    assert batch.dtype == np.uint8 and batch.shape == (3, 16, 16, 1)
    for k in range(3):
        single = generate(model, s[k : k + 1], [10 + k], steps=3, sampler="sde")
        assert to_png(single[0]) == to_png(batch[k])
    assert not np.array_equal(batch[0], generate(model, s[:1], [99], steps=3, sampler="sde")[0])


def test_initial_noise_is_the_first_draw_of_the_seed(files):
    model = load_model(files / "model.safetensors")
    z = initial_noise(model, 5)
    assert z.shape == (1, 16, 16)
    assert torch.equal(z, torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(5)))


def test_generate_rejects_wrong_snippet_shapes(files):
    model = load_model(files / "model.safetensors")
    with pytest.raises(DimensionMismatch, match=r"expected \(2, 8\)"):
        generate(model, unit(2, d=5), [1, 2])


def test_png_round_trip():
    img = (np.arange(16 * 16) % 256).astype(np.uint8).reshape(16, 16, 1)
    back = np.asarray(Image.open(io.BytesIO(to_png(img))))
    assert np.array_equal(back, img[:, :, 0])


def test_grid_geometry_k5_is_3_columns_2_rows_with_equal_padding():
    cells = np.stack([np.full((4, 6, 1), 10 * (k + 1), dtype=np.uint8) for k in range(5)])
    grid = make_grid(cells, pad=2, fill=255)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 1)
    for k in range(5):
        r, c = divmod(k, 3)
        y, x = 2 + r * 6, 2 + c * 8
        assert np.all(grid[y : y + 4, x : x + 6] == 10 * (k + 1))  # row-major placement
    mask = np.ones(grid.shape[:2], bool)
    for k in range(6):
        r, c = divmod(k, 3)
        mask[2 + r * 6 : 2 + r * 6 + 4, 2 + c * 8 : 2 + c * 8 + 6] = False
    assert np.all(grid[mask] == 255)  # every gutter, outer ones included, is the same 2 px
    assert np.all(grid[8:12, 18:24] == 255)  # the empty sixth cell


def test_sample_command_writes_the_grid_and_picks_snippets_by_noise(files, tmp_path):
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        build_app(),
        [
            "sample",
            "--model",
            str(files / "model.safetensors"),
            "--bank",
            str(files / "bank.safetensors"),
            "--n",
            "5",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    from shared.bankmath import cdf_index

    model = load_model(files / "model.safetensors")
    ids = [cdf_index(initial_noise(model, 3 + k).numpy(), 16) for k in range(5)]
    assert str(ids) in res.output


def test_sample_command_refuses_a_bank_of_another_encoder(files, tmp_path):
    other = make_dataset_bank(tmp_path / "other.safetensors", str(files / "ds"), dim=6, encoder="test/other")
    res = CliRunner().invoke(
        build_app(),
        [
            "sample",
            "--model",
            str(files / "model.safetensors"),
            "--bank",
            str(other),
            "--out",
            str(tmp_path / "g.png"),
        ],
    )
    assert res.exit_code == 2
    assert "model 8, bank 6" in res.output and "test/other" in res.output
    assert not (tmp_path / "g.png").exists()


def test_model_meta_is_plain_json(files):
    from safetensors import safe_open

    with safe_open(str(files / "model.safetensors"), framework="pt") as fh:
        md = fh.metadata()
    assert md["format"] == "gmem-model" and md["format_version"] == "1"
    cfg = json.loads(md["config"])
    assert cfg["id"] == "test-tiny" and cfg["encoder"] == "test/bars" and cfg["default_sampler"] == "heun"


def test_model_config_records_the_pixel_normalisation(files):
    # CONTRACT.md section 5: the config names the space "and its normalisation".
    norm = read_model_meta(files / "model.safetensors")["normalization"]
    assert norm["space"] == "pixel" and norm["range"] == [-1.0, 1.0]
    assert "127.5" in norm["encode"] and "127.5" in norm["decode"]


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_generate_refuses_a_non_finite_cfg_scale(files, scale):
    from shared.errors import InvalidInput

    with pytest.raises(InvalidInput, match="finite"):
        generate(load_model(files / "model.safetensors"), unit(1), [0], steps=1, cfg_scale=scale)


def test_sample_snippet_ids_have_an_environment_variable(files, tmp_path):
    # CONTRACT.md section 3: every setting has a GMEM_* variable; the flag overrides it.
    args = [
        "sample",
        "--model",
        str(files / "model.safetensors"),
        "--bank",
        str(files / "bank.safetensors"),
        "--n",
        "2",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "g.png"),
    ]
    res = CliRunner().invoke(build_app(), args, env={"GMEM_SNIPPET_IDS": "3 5"})
    assert res.exit_code == 0, res.output
    assert "[3, 5]" in res.output
    res = CliRunner().invoke(build_app(), [*args, "--snippet-ids", "4"], env={"GMEM_SNIPPET_IDS": "3 5"})
    assert res.exit_code == 0, res.output
    assert "[4, 4]" in res.output
