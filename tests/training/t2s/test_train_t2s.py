"""`python -m training train-t2s`: a gmem-t2s file that records its text encoder and snippet dimension."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from shared.errors import DimensionMismatch, UnknownFormat
from training.t2s.adapter import load_t2s, read_t2s_meta
from training.t2s.train import run_train_t2s

ROOT = Path(__file__).resolve().parents[3]
BANK = ROOT / "artifacts" / "mnist-5k" / "bank.safetensors"


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "train-t2s", "--bank", str(BANK), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def test_default_trains_the_embedded_text_encoder_and_the_adapter(tmp_path: Path):
    out = tmp_path / "t2s.safetensors"
    done = train_cli(
        "--dataset",
        "mnist-5k:train",
        "--out",
        str(out),
        "--steps",
        "300",
        "--text-steps",
        "60",
        "--variants",
        "1",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Chance is 0.1: held-out captions must retrieve snippets of their own digit.
    assert report["retrieval_n"] == 450 and report["retrieval_accuracy"] > 0.8, report
    with safe_open(str(out), framework="pt") as f:
        md = f.metadata()
        keys = set(f.keys())
    assert md["format"] == "gmem-t2s" and md["format_version"] == "1"
    assert md["text_encoder"] == "gmem/mnist-text" and md["snippet_dim"] == "128"
    assert md["encoder"] == "gmem/mnist-ssl" and "text_vocab" in md
    assert {"adapter.0.weight", "adapter.2.weight"} <= keys and any(k.startswith("text.") for k in keys)
    t2s = load_t2s(out)
    s, enc = t2s.snippets(["a handwritten seven", "a handwritten zero"])
    assert s.shape == (2, 128) and np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)
    assert enc.read == ["a handwritten seven", "a handwritten zero"]


def test_a_dataset_other_than_the_banks_is_refused(tmp_path: Path):
    done = train_cli("--dataset", "mnist-5k:eval", "--out", str(tmp_path / "x.safetensors"), "--steps", "1")
    assert done.returncode == 2 and "500 images" in done.stderr and "4500 rows" in done.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_clip_text_tower_trains_an_adapter_that_loads_back(
    tiny_clip_dir: Path, tiny_t5_dir: Path, tmp_path: Path
):
    out = tmp_path / "clip-t2s.safetensors"
    report = run_train_t2s(str(BANK), "mnist-5k:train", str(out), str(tiny_clip_dir), steps=30, variants=1)
    assert report["text_encoder"] == str(tiny_clip_dir)
    meta = read_t2s_meta(out)
    assert meta.text_encoder == str(tiny_clip_dir) and meta.text_dim == 32 and meta.snippet_dim == 128
    s, enc = load_t2s(out).snippets(["a handwritten seven " * 4])
    assert enc.truncated == [True] and np.isclose(np.linalg.norm(s), 1.0, atol=1e-5)
    # An encoder of another width cannot feed this adapter: said, not a shape error deep in torch.
    with pytest.raises(DimensionMismatch, match="dimension 32"):
        load_t2s(out, text_encoder=str(tiny_t5_dir))


def test_other_formats_are_refused_naming_both():
    with pytest.raises(UnknownFormat, match="gmem-bank.*gmem-t2s"):
        read_t2s_meta(BANK)
