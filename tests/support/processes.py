"""Real worker processes for the tests, and a view of process trees read straight from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, message: str = "condition", interval: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def pgid_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[2])


def live_group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are alive (zombies, already dead, are not counted)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


class WorkerProcess:
    def __init__(self, database_url: str, workdir_root: Path, log_path: Path, **settings: str) -> None:
        self.database_url = database_url
        self.workdir_root = workdir_root
        self.log_path = log_path
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> WorkerProcess:
        env = dict(os.environ)
        env.update(
            JOBMILL_DATABASE_URL=self.database_url,
            JOBMILL_WORKDIR_ROOT=str(self.workdir_root),
            PYTHONPATH=str(REPO),
        )
        env.update({f"JOBMILL_{k.upper()}": v for k, v in self.settings.items() if k != "exec_log"})
        if "exec_log" in self.settings:
            env["E2E_EXEC_LOG"] = self.settings["exec_log"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobmill.cli.main", "worker", "--app", "tests.e2e.handlers", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
