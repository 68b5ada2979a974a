"""Typed errors of the GMem domain, shared by every layer.

Class tree::

    GMemError
    ├── InvalidInput            bad values from a caller (4xx)
    │   ├── DimensionMismatch   a vector or array of the wrong shape
    │   ├── NonFiniteValue      NaN or infinite values
    │   ├── ZeroVector          a feature that cannot be L2-normalised
    │   ├── InvalidRank         rank outside 1..min(N, d)
    │   └── InvalidImage        bytes that are not a readable image, or too large
    ├── UnknownSnippet          an id the bank does not hold (404)
    ├── BaseSnippetImmutable    deleting a base row (409)
    ├── EmptyPool               retrieval from a pool with no snippets (409)
    ├── EncoderUnavailable      image input without an encoder configured (422)
    ├── IncompatibleArtifacts   model/bank/encoder/checkpoint that do not fit together
    ├── BankFileError           unreadable, truncated or unknown-format bank files
    │   └── UnknownFormat       a `format` / `format_version` this reader does not know
    └── ArtifactFileError       unreadable, truncated or unknown-format files other than banks
        ├── ModelFileError      a model file (training/files/modelfile.py)
        ├── CheckpointFileError a training checkpoint (training/files/checkpoint.py)
        ├── EncoderFileError    encoder weights (training/encoders/registry.py)
        └── VAEFileError        a latent decoder file (training/official/vae.py)

Services map these to status codes in one table each (see their `errors.py`).
"""

from __future__ import annotations


class GMemError(Exception):
    """Base of every error this project raises on purpose."""

    code: str = "gmem_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(GMemError):
    code = "invalid_input"


class DimensionMismatch(InvalidInput):
    code = "dimension_mismatch"


class NonFiniteValue(InvalidInput):
    code = "non_finite"


class ZeroVector(InvalidInput):
    code = "zero_vector"


class InvalidRank(InvalidInput):
    code = "invalid_rank"


class InvalidImage(InvalidInput):
    code = "invalid_image"


class UnknownSnippet(GMemError):
    code = "unknown_snippet"


class BaseSnippetImmutable(GMemError):
    code = "base_snippet_immutable"


class EmptyPool(GMemError):
    code = "empty_pool"


class EncoderUnavailable(GMemError):
    code = "encoder_unavailable"


class IncompatibleArtifacts(GMemError):
    code = "incompatible_artifacts"


class BankFileError(GMemError):
    code = "bank_file_error"


class UnknownFormat(BankFileError):
    code = "unknown_format"


class ArtifactFileError(GMemError):
    """A model, checkpoint, encoder, decoder or release file that cannot be read as what it claims to be."""

    code = "artifact_file_error"


class ModelFileError(ArtifactFileError):
    code = "model_file_error"


class CheckpointFileError(ArtifactFileError):
    code = "checkpoint_file_error"


class EncoderFileError(ArtifactFileError):
    code = "encoder_file_error"


class VAEFileError(ArtifactFileError):
    code = "vae_file_error"
