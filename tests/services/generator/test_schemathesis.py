"""Schemathesis over the generator's own OpenAPI schema, against the real process: no 5xx, ever.

Cases come from schemathesis' strategies for each operation and run under a
bounded hypothesis budget (the test settings cap n and steps, so each call is quick).
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_server_errors_on_any_operation(stack):
    url = stack.generator.url
    schema = schemathesis.openapi.from_dict(httpx.get(url + "/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /generate", "GET /model"}
    seen: dict[int, int] = {}

    for op in operations:

        @settings(
            max_examples=40 if op.path == "/generate" else 5,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=url, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:300]}"
            )
            if response.status_code >= 400:
                err = response.json()["error"]
                assert err["code"] and err["message"]

        check()
    assert seen.get(200, 0) > 0
