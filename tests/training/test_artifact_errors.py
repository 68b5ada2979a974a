"""Unreadable model, checkpoint, encoder and decoder files raise their own error, not the bank's."""

from __future__ import annotations

import pytest

from shared.errors import (
    ArtifactFileError,
    BankFileError,
    CheckpointFileError,
    EncoderFileError,
    ModelFileError,
    VAEFileError,
)
from training.encoders.registry import load_encoder
from training.files.checkpoint import load_checkpoint
from training.files.modelfile import load_model
from training.official.vae import load_decoder


@pytest.mark.parametrize(
    ("load", "error"),
    [
        (load_model, ModelFileError),
        (load_checkpoint, CheckpointFileError),
        (lambda p: load_encoder("gmem/mnist-cnn", str(p)), EncoderFileError),
        (load_decoder, VAEFileError),
    ],
)
def test_a_garbage_file_names_its_kind(tmp_path, load, error):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    path.with_suffix(".json").write_text("{}")  # a checkpoint's side-car, so the weights file is what fails
    with pytest.raises(error) as info:
        load(path)
    assert isinstance(info.value, ArtifactFileError)
    assert not isinstance(info.value, BankFileError)
    assert str(path) in info.value.message
