"""The `jobmill` command as a user runs it: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.postgres import ScratchDatabase, require_server
from tests.support.processes import REPO


def jobmill(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "jobmill.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def test_migrate_applies_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'jobs.db'}"
    first = jobmill("migrate", "--database-url", url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "applied: 0001_init" or first.stdout.strip() == "the schema is up to date"
    again = jobmill("migrate", env={"JOBMILL_DATABASE_URL": url})
    assert again.returncode == 0 and again.stdout.strip() == "the schema is up to date"


def test_migrate_postgres(pg_url: str) -> None:
    result = jobmill("migrate", "--database-url", pg_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the schema is up to date"


def test_bad_database_url_is_one_line(tmp_path: Path) -> None:
    result = jobmill("migrate", "--database-url", "mysql://nowhere/db")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("jobmill: unsupported database URL 'mysql://nowhere/db'")
    assert "Traceback" not in result.stderr


def test_unreachable_postgres_is_one_line() -> None:
    result = jobmill("migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_worker_with_unknown_module_is_one_line(tmp_path: Path) -> None:
    result = jobmill(
        "worker", "--app", "no.such.module", env={"JOBMILL_DATABASE_URL": f"sqlite:///{tmp_path}/j.db"}
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "jobmill: cannot import handler module 'no.such.module': No module named 'no'"
    )


def test_worker_burst_runs_the_demo_handlers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    seed = (
        "import jobmill.demo.handlers\n"
        "from jobmill import JobService, SubmitRequest, open_store, default_registry\n"
        f"s = JobService(open_store({url!r}), registry=default_registry)\n"
        "s.submit(SubmitRequest(kind='demo.transcode', params={'steps': 3, 'delay_s': 0.05}))\n"
        "s.submit(SubmitRequest(kind='demo.checksum', params={'size_bytes': 100000}))\n"
    )
    subprocess.run([sys.executable, "-c", seed], check=True, cwd=REPO, timeout=60)
    env = {
        "JOBMILL_DATABASE_URL": url,
        "JOBMILL_WORKDIR_ROOT": str(tmp_path / "work"),
        "JOBMILL_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
    }
    result = jobmill("worker", "--app", "jobmill.demo.handlers", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert "worker stopped: 2 completed, 0 failed" in result.stdout


def test_a_stopping_worker_still_runs_atexit_hooks_and_waits_for_threads(tmp_path: Path) -> None:
    """A worker that stopped cleanly skips the interpreter's teardown (os._exit), but not what a handler
    module may rely on: its atexit hooks run, and a non-daemon thread it started is waited for."""
    module = tmp_path / "exit_app.py"
    marks = tmp_path / "marks.txt"
    module.write_text(
        "import atexit, threading, time\n"
        "from jobmill import handler\n"
        f"MARKS = {str(marks)!r}\n"
        "def mark(text):\n"
        "    with open(MARKS, 'a') as f:\n"
        "        f.write(text + '\\n')\n"
        "atexit.register(mark, 'atexit hook ran')\n"
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    mark('thread finished')\n"
        "@handler('exit.start_thread')\n"
        "def start_thread(ctx):\n"
        "    threading.Thread(target=late).start()\n"
    )
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    seed = (
        "import exit_app\n"
        "from jobmill import JobService, SubmitRequest, open_store, default_registry\n"
        f"service = JobService(open_store({url!r}), registry=default_registry)\n"
        "service.submit(SubmitRequest(kind='exit.start_thread'))\n"
    )
    subprocess.run([sys.executable, "-c", seed], check=True, cwd=tmp_path, timeout=60,
                   env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})  # fmt: skip
    marks.unlink()  # the seeding process imported the module too
    env = {
        "JOBMILL_DATABASE_URL": url,
        "JOBMILL_WORKDIR_ROOT": str(tmp_path / "work"),
        "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}",
    }
    result = jobmill("worker", "--app", "exit_app", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert "worker stopped: 1 completed" in result.stdout
    assert marks.read_text().splitlines() == ["thread finished", "atexit hook ran"]


def test_worker_waits_for_an_unreachable_database_then_fails_in_one_line() -> None:
    """Regression (chaos): a worker started while PostgreSQL restarted exited at once; now it retries."""
    started = time.monotonic()
    result = jobmill(
        "worker",
        "--app",
        "jobmill.demo.handlers",
        "--db-wait",
        "1",
        "--database-url",
        "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1",
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started >= 1.0
    assert "database unavailable, retrying" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("jobmill: cannot connect to PostgreSQL")
    assert "Traceback" not in result.stderr


def test_worker_stopped_while_waiting_for_the_database_exits_0() -> None:
    """Regression (chaos): SIGTERM to a worker still starting up killed it (exit -15, default action)."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jobmill.cli.main", "worker", "--app", "jobmill.demo.handlers",
            "--db-wait", "60", "--database-url", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first "database unavailable, retrying" warning
        assert "database unavailable, retrying" in line, line
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_worker_and_serve_refuse_an_unmigrated_postgres_database_in_one_line() -> None:
    """Regression: a worker on a database without the schema retried its failing claim forever, one
    warning a second; it now says what to run."""
    require_server()
    db = ScratchDatabase()
    db.create()
    try:
        env = {"JOBMILL_DATABASE_URL": db.url}
        for command in (
            ("worker", "--app", "jobmill.demo.handlers", "--burst"),
            ("serve", "--port", "1", "--no-worker"),  # refused before it binds the port
        ):
            result = jobmill(*command, env=env)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
            assert "run `jobmill migrate` first" in result.stderr and "0001_init" in result.stderr
        assert jobmill("migrate", env=env).returncode == 0
        worker = jobmill("worker", "--app", "jobmill.demo.handlers", "--burst", env=env)
        assert worker.returncode == 0 and "worker stopped: 0 completed" in worker.stdout, worker.stderr
    finally:
        db.drop()


def test_bad_settings_are_one_line_for_every_command(tmp_path: Path) -> None:
    env = {"JOBMILL_DATABASE_URL": f"sqlite:///{tmp_path}/j.db", "JOBMILL_LEASE_S": "abc"}
    expected = "jobmill: bad settings: JOBMILL_LEASE_S must be a number > 0, not 'abc'"
    commands = [
        ("migrate",),
        ("worker", "--app", "jobmill.demo.handlers", "--burst"),
        ("serve", "--app", "jobmill.demo.handlers"),
        ("keys", "list"),
    ]
    for args in commands:
        result = jobmill(*args, env=env)
        assert (result.returncode, result.stderr.strip()) == (2, expected), args
