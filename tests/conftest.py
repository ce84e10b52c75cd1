from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobmill.service import JobService, RetryPolicy
from jobmill.store import JobStore, open_store
from tests.support.clock import FakeClock
from tests.support.postgres import ScratchDatabase, require_server

BACKENDS = ["sqlite", "memory", "postgres"]
StoreFactory = Callable[[], JobStore]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[ScratchDatabase]:
    """One fresh database for the whole run, migrated once, dropped at the end."""
    require_server()
    db = ScratchDatabase()
    db.create()
    open_store(db.url, migrate=True).close()
    yield db
    db.drop()


@pytest.fixture
def pg_url(pg_database: ScratchDatabase) -> str:
    pg_database.truncate()
    return pg_database.url


def _factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    elif backend == "memory":
        url = "memory://"
    else:
        url = request.getfixturevalue("pg_url")
    opened: list[JobStore] = []

    def make() -> JobStore:
        store = open_store(url)
        opened.append(store)
        return store

    request.addfinalizer(lambda: [s.close() for s in opened])
    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens stores on one database of the chosen backend (several stores = several connections)."""
    return _factory(backend, request, tmp_path)


@pytest.fixture
def store(store_factory: StoreFactory) -> JobStore:
    return store_factory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(store: JobStore, clock: FakeClock) -> JobService:
    return JobService(store, clock=clock, lease_s=30, retry=RetryPolicy(base_s=10, max_s=100))
