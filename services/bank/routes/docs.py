"""OpenAPI text shared by the bank's routes: the two accepted bodies of a feature input, retrieve's doc."""

from __future__ import annotations

from typing import Any

from shared.schemas.bank import MAX_NAME, FeatureInput

FEATURE_OR_IMAGE: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": FeatureInput.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG/JPEG/WebP file"},
                        "name": {"type": "string", "maxLength": MAX_NAME},
                    },
                }
            },
        },
    }
}

RETRIEVE_DOC = """Snippets for a batch, by noise-CDF index or by id.

* `{"z": [float]}`: one flattened noise tensor -> one snippet, index
  `min(floor(Phi(sum(z)/sqrt(numel z)) * n), n - 1)` into the pool (paper 4.3).
* `{"z": [[float], ...]}`: a batch, one index per row.
* `{"indices": [int]}`: snippet ids; `pool` then only checks each id is in that pool.

Pools: `base` (ids 0..N0-1), `user` (live run-time ids, ascending), `all` (base then user).
Returned `indices` are snippet ids. `version` and `pool_size` belong to the same
bank version as the snippets. `encoding: b64f32` returns base64 of row-major
float32 little-endian `[k, feature_dim]`.
"""
