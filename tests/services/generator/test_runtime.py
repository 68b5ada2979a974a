"""The runtime in-process: batch invariance (probe and padding), snippets, model facts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.generator.runtime import (
    Runtime,
    check_bank_compatible,
    prepare_snippet,
    probe_batch_invariance,
    read_model_facts,
)
from services.generator.settings import GeneratorSettings
from shared.errors import DimensionMismatch, IncompatibleArtifacts, NonFiniteValue, ZeroVector
from training.files.modelfile import load_model, save_model
from training.network.config import preset
from training.network.model import GMemDiT


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = preset(
        "gmem-tiny",
        hidden_size=96,
        depth=2,
        num_heads=2,
        init="xavier",
        default_sampler="euler",
        default_steps=3,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, GMemDiT(cfg), cfg, {"id": "tiny-runtime-test"})
    return str(path)


def runtime(path: str, **settings) -> Runtime:
    s = GeneratorSettings(model=path, torch_threads=1, **settings)
    rt = Runtime(s, read_model_facts(path))
    rt.load()
    return rt


def test_model_facts_come_from_the_header(tiny_model_file):
    facts = read_model_facts(tiny_model_file)
    assert (facts.id, facts.feature_dim, facts.encoder, facts.resolution, facts.channels) == (
        "tiny-runtime-test",
        128,
        "gmem/mnist-ssl",
        32,
        1,
    )
    check_bank_compatible(facts, 128, "gmem/mnist-ssl", "http://bank")
    with pytest.raises(IncompatibleArtifacts, match="dimension 128.*dimension 64"):
        check_bank_compatible(facts, 64, "gmem/mnist-ssl", "http://bank")


def test_padded_and_natural_batches_give_the_same_bytes_as_singles(tiny_model_file):
    rng = np.random.default_rng(0)
    snippets = rng.normal(size=(6, 128)).astype(np.float32)
    snippets /= np.linalg.norm(snippets, axis=1, keepdims=True)
    seeds = [10, 11, 12, 13, 14, 15]
    padded = runtime(tiny_model_file, micro_batch=4, max_batch_size=8)
    assert padded.micro_batch == 4
    batched = padded.forward(snippets, seeds, 2, "euler", 1.0)
    singles = [padded.forward(snippets[i : i + 1], [s], 2, "euler", 1.0)[0] for i, s in enumerate(seeds)]
    assert batched == singles
    auto = runtime(tiny_model_file, micro_batch=0, max_batch_size=8)
    if auto.micro_batch == 0:  # the probe found this machine's kernels batch-invariant
        assert "probed" in auto.invariance
        assert auto.forward(snippets, seeds, 2, "euler", 1.0) == singles
    else:
        assert "padded" in auto.invariance


class _BatchDependent(torch.nn.Module):
    """A network whose rows depend on their neighbours (what the probe must catch)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, t, c):
        out = self.inner(x, t, c)
        return out + 1e-3 * out.mean(0, keepdim=True)


def test_probe_catches_a_batch_dependent_network_and_the_runtime_pads(tiny_model_file):
    model = load_model(tiny_model_file)
    assert probe_batch_invariance(model, 4) in (True, False)
    model.net = _BatchDependent(model.net)
    assert probe_batch_invariance(model, 4) is False


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ([1.0] * 3, DimensionMismatch),
        ([0.0] * 128, ZeroVector),
        ([float("nan")] + [1.0] * 127, NonFiniteValue),
    ],
)
def test_bad_raw_snippets_are_refused(raw, error):
    with pytest.raises(error):
        prepare_snippet(raw, 128)


def test_raw_snippet_is_unit_norm():
    out = prepare_snippet([3.0] + [0.0] * 127, 128)
    assert out.shape == (1, 128) and out.dtype == np.float32 and out[0, 0] == 1.0
