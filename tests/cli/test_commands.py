"""The client commands as a user runs them: `jobmill ...` subprocesses against a real service."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from jobmill.client import Client
from jobmill.domain.job import JobStatus
from tests.client.live import Live, jobmill_cli, jobmill_many, jobmill_popen
from tests.support.processes import wait_until
from tests.support.service import free_port

pytestmark = pytest.mark.slow


def one_line(stderr: str) -> str:
    """The whole of stderr, which must be a single `jobmill: ...` line without a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobmill: ") and "Traceback" not in stderr, stderr
    return lines[0]


def parked() -> str:
    return f"parked-{uuid.uuid4().hex[:8]}"


def test_submit_wait_prints_the_result(live: Live) -> None:
    done = jobmill_cli(
        live.cli_env(),
        "submit",
        "cli.steps",
        "-p",
        "steps=4",
        "-p",
        "delay_s=0.05",
        "-p",
        "echo=hello",
        "--wait",
    )
    assert done.returncode == 0, done.stderr + live.log()
    job_id, *result = done.stdout.splitlines()
    uuid.UUID(job_id)
    assert json.loads("\n".join(result)) == {"steps": 4, "echo": "hello"}
    # Not a terminal: one line per change on stderr, the stage and the percent advancing.
    assert "running · work · 50% · step 2 of 4" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "completed · work · 100% · step 4 of 4"


def test_submit_wait_failed_job_exits_1(live: Live) -> None:
    failed = jobmill_cli(live.cli_env(), "submit", "cli.fail", "--param", "why=on purpose", "--wait")
    assert failed.returncode == 1
    job_id = failed.stdout.strip()
    last = failed.stderr.strip().splitlines()[-1]
    assert last == f"jobmill: job {job_id} failed: RuntimeError: on purpose"
    assert "Traceback" not in failed.stderr


def test_submit_wait_cancelled_elsewhere_exits_3(live: Live, client: Client) -> None:
    waiting = jobmill_popen(live.cli_env(), "submit", "cli.sleep", "-p", "seconds=30", "--wait")
    try:
        assert waiting.stdout is not None
        job_id = waiting.stdout.readline().strip()
        wait_until(lambda: client.get(job_id).status is JobStatus.RUNNING, 15, "the job to run", 0.05)
        client.cancel(job_id)  # another client
        _, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
        waiting.wait()
    assert waiting.returncode == 3, err
    assert err.strip().splitlines()[-1] == f"jobmill: job {job_id} was cancelled"


def test_submit_uploads_and_downloads(live: Live, client: Client, tmp_path: Path) -> None:
    source = tmp_path / "words.txt"
    source.write_text("quiet words\n")
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"from_file": [1, 2], "n": 1}))
    done = jobmill_cli(
        live.cli_env(),
        "submit",
        "cli.upper",
        "--file",
        f"source={source}",
        "--params-json",
        str(params),
        "--param",
        "n=5",
        "--param",
        'quoted="5"',
        "--param",
        "flag=true",
        "--param",
        "text=not json",
        "--wait",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "upper.txt").read_text() == "QUIET WORDS\n"
    assert f"saved {tmp_path / 'out' / 'upper.txt'} (12 bytes)" in done.stderr
    shown = client.get(done.stdout.split()[0]).raw
    assert shown["params"] == {"from_file": [1, 2], "n": 5, "quoted": "5", "flag": True, "text": "not json"}
    assert shown["inputs"][0]["filename"] == "words.txt" and shown["status"] == "completed"


def test_status_jobs_cancel(live: Live, client: Client) -> None:
    queue = parked()
    first = client.submit("cli.steps", {"steps": 2}, queue=queue)
    second = client.submit("cli.steps", queue=queue, priority=3)
    env = live.cli_env()

    status, table = jobmill_many(
        (env, ("status", str(first.id))), (env, ("jobs", "--queue", queue, "--status", "pending"))
    )
    assert status.returncode == 0, status.stderr
    lines = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert lines["job"] == str(first.id) and lines["kind"] == f"cli.steps (queue {queue}, priority 0)"
    assert lines["status"] == f"pending · position 2 in queue {queue}"  # behind the priority-3 job
    assert lines["params"] == '{"steps": 2}' and lines["attempts"] == "0 of 1"

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "STAGE/PROGRESS", "POS", "AGE"]
    assert [row.split()[:4] for row in rows] == [
        [str(second.id), "cli.steps", "pending", "1"],
        [str(first.id), "cli.steps", "pending", "2"],
    ]

    cancelled = jobmill_cli(env, "cancel", str(first.id))
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"cancelled {first.id}")
    assert client.get(first.id).status is JobStatus.CANCELLED
    again = jobmill_cli(env, "cancel", str(first.id))
    assert again.returncode == 1
    assert one_line(again.stderr) == (
        f"jobmill: cannot cancel job {first.id}: it is cancelled (HTTP 409 invalid_state)"
    )


def read_until(process: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
    """What the process printed until `text` appeared (read without blocking past `timeout`)."""
    assert process.stdout is not None
    fd, seen, deadline = process.stdout.fileno(), b"", time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, f"no {text!r} in {seen.decode(errors='replace')!r}"
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the process ended without printing {text!r}: {seen!r}"
            seen += chunk
    return seen.decode()


def test_tail_follows_a_job_and_the_job_list(live: Live, client: Client) -> None:
    job = client.submit("cli.sleep", {"seconds": 30})
    one = jobmill_popen(live.cli_env(), "tail", str(job.id))
    every = jobmill_popen(live.cli_env(), "tail", "--interval", "0.2")
    try:
        first = read_until(one, "\n")
        assert first.split(" ", 1)[1].startswith(("pending", "running · sleeping")), first
        read_until(every, f"{job.id} cli.sleep running · sleeping")
        client.cancel(job.id)
        rest, err = one.communicate(timeout=30)
        assert one.returncode == 3, err  # as submit --wait: 3 for a cancelled job
        assert rest.splitlines()[-1].split(" ", 1)[1].startswith("cancelled · sleeping")
        read_until(every, f"{job.id} cli.sleep cancelled")
        every.send_signal(signal.SIGINT)  # the way out of `tail` without an id
        assert every.wait(10) == 130
    finally:
        for process in (one, every):
            process.kill()
            process.communicate()


def test_errors_are_one_line(live: Live) -> None:
    env = live.cli_env()
    bad_key, no_key, away, debug, novalue, kind = jobmill_many(
        (live.cli_env("jm_000000000000_" + "x" * 43), ("jobs",)),
        ({**env, "JOBMILL_API_KEY": ""}, ("jobs",)),
        (env, ("status", str(uuid.uuid4()), "--url", f"http://127.0.0.1:{free_port()}")),
        (env, ("jobs", "--url", f"http://127.0.0.1:{free_port()}", "--debug")),
        (env, ("submit", "cli.steps", "--param", "novalue")),
        (env, ("submit", "no.such.kind")),
    )
    assert bad_key.returncode == 1
    assert one_line(bad_key.stderr).startswith("jobmill: the API key was refused: invalid or revoked API key")
    assert no_key.returncode == 2 and "no API key" in one_line(no_key.stderr)
    assert away.returncode == 1 and one_line(away.stderr).startswith("jobmill: cannot reach jobmill at")
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug: the whole story
    assert debug.stderr.strip().splitlines()[-1].startswith("jobmill.client._errors.ConnectionFailed: cannot")
    assert novalue.returncode == 2
    assert one_line(novalue.stderr) == "jobmill: --param wants key=value, not 'novalue'"
    assert kind.returncode == 1
    assert one_line(kind.stderr) == (
        "jobmill: no handler is registered for job kind 'no.such.kind' (HTTP 422 unknown_kind)"
    )
