"""The machinery of the worker-fault scenarios: real processes, a scratch database, /proc scans, an API probe.

Nothing here is mocked: workers are `jobmill worker` processes, the API is `jobmill serve --no-worker`,
PostgreSQL is the real server (restarted with pg_ctlcluster), and orphans are looked for in /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from chaos.handlers import EXEC_URL_ENV, EXECUTIONS_DDL, MARK_ENV, RUN_ID_ENV

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("JOBMILL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_CLUSTER = os.environ.get("CHAOS_PG_CLUSTER", "15 main")
TERMINAL = ("completed", "failed", "cancelled")
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- PostgreSQL -----------------------------------------------------------------------------------------


def pg_available(url: str = ADMIN_URL) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


class ScratchPg:
    """A database of its own for one scenario, created from the admin URL and dropped afterwards."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"jobmill_chaos_{os.getpid()}_{secrets.token_hex(3)}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path="/" + self.name))

    def create(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"'.encode())

    def drop(self) -> None:
        wait_for(pg_available, 60, "PostgreSQL to accept connections before dropping the chaos database")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'.encode())


def pg_ctl(action: str) -> None:
    """Stop or start the local cluster (root, Debian's pg_ctlcluster), as an operator would."""
    version, cluster = PG_CLUSTER.split()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def pg_ensure_running() -> None:
    """Whatever happened before: PostgreSQL is started and accepts connections when this returns."""
    if not pg_available():
        with contextlib.suppress(subprocess.SubprocessError):
            pg_ctl("start")
    wait_for(pg_available, 60, "PostgreSQL to accept connections", interval=0.1)


def create_executions_table(exec_url: str) -> None:
    with contextlib.closing(sqlite3.connect(exec_url.removeprefix("sqlite:///"))) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(EXECUTIONS_DDL)
        conn.commit()


# -- processes -------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def marked_processes(run_id: str, worker_pid: int | None = None) -> list[int]:
    """Live processes whose environment carries this run's mark (of one worker, or of any)."""
    needle = f"{MARK_ENV}={run_id}:{'' if worker_pid is None else f'{worker_pid}'}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle) and (worker_pid is None or var == needle):
                fields = _stat(int(entry))
                if fields is not None and fields[0] not in ("Z", "X"):
                    found.append(int(entry))
                break
    return found


def kill_marked(run_id: str) -> None:
    for pid in marked_processes(run_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def jobmill_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobmill.cli.main", *args]


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    started_at: float
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class Fleet:
    """`jobmill worker` processes of one scenario: started, SIGKILLed, replaced, stopped."""

    def __init__(self, env: dict[str, str], run_dir: Path, concurrency: int) -> None:
        self.env = env
        self.run_dir = run_dir
        self.concurrency = concurrency
        self.workers: list[Worker] = []
        self.started = 0
        self.kills: list[tuple[float, int]] = []  # (time.time(), pid)
        self.unexpected_exits: list[tuple[int, int | None]] = []  # (pid, exit code)

    def start(self) -> Worker:
        log_path = self.run_dir / f"worker-{self.started}.log"
        self.started += 1
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                jobmill_argv("worker", "--app", "chaos.handlers", "--concurrency", str(self.concurrency)),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, time.time(), log_path)
        self.workers.append(worker)
        return worker

    def kill_random(self, rng: random.Random, busy: set[int]) -> int | None:
        """SIGKILL a random live worker, preferably one of the `busy` pids (holding running jobs)."""
        live = [w for w in self.workers if w.proc.poll() is None]
        live = [w for w in live if w.pid in busy] or live
        if not live:
            return None
        victim = rng.choice(live)
        victim.proc.send_signal(signal.SIGKILL)
        self.kills.append((time.time(), victim.pid))
        victim.proc.wait(10)
        self.workers.remove(victim)
        return victim.pid

    def replace_exited(self) -> None:
        """A worker that died without being killed is a finding; it is replaced so the run goes on."""
        for worker in list(self.workers):
            code = worker.proc.poll()
            if code is not None:
                self.unexpected_exits.append((worker.pid, code))
                self.workers.remove(worker)
                self.start()

    def terminate_all(self, timeout: float) -> dict[int, int | None]:
        """SIGTERM to every worker at once; their exit codes (None: still running after `timeout`)."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[int, int | None] = {}
        for worker in self.workers:
            try:
                codes[worker.pid] = worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[worker.pid] = None
        return codes

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)
        self.workers.clear()


def worker_env(
    database_url: str, run_dir: Path, run_id: str, exec_url: str, **settings: str
) -> dict[str, str]:
    env = {
        **os.environ,
        # The repository (for chaos.handlers) and whatever the caller already had on the path.
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JOBMILL_DATABASE_URL": database_url,
        "JOBMILL_STORAGE_URL": f"file://{run_dir / 'blobs'}",
        "JOBMILL_WORKDIR_ROOT": str(run_dir / "work"),
        "JOBMILL_SECRET_KEY": "chaos-secret-key-for-signing-urls-0123456789",
        EXEC_URL_ENV: exec_url,
        RUN_ID_ENV: run_id,
    }
    env.update({f"JOBMILL_{k.upper()}": v for k, v in settings.items()})
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """`jobmill serve --no-worker --app chaos.handlers` and an admin key made through the CLI."""

    def __init__(self, env: dict[str, str], run_dir: Path) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = run_dir / "serve.log"
        result = subprocess.run(
            jobmill_argv("keys", "create", "--tenant", "default", "--role", "admin"),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"jobmill keys create failed: {result.stderr}")
        self.key = result.stdout.strip().splitlines()[-1]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                jobmill_argv("serve", "--no-worker", "--app", "chaos.handlers", "--port", str(self.port)),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        with httpx.Client(timeout=2) as client:

            def ready() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jobmill serve exited: {self.log_path.read_text()[-2000:]}")
                try:
                    return client.get(f"{self.url}/api/v1/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout, "the API to be ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class ProbeLog:
    readyz: list[tuple[float, str]] = field(default_factory=list)  # transitions: (time, "200"/"503"/...)
    readyz_polls: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # status code (or error) of the job reads
    server_errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, path, code)


class ApiProbe:
    """Polls /readyz (20 Hz) and reads jobs and queues through the API (a few a second) in a thread."""

    READYZ_EVERY_S = 0.05
    READ_EVERY_S = 0.25
    # A readiness probe must answer quickly (orchestrators give it ~1 s); an API request may wait for the
    # store's pool a while (ACQUIRE_TIMEOUT_S) before it answers 503.
    READYZ_TIMEOUT_S = 2.0
    READ_TIMEOUT_S = 15.0

    def __init__(self, server: ApiServer, job_ids: Callable[[], list[str]]) -> None:
        self.server = server
        self.job_ids = job_ids
        self.log = ProbeLog()
        self._stop = threading.Event()
        # Two threads: a job read waiting on the pool must not hold up the readiness polls.
        self._threads = [
            threading.Thread(target=self._poll_readyz, name="chaos-readyz", daemon=True),
            threading.Thread(target=self._read_jobs, name="chaos-reads", daemon=True),
        ]

    def __enter__(self) -> ApiProbe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.READ_TIMEOUT_S + 5)

    def _get(self, client: httpx.Client, path: str, timeout: float) -> str:
        try:
            code = str(client.get(path, timeout=timeout).status_code)
        except httpx.TimeoutException:
            code = "timeout"
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        if code.startswith("5") or not code.isdigit():
            self.log.server_errors.append((time.time(), path, code))
        return code

    def _poll_readyz(self) -> None:
        with httpx.Client(base_url=self.server.url) as client:
            while not self._stop.is_set():
                code = self._get(client, "/api/v1/readyz", self.READYZ_TIMEOUT_S)
                self.log.readyz_polls += 1
                if not self.log.readyz or self.log.readyz[-1][1] != code:
                    self.log.readyz.append((time.time(), code))
                self._stop.wait(self.READYZ_EVERY_S)

    def _read_jobs(self) -> None:
        headers = {"Authorization": f"Bearer {self.server.key}"}
        rng = random.Random(7)
        with httpx.Client(base_url=self.server.url, headers=headers) as client:
            while not self._stop.is_set():
                ids = self.job_ids()
                path = f"/api/v1/jobs/{rng.choice(ids)}" if ids and rng.random() < 0.7 else "/api/v1/queues"
                self.log.requests[self._get(client, path, self.READ_TIMEOUT_S)] += 1
                self._stop.wait(self.READ_EVERY_S)


# -- reading the results ---------------------------------------------------------------------------------


@dataclass
class StatusEvent:
    job_id: str
    seq: int
    at: float
    status: str
    data: dict[str, Any] | None


@dataclass
class Execution:
    job_id: str
    attempt: int
    pid: int
    started_at: float
    finished_at: float | None
    outcome: str | None


class Inspector:
    """Reads the job store's tables (and the executions table) directly, for either backend."""

    def __init__(self, database_url: str, exec_url: str) -> None:
        self.database_url = database_url
        self.exec_url = exec_url

    @contextlib.contextmanager
    def _rows(self, url: str, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        if url.startswith("sqlite:"):
            with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
                yield conn.execute(sql).fetchall()
        else:
            with psycopg.connect(url, connect_timeout=3) as conn:
                yield conn.execute(sql.encode()).fetchall()

    def status_counts(self) -> Counter[str]:
        sql = "SELECT status, count(*) FROM jobmill_jobs GROUP BY status"
        try:
            with self._rows(self.database_url, sql) as rows:
                return Counter({str(s): int(n) for s, n in rows})
        except (psycopg.Error, sqlite3.Error):
            return Counter()

    def running_owners(self) -> set[int]:
        """Pids of the workers that hold leases on running jobs now."""
        sql = "SELECT DISTINCT lease_owner FROM jobmill_jobs WHERE status = 'running'"
        try:
            with self._rows(self.database_url, sql) as rows:
                return {int(str(owner).split(":")[-2]) for (owner,) in rows if owner}
        except (psycopg.Error, sqlite3.Error):
            return set()

    def jobs(self) -> dict[str, tuple[str, int]]:
        """job id -> (status, attempts)."""
        with self._rows(self.database_url, "SELECT id, status, attempts FROM jobmill_jobs") as rows:
            return {str(i): (str(s), int(a)) for i, s, a in rows}

    def status_events(self) -> dict[str, list[StatusEvent]]:
        sql = (
            "SELECT job_id, seq, {at}, status, data FROM jobmill_events WHERE type = 'status'"
            " ORDER BY job_id, seq"
        )
        pg = not self.database_url.startswith("sqlite:")
        by_job: dict[str, list[StatusEvent]] = {}
        with self._rows(self.database_url, sql.format(at="extract(epoch FROM at)" if pg else "at")) as rows:
            for job_id, seq, at, status, data in rows:
                parsed = json.loads(data) if isinstance(data, str) else data
                by_job.setdefault(str(job_id), []).append(
                    StatusEvent(str(job_id), int(seq), float(at), str(status), parsed)
                )
        return by_job

    def executions(self) -> dict[str, list[Execution]]:
        sql = (
            "SELECT job_id, attempt, pid, started_at, finished_at, outcome FROM chaos_executions"
            " ORDER BY job_id, started_at"
        )
        by_job: dict[str, list[Execution]] = {}
        with self._rows(self.exec_url, sql) as rows:
            for job_id, attempt, pid, started, finished, outcome in rows:
                by_job.setdefault(str(job_id), []).append(
                    Execution(str(job_id), int(attempt), int(pid), float(started), finished, outcome)
                )
        return by_job


def leftover_workdirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []
