"""Fixtures of the hostile-input tests: a real `jobmill serve` on SQLite, and an in-process app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobmill.access import AccessService
from jobmill.service import utc_now
from jobmill.store import open_store
from tests.api.harness import Api
from tests.support.service import ServeProcess, service_env

# Small limits so the hostile bodies cross them quickly; generous request rates so only the tests that
# want to meet a rate limit do.
LIMITS = {
    "JOBMILL_MAX_UPLOAD_BYTES": str(256 * 1024),
    "JOBMILL_MAX_REQUEST_BYTES": str(512 * 1024),
    "JOBMILL_MAX_JSON_BYTES": str(64 * 1024),
    "JOBMILL_MAX_UPLOAD_FILES": "5",
    "JOBMILL_UPLOAD_ALLOWED_TYPES": "image/*",
    "JOBMILL_RATE_LIMIT_PER_S": "100000",
    "JOBMILL_RATE_LIMIT_BURST": "100000",
    "JOBMILL_AUTH_RATE_LIMIT_PER_S": "100000",
    "JOBMILL_AUTH_RATE_LIMIT_BURST": "100000",
}


KEYS = [
    ("admin", "acme", "admin"),
    ("user", "acme", "user"),
    ("other_admin", "rival", "admin"),
    ("other_user", "rival", "user"),
]


@dataclass
class Server:
    """A running `jobmill serve` and keys of two tenants."""

    process: ServeProcess
    env: dict[str, str]
    root: Path
    admin: str
    user: str
    other_admin: str
    other_user: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def blob_root(self) -> Path:
        return self.root / "blobs"

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)

    def blob_files(self) -> list[Path]:
        if not self.blob_root.exists():
            return []
        return sorted(p for p in self.blob_root.rglob("*") if p.is_file())


def make_keys(database_url: str) -> dict[str, str]:
    """Keys of two tenants, made straight in the store (a CLI call per key costs a second)."""
    store = open_store(database_url, migrate=True)
    try:
        access = AccessService(store, utc_now)
        made = {}
        for name, tenant, role in KEYS:
            _, made[name] = access.create_key(tenant, role, name, "tests")
        return made
    finally:
        store.close()


def start_server(root: Path, env: dict[str, str], name: str = "serve") -> ServeProcess:
    process = ServeProcess(env, root / f"{name}.log", "--app", "tests.e2e.handlers")
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module (start-up costs about a second)."""
    root = tmp_path_factory.mktemp("serve")
    env = service_env(f"sqlite:///{root / 'jobs.db'}", root, **LIMITS)
    keys = make_keys(env["JOBMILL_DATABASE_URL"])
    process = start_server(root, env)
    try:
        yield Server(process, env, root, **keys)
    finally:
        process.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The in-process app of the API tests (checks every answer against the OpenAPI document), on SQLite."""
    made = Api(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The in-process app on SQLite and on PostgreSQL (where the database's own checks differ)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    made = Api(tmp_path, url)
    try:
        yield made
    finally:
        made.close()
