"""Fixtures shared across the test tree: the session stack (redis + bank + generator) as real processes.

Session-scoped and started only when a test asks for ``stack`` or ``gen_url`` (the generator's tests
and the client's, tests/shared/test_client.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import Stack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis + bank + generator on the embedded default artifacts, sharing one event stream."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    # Read back from the stack: a test may have replaced a process (e.g. restarted redis).
    for p in (running.generator, running.bank, running.redis):
        p.stop()


@pytest.fixture()
def gen_url(stack: Stack) -> str:
    return stack.generator.url
