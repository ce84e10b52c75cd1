"""Fixtures of the hostile-input tests: a real `jobmill serve` on SQLite, and an in-process app."""

from __future__ import annotations

import json
import os
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


# ------------------------------------------------------------------------------------------ case counts
# What `python -m chaos.hostile` reports: how many hostile requests each test module (category) really
# sent, and how many were answered with a 5xx. Counted at the transports while a test body runs (not
# while fixtures start servers), and written as JSON to the file named by this variable at the end.
COUNTS_ENV = "JOBMILL_SECURITY_COUNTS"


class CaseCounts:
    def __init__(self) -> None:
        self.current: str | None = None
        self.categories: dict[str, dict[str, int]] = {}

    def _category(self, name: str) -> dict[str, int]:
        return self.categories.setdefault(name, {"requests": 0, "5xx": 0, "unanswered": 0})

    def request(self, status: int | None) -> None:
        if self.current is None:
            return
        counts = self._category(self.current)
        counts["requests"] += 1
        if status is None:
            counts["unanswered"] += 1
        elif status >= 500:
            counts["5xx"] += 1

    def add(self, category: str, **figures: int) -> None:
        counts = self._category(category)
        for name, value in figures.items():
            counts[name] = counts.get(name, 0) + value


CASES = CaseCounts()


def _counting_sync(original: Any) -> Any:
    def handle_request(self: Any, request: httpx.Request) -> httpx.Response:
        try:
            response = original(self, request)
        except BaseException:
            CASES.request(None)
            raise
        CASES.request(response.status_code)
        return response

    return handle_request


def _counting_async(original: Any) -> Any:
    async def handle_async_request(self: Any, request: httpx.Request) -> httpx.Response:
        try:
            response = await original(self, request)
        except BaseException:
            CASES.request(None)
            raise
        CASES.request(response.status_code)
        return response

    return handle_async_request


def _counting_raw(original: Any) -> Any:
    """For the harness's raw ASGI stream and WebSocket openers, which bypass httpx's transports."""

    async def opener(*args: Any, **kwargs: Any) -> Any:
        try:
            result = await original(*args, **kwargs)
        except BaseException:
            CASES.request(None)
            raise
        status = getattr(result, "status_code", None)
        CASES.request(status if isinstance(status, int) else 200)
        return result

    return opener


@pytest.fixture(scope="session", autouse=True)
def _count_cases() -> Iterator[None]:
    patches = [
        (httpx.HTTPTransport, "handle_request", _counting_sync),
        (httpx.ASGITransport, "handle_async_request", _counting_async),
        (httpx.AsyncHTTPTransport, "handle_async_request", _counting_async),
        (Api, "_open_stream", _counting_raw),
        (Api, "_websocket", _counting_raw),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, wrap in patches:
        setattr(owner, name, wrap(getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    CASES.current = item.module.__name__.rpartition(".")[2].removeprefix("test_") if item.module else None
    try:
        return (yield)
    finally:
        CASES.current = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(COUNTS_ENV)
    if path:
        Path(path).write_text(json.dumps(CASES.categories, indent=2, sort_keys=True))
