"""A throw-away PostgreSQL database per test run, and a way to empty it between tests."""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ADMIN_URL = os.environ.get("JOBMILL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("JOBMILL_REQUIRE_POSTGRES") == "1"
TABLES = ("jobmill_events", "jobmill_jobs", "jobmill_api_keys", "jobmill_audit")


def server_available() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def require_server() -> None:
    """Skip, or fail in CI (JOBMILL_REQUIRE_POSTGRES=1), when no PostgreSQL server answers."""
    if server_available():
        return
    message = f"PostgreSQL is not reachable at {ADMIN_URL}"
    if REQUIRED:
        pytest.fail(message + " and JOBMILL_REQUIRE_POSTGRES=1", pytrace=False)
    pytest.skip(message)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class ScratchDatabase:
    def __init__(self) -> None:
        self.name = f"jobmill_test_{os.getpid()}_{secrets.token_hex(4)}"
        self.url = with_database(ADMIN_URL, self.name)

    def create(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def truncate(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('jobmill_jobs') IS NOT NULL").fetchone()
            if exists and exists[0]:
                conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
