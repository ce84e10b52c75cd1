"""Fixtures of the HTTP API tests: `api` is an app on SQLite or PostgreSQL; `make_api` builds more."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.harness import Api

API_BACKENDS = ["sqlite", "postgres"]
MakeApi = Callable[..., Api]


@pytest.fixture(params=API_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def make_api(database_url: str, tmp_path: Path) -> Iterator[MakeApi]:
    """Builds apps on the test's database; each gets its own blob folder. All are closed afterwards."""
    made: list[Api] = []

    def make(**overrides: Any) -> Api:
        folder = tmp_path / f"app{len(made)}"
        folder.mkdir()
        api = Api(folder, database_url, **overrides)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()
