"""A real `jobmill serve --app tests.cli.handlers` on SQLite in a temporary folder, with keys made
in-process (faster than `jobmill keys create` per key). Shared by the client and CLI tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobmill.access import AccessService
from jobmill.service import utc_now
from jobmill.store import open_store
from tests.support.processes import REPO
from tests.support.service import ServeProcess, service_env

TENANT = "acme"


@dataclass
class Live:
    url: str
    env: dict[str, str]
    database_url: str
    admin_key: str
    user_key: str
    log_path: Path

    def new_key(self, role: str = "user", tenant: str = TENANT) -> str:
        return make_key(self.database_url, tenant, role)

    def cli_env(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {**self.env, "JOBMILL_URL": self.url, "JOBMILL_API_KEY": key or self.admin_key, **extra}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_key(database_url: str, tenant: str, role: str) -> str:
    store = open_store(database_url)
    try:
        _, token = AccessService(store, utc_now).create_key(tenant, role, "test", actor="test")
    finally:
        store.close()
    return token


@contextmanager
def live_service(tmp: Path, **settings: str) -> Iterator[Live]:
    database_url = f"sqlite:///{tmp / 'jobs.db'}"
    env = service_env(database_url, tmp, **settings)
    for name in ("JOBMILL_URL", "JOBMILL_API_KEY", "JOBMILL_PORT", "JOBMILL_HOST"):
        env.pop(name, None)  # nothing from the developer's shell
    admin, user = make_key(database_url, TENANT, "admin"), make_key(database_url, TENANT, "user")
    server = ServeProcess(env, tmp / "serve.log", "--app", "tests.cli.handlers", "--concurrency", "8")
    try:
        server.wait_ready()
        yield Live(server.url, env, database_url, admin, user, server.log_path)
    finally:
        server.stop()


def jobmill_cli(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`jobmill ARGS` as a user runs it: a subprocess; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "jobmill.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


def jobmill_many(*commands: tuple[dict[str, str], tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Several independent `jobmill` commands at once (each one spends a second importing)."""
    running = [(args, jobmill_popen(env, *args)) for env, args in commands]
    done = []
    for args, process in running:
        out, err = process.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


def jobmill_popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobmill.cli.main", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
