"""`jobmill serve` as a real process for end-to-end tests, with a key created through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.processes import REPO, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JOBMILL_DATABASE_URL": database_url,
        "JOBMILL_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "JOBMILL_WORKDIR_ROOT": str(tmp_path / "work"),
        "JOBMILL_SECRET_KEY": "e2e-secret-key-for-signing-urls-0123456789",
        **extra,
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobmill.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_key(env: dict[str, str], tenant: str, role: str) -> str:
    result = cli(env, "keys", "create", "--tenant", tenant, "--role", role)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


class ServeProcess:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobmill.cli.main", "serve", "--port", str(self.port), *args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.log_path = log_path

    def wait_ready(self, timeout: float = 30) -> None:
        with httpx.Client(timeout=2) as client:

            def ready() -> bool:
                assert self.proc.poll() is None, self.log_path.read_text()
                try:
                    return client.get(f"{self.url}/api/v1/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, timeout, "the API to be ready", interval=0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
