"""Every error the generator service raises, and its rows of the exception -> status table.

Class tree (beside the shared domain errors of ``shared.errors``, which domain code also raises)::

    GMemError (shared.errors)
    ├── InvalidInput (shared.errors)   422 (bad snippet: dimension, NaN, zero)
    │   ├── LimitExceeded              422 n or steps above the configured maxima
    │   └── CfgUnsupported             422 cfg_scale != 1 against a zero null the model was never trained on
    ├── IncompatibleArtifacts          503 the bank does not fit the model
    └── GeneratorError
        ├── BankUnreachable            503 + Retry-After: the bank cannot be reached or timed out
        ├── BankRejected               502: the bank refused a request the generator built (a bug)
        ├── ModelNotReady              503 + Retry-After: model still loading, or failed to load
        ├── Overloaded                 429 + Retry-After: too many images queued
        └── RequestTimeout             503 + Retry-After: not answered within GMEM_GENERATOR_REQUEST_TIMEOUT_S

Shared domain errors (UnknownSnippet 404, EmptyPool 409, ...) take their status from
``shared.http.errors.SHARED_ROWS``; ``STATUS`` adds this service's rows. The client's
``shared.client.Unavailable`` is what a caller of the bank catches; ``BankUnreachable`` is what this
service answers when that happened (code ``bank_unavailable``, CONTRACT.md section 6).
"""

from __future__ import annotations

from typing import Any

from shared.errors import GMemError, IncompatibleArtifacts, InvalidInput
from shared.http.errors import SHARED_ROWS, ErrorTable, error_responses


class LimitExceeded(InvalidInput):
    code = "limit_exceeded"


class CfgUnsupported(InvalidInput):
    """cfg_scale != 1 with the zero snippet as the null, on a model whose file records no trained null."""

    code = "cfg_unsupported"


class GeneratorError(GMemError):
    code = "generator_error"


class BankUnreachable(GeneratorError):
    code = "bank_unavailable"


class BankRejected(GeneratorError):
    code = "bank_rejected"


class ModelNotReady(GeneratorError):
    code = "not_ready"


class Overloaded(GeneratorError):
    code = "overloaded"


class RequestTimeout(GeneratorError):
    code = "timeout"


STATUS = ErrorTable(
    [
        *SHARED_ROWS,
        (LimitExceeded, 422),
        (CfgUnsupported, 422),
        (IncompatibleArtifacts, 503),
        (BankUnreachable, 503),
        (BankRejected, 502),
        (ModelNotReady, 503),
        (Overloaded, 429),
        (RequestTimeout, 503),
    ]
)

_DESCRIPTIONS = {
    404: "unknown snippet id",
    409: "empty pool",
    413: "body too large",
    422: "invalid request or over a limit",
    429: "overloaded; see Retry-After",
    503: "bank unavailable, not ready or timed out; see Retry-After",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a generator route can answer."""
    return error_responses(_DESCRIPTIONS, *statuses)


# Declared on POST /generate so the OpenAPI schema lists every error a client can get.
ERROR_RESPONSES = responses(404, 409, 413, 422, 429, 503)
