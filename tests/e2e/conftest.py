"""Fixtures of the end-to-end tests: a database of each backend, and a real API-only `jobmill serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import ServeProcess


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path) -> Iterator[ServeProcess]:
    """`jobmill serve --no-worker` with the e2e handlers; each test module defines its `env`."""
    # An API-only node still imports the handlers: it validates kinds and knows their queues.
    server = ServeProcess(env, tmp_path / "serve.log", "--no-worker", "--app", "tests.e2e.handlers")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
