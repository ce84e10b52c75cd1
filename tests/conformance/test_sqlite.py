"""SQLite-only behaviour: what a claim costs must not grow with the number of jobs waiting; writers of
several processes queue for their turn in the kernel, and never wait forever for it."""

from __future__ import annotations

import errno
import fcntl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest

import jobmill.store.sqlite
import jobmill.store.sqlite_turn
from jobmill.domain.job import JobStatus
from jobmill.domain.transitions import Transition, edge
from jobmill.errors import StoreUnavailable
from jobmill.service import JobService, SubmitRequest
from jobmill.store.base import JobClaimParams, JobListParams
from jobmill.store.sqlite import SqliteJobStore
from jobmill.store.sqlite_turn import LOCK_SUFFIX
from tests.support.processes import wait_until


def claim_cost(store: SqliteJobStore, queues: list[str], limit: int) -> int:
    """SQLite virtual-machine steps (in units of 100) of one claim: a measure of work, not of time, so
    the comparison below is exact on a busy machine too."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # 0: go on

    now = datetime.now(UTC)
    store._conn.set_progress_handler(count, 100)
    try:
        claimed = store.job_claim(JobClaimParams(queues, limit, "w", now, now, edge(Transition.CLAIM)))
    finally:
        store._conn.set_progress_handler(None, 0)
    assert len(claimed) == limit
    return steps


def test_a_claim_walks_only_the_jobs_it_takes(tmp_path: Path) -> None:
    """Regression: with `run_after <= ?` in the claim, SQLite planned it through the delayed-jobs index and
    sorted every pending job of the queues, so a claim at 20,000 pending jobs cost 13 ms, and more with
    every job waiting. One walk of the claim index per queue costs the same at any depth."""
    store = SqliteJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store)
    for queue in ("a", "b"):
        service.submit_many([SubmitRequest(kind="k", queue=queue) for _ in range(200)])
    shallow = {"one queue": claim_cost(store, ["a"], 20), "two queues": claim_cost(store, ["a", "b"], 20)}
    for _ in range(10):
        for queue in ("a", "b"):
            service.submit_many([SubmitRequest(kind="k", queue=queue) for _ in range(1000)])
    deep = {"one queue": claim_cost(store, ["a"], 20), "two queues": claim_cost(store, ["a", "b"], 20)}
    for case, steps in deep.items():
        # 50 times the jobs waiting; the old plan cost about that much more too.
        assert steps < 2 * shallow[case], (case, shallow[case], steps)
    store.close()


# -- the write turn (jobmill.store.sqlite_turn) ------------------------------------------------------------

# A process that takes the write turn of a database and holds it until its stdin closes or it is killed.
_HOLD_TURN = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""

# A process that reports whether the turn is free right now (a non-blocking try).
_TRY_TURN = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""


def _hold_turn(db: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TURN, str(db) + LOCK_SUFFIX],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _end(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    for pipe in (holder.stdin, holder.stdout):
        if pipe is not None:
            pipe.close()


def _turn_state(db: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", _TRY_TURN, str(db) + LOCK_SUFFIX], capture_output=True, text=True, check=True
    ).stdout.strip()


def _submit_in_thread(service: JobService) -> tuple[threading.Event, list[object]]:
    done = threading.Event()
    outcome: list[object] = []

    def submit() -> None:
        try:
            outcome.append(service.submit(SubmitRequest(kind="k")).job.id)
        except Exception as exc:
            outcome.append(exc)
        done.set()

    threading.Thread(target=submit, daemon=True).start()
    return done, outcome


def test_a_write_waits_for_the_turn_of_another_process_and_goes_on_when_it_ends(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = SqliteJobStore(f"sqlite:///{db}")
    service = JobService(store)
    holder = _hold_turn(db)
    try:
        done, outcome = _submit_in_thread(service)
        # SQLite itself is not locked: only the turn keeps the write waiting.
        assert not done.wait(0.3), f"the write did not wait for the turn: {outcome}"
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits, and the kernel hands the turn on
        assert done.wait(10), "the write did not go on when the turn was released"
    finally:
        _end(holder)
    (job_id,) = outcome
    assert isinstance(job_id, UUID) and service.get(job_id).status is JobStatus.PENDING
    assert _turn_state(db) == "free"  # released after the commit
    store.close()


def test_a_write_gives_up_on_a_held_turn_with_store_unavailable_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobmill.store.sqlite, "BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "jobs.db"
    store = SqliteJobStore(f"sqlite:///{db}")
    service = JobService(store)
    service.submit(SubmitRequest(kind="k"))
    holder = _hold_turn(db)
    try:
        with pytest.raises(StoreUnavailable, match="write turn"):
            service.submit(SubmitRequest(kind="k"))
        assert _turn_state(db) == "busy"
    finally:
        _end(holder)  # a holder that dies frees the turn; the waiter that gave up takes it and passes it on
    wait_until(lambda: _turn_state(db) == "free", 10, "the turn to be free after the holder died")
    job = service.submit(SubmitRequest(kind="k")).job
    assert [j.id for j in service.list_jobs(JobListParams(limit=10))].count(job.id) == 1
    assert len(service.list_jobs(JobListParams(limit=10))) == 2  # the failed submit wrote nothing
    assert _turn_state(db) == "free"
    store.close()


def test_a_database_whose_lock_file_cannot_be_made_still_takes_writes(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    (tmp_path / ("jobs.db" + LOCK_SUFFIX)).mkdir()  # not openable as a file, even by root
    store = SqliteJobStore(f"sqlite:///{db}")
    service = JobService(store)
    job = service.submit(SubmitRequest(kind="k")).job
    assert service.get(job.id).status is JobStatus.PENDING
    store.close()


def test_a_wait_for_the_turn_that_fails_is_reported_at_once_not_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "jobs.db"
    store = SqliteJobStore(f"sqlite:///{db}")
    service = JobService(store)
    holder = _hold_turn(db)
    real_flock = jobmill.store.sqlite_turn.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:  # the helper's blocking wait
            raise OSError(errno.ENOLCK, "No locks available")
        real_flock(fd, operation)

    monkeypatch.setattr(jobmill.store.sqlite_turn.fcntl, "flock", flock)
    try:
        started = time.monotonic()
        failed = r"cannot take the SQLite write turn: .*No locks available"
        with pytest.raises(StoreUnavailable, match=failed):
            service.submit(SubmitRequest(kind="k"))
        assert time.monotonic() - started < 5  # the deadline is BUSY_TIMEOUT_S = 30 s
    finally:
        _end(holder)
    monkeypatch.undo()
    assert service.submit(SubmitRequest(kind="k")).job.status is JobStatus.PENDING
    store.close()
