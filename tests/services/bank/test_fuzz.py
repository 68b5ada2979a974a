"""Fuzz the bank from its own OpenAPI schema (schemathesis): no 5xx, every response as documented."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.bank.app import create_app
from tests.support.banks import SyntheticBank
from tests.support.services import AUTH, settings_for

# CI runs a fixed, bounded set; GMEM_FUZZ_EXAMPLES=500 explores fresh random cases locally.
EXAMPLES = int(os.environ.get("GMEM_FUZZ_EXAMPLES", "30"))
DERANDOMIZE = "GMEM_FUZZ_EXAMPLES" not in os.environ
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /bank",
    "POST /bank/retrieve",
    "GET /bank/snippets/{id}",
    "POST /bank/snippets",
    "POST /bank/project",
    "POST /bank/interpolate",
    "POST /bank/search",
    "DELETE /bank/snippets/{id}",
]


@pytest.fixture(scope="module")
def api(bank: SyntheticBank, tmp_path_factory: pytest.TempPathFactory):
    app = create_app(settings_for(bank, tmp_path_factory.mktemp("fuzz") / "data"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.close()


def test_every_route_is_fuzzed(api) -> None:
    labels = {result.ok().label for result in api.get_all_operations()}
    assert labels == set(OPERATIONS)


# Negative cases exist only for operations that take input.
WITH_INPUT = [label for label in OPERATIONS if "{id}" in label or label.startswith("POST")]
CASES = [(label, GenerationMode.POSITIVE, True) for label in OPERATIONS]
CASES += [(label, GenerationMode.POSITIVE, False) for label in WITH_INPUT]
CASES += [(label, GenerationMode.NEGATIVE, True) for label in WITH_INPUT]


@pytest.mark.parametrize("label, mode, with_token", CASES)
def test_operation_conforms_to_its_schema(api, label: str, mode: GenerationMode, with_token: bool) -> None:
    """Valid and schema-violating requests, with and without the token: never a 5xx, never undocumented."""
    operation = next(r.ok() for r in api.get_all_operations() if r.ok().label == label)
    headers = AUTH if with_token else None

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def fuzz(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()
