"""Every error the bank service raises, and its rows of the exception -> status table.

Class tree (service-local classes beside the shared domain errors of ``shared.errors``)::

    GMemError (shared.errors)
    ├── TokenRejected          401: missing or wrong bearer token
    ├── MutationsDisabled      403: no GMEM_BANK_TOKEN configured
    ├── PayloadTooLarge        413: an image over GMEM_BANK_MAX_IMAGE_BYTES (bodies: the middleware)
    ├── UnsupportedMediaType   415: a body that is neither JSON nor multipart
    ├── IndexNotReady          503 + Retry-After: the base search index is still building
    ├── StorageUnavailable     503 + Retry-After: the edit log could not be written
    ├── IncompatibleArtifacts (shared.errors)
    │   └── DataDirLocked      another process holds the data dir (start-up)
    └── BankFileError (shared.errors)
        └── DataDirUnusable    the data dir cannot be read or does not belong to this factors file

Shared domain errors (InvalidInput 422, UnknownSnippet 404, ...) take their status from
``shared.http.errors.SHARED_ROWS``; ``STATUS`` adds this service's rows.
"""

from __future__ import annotations

from typing import Any

from shared.errors import BankFileError, GMemError, IncompatibleArtifacts
from shared.http.errors import SHARED_ROWS, ErrorTable, error_responses

# Seconds a client should wait before retrying a 503 (index building, storage) or 429.
RETRY_AFTER_S = 1.0


class TokenRejected(GMemError):
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="gmem-bank"'}


class MutationsDisabled(GMemError):
    code = "mutations_disabled"


class PayloadTooLarge(GMemError):
    code = "payload_too_large"


class UnsupportedMediaType(GMemError):
    code = "unsupported_media_type"


class IndexNotReady(GMemError):
    """The base index is still being built (or its build failed)."""

    code = "index_building"


class StorageUnavailable(GMemError):
    """The edit log could not be written; the mutation was not applied."""

    code = "storage_unavailable"


class DataDirLocked(IncompatibleArtifacts):
    code = "data_dir_locked"


class DataDirUnusable(BankFileError):
    code = "data_dir_unusable"


STATUS = ErrorTable(
    [
        *SHARED_ROWS,
        (IncompatibleArtifacts, 409),
        (TokenRejected, 401),
        (MutationsDisabled, 403),
        (PayloadTooLarge, 413),
        (UnsupportedMediaType, 415),
        (IndexNotReady, 503),
        (StorageUnavailable, 503),
        (GMemError, 500),
    ]
)

# OpenAPI descriptions of the statuses the bank's routes declare.
DESCRIPTIONS = {
    401: "wrong or missing bearer token",
    403: "mutations disabled (no GMEM_BANK_TOKEN)",
    404: "unknown snippet id",
    409: "conflict (base row, empty pool)",
    413: "body too large",
    415: "unsupported content type",
    422: "invalid input",
    503: "not ready / storage unavailable (Retry-After)",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a bank route can answer."""
    return error_responses(DESCRIPTIONS, *statuses)
