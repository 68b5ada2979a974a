"""Training: the loss falls, resume is exact, bad input stops before any work is lost."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from shared.errors import IncompatibleArtifacts
from tests.support.model_fixtures import TINY, make_dataset_bank, make_folder, one_torch_thread  # noqa: F401
from training.cli import build_app
from training.network.config import preset
from training.train import TrainOptions, build_config, load_train_data, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bars")
    make_folder(root / "ds")
    make_dataset_bank(root / "bank.safetensors", str(root / "ds"))
    return root


def tiny_cfg(data, meta, **kw):
    return build_config("gmem-tiny", meta, data, **{**TINY, **kw})


def quick(steps: int, **kw) -> TrainOptions:
    base = dict(
        steps=steps,
        batch_size=8,
        lr=2e-3,
        warmup=1,
        log_every=1,
        sample_every=10_000,
        ckpt_every=10_000,
        time_sampling="uniform",
    )
    return TrainOptions(**{**base, **kw})


def test_loss_decreases_over_a_few_dozen_steps(data_dir, tmp_path):
    torch.set_num_threads(1)
    data, meta = load_train_data(str(data_dir / "ds"), str(data_dir / "bank.safetensors"), "snippet")
    summary = train(
        tiny_cfg(data, meta), quick(40), data, tmp_path / "m.safetensors", tmp_path / "run", progress=False
    )
    losses = [float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / "run/log.jsonl").open()]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8  # the flow-matching loss has a high floor
    assert summary["steps"] == 40
    assert (tmp_path / "run/loss.png").stat().st_size > 0
    assert (tmp_path / "run/samples/step_0000040.png").stat().st_size > 0


def test_resume_continues_from_the_same_step_with_the_same_weights(data_dir, tmp_path):
    torch.set_num_threads(1)
    data, meta = load_train_data(str(data_dir / "ds"), str(data_dir / "bank.safetensors"), "snippet")
    cfg = tiny_cfg(data, meta)
    opts = quick(6, ckpt_every=3)
    train(cfg, opts, data, tmp_path / "straight.safetensors", tmp_path / "a", progress=False)
    ckpt = tmp_path / "a/checkpoints/step_0000003.safetensors"
    train(cfg, opts, data, tmp_path / "resumed.safetensors", tmp_path / "b", resume=ckpt, progress=False)
    straight = load_file(str(tmp_path / "straight.safetensors"))
    resumed = load_file(str(tmp_path / "resumed.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # the model file holds the EMA weights of the final checkpoint, not the raw ones
    final = load_file(str(tmp_path / "a/checkpoints/step_0000006.safetensors"))
    assert all(torch.equal(straight[k], final[f"ema.{k}"]) for k in straight)
    assert not all(torch.equal(final[f"model.{k}"], final[f"ema.{k}"]) for k in straight)


def test_resume_from_another_architecture_is_refused_before_anything_is_written(data_dir, tmp_path):
    data, meta = load_train_data(str(data_dir / "ds"), str(data_dir / "bank.safetensors"), "snippet")
    train(
        tiny_cfg(data, meta),
        quick(2, ckpt_every=2),
        data,
        tmp_path / "m.safetensors",
        tmp_path / "a",
        progress=False,
    )
    bigger = tiny_cfg(data, meta, hidden_size=48)
    out = tmp_path / "other.safetensors"
    with pytest.raises(IncompatibleArtifacts, match="hidden_size: checkpoint 32, this run 48"):
        train(
            bigger,
            quick(4),
            data,
            out,
            tmp_path / "b",
            resume=tmp_path / "a/checkpoints/step_0000002.safetensors",
            progress=False,
        )
    assert not out.exists() and not (tmp_path / "b").exists()


def run_cli(*args: str):
    return CliRunner().invoke(build_app(), ["train", *args])


def test_bank_of_another_dataset_is_refused_naming_both(data_dir, tmp_path):
    other = make_folder(tmp_path / "other", per_class=5)
    res = run_cli(
        "--dataset",
        str(other),
        "--bank",
        str(data_dir / "bank.safetensors"),
        "--out",
        str(tmp_path / "m.safetensors"),
        "--steps",
        "1",
    )
    assert res.exit_code == 2
    assert "16 rows" in res.output and "10 images" in res.output and str(other) in res.output
    assert not (tmp_path / "m.safetensors").exists()


def test_empty_and_corrupt_datasets_name_the_problem(tmp_path):
    (tmp_path / "empty/cls").mkdir(parents=True)
    res = run_cli(
        "--dataset",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "m.safetensors"),
        "--conditioning",
        "none",
    )
    assert res.exit_code == 2 and "no images found" in res.output
    bad = make_folder(tmp_path / "bad", per_class=2)
    (bad / "vertical/001.png").write_bytes(b"not a png at all")
    res = run_cli("--dataset", str(bad), "--out", str(tmp_path / "m.safetensors"), "--conditioning", "none")
    assert res.exit_code == 2 and "001.png" in res.output and "not a readable image" in res.output


def test_bad_options_are_refused_with_the_allowed_values(data_dir, tmp_path):
    res = run_cli(
        "--dataset",
        str(data_dir / "ds"),
        "--bank",
        str(data_dir / "bank.safetensors"),
        "--out",
        str(tmp_path / "m.safetensors"),
        "--mask-strategy",
        "blur",
    )
    assert res.exit_code == 2 and "zero, random or noise" in res.output
    res = run_cli("--dataset", str(data_dir / "ds"), "--out", str(tmp_path / "m.safetensors"))
    assert res.exit_code == 2 and "--bank" in res.output


def test_cli_trains_class_conditional_and_records_the_config(data_dir, tmp_path):
    from training.files.modelfile import load_model

    out = tmp_path / "cls.safetensors"
    res = run_cli(
        "--dataset",
        str(data_dir / "ds"),
        "--out",
        str(out),
        "--conditioning",
        "class",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert res.exit_code == 0, res.output
    model = load_model(out)
    assert model.config.conditioning == "class" and model.config.input_size == 16
    assert model.meta["train"]["steps"] == 2
    assert dataclasses.asdict(model.config)["num_classes"] == preset("gmem-tiny").num_classes
