"""The worker as users run it: `jobmill worker` processes, real signals, process trees checked in /proc."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

from jobmill.domain.job import Job, JobStatus
from jobmill.handlers import default_registry
from jobmill.service import JobService, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.store.base import Completion, JobListParams, Lease
from jobmill.worker.worker import workdir_name
from tests.e2e import handlers as _handlers  # noqa: F401  (registers the e2e kinds for validation)
from tests.support.processes import WorkerProcess, live_group_members, pgid_of, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    store = open_store(database_url)
    yield store
    store.close()


@pytest.fixture
def service(store: JobStore) -> JobService:
    return JobService(store, registry=default_registry)


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    path = tmp_path / "executions.log"
    path.touch()
    return path


@pytest.fixture
def workdir_root(tmp_path: Path) -> Path:
    return tmp_path / "work"


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(
    database_url: str, tmp_path: Path, workdir_root: Path, exec_log: Path
) -> Iterator[WorkerFactory]:
    started: list[WorkerProcess] = []

    def start(*args: str, **settings: str) -> WorkerProcess:
        settings.setdefault("exec_log", str(exec_log))
        worker = WorkerProcess(database_url, workdir_root, tmp_path / f"worker{len(started)}.log", **settings)
        started.append(worker.start(*args))
        return worker

    yield start
    for worker in started:
        worker.stop()


def executions(exec_log: Path) -> Counter[UUID]:
    return Counter(UUID(line.split()[0]) for line in exec_log.read_text().splitlines() if line.strip())


def tree_pgid(service: JobService, job_id: UUID) -> int:
    """The process group of the job's `sh` tree, from the pid the handler reported in its message."""

    def reported() -> int | None:
        message = service.get(job_id).message or ""
        return int(message.removeprefix("pid=")) if message.startswith("pid=") else None

    pid = wait_until(reported, 20, "the handler to report its child pid")
    pgid = pgid_of(pid)
    assert pgid is not None, "the child died before it could be observed"
    wait_until(lambda: len(live_group_members(pgid)) >= 3, 10, "sh and both sleeps to run")
    return pgid


def status_of(service: JobService, job_id: UUID) -> JobStatus:
    return service.get(job_id).status


@pytest.mark.parametrize("kind", ["e2e.tree", "e2e.sync_tree"])
def test_cancel_kills_the_whole_tree(
    kind: str, service: JobService, start_worker: WorkerFactory, workdir_root: Path
) -> None:
    # The poll interval is made long on both backends, so that only the fast paths can explain a quick
    # pickup and a quick kill: NOTIFY on PostgreSQL, the data_version change signal on SQLite.
    poll_s = 5.0
    start_worker(poll_interval_s=str(poll_s))
    job = service.submit(SubmitRequest(kind=kind)).job
    pgid = tree_pgid(service, job.id)
    assert (workdir_root / workdir_name(job.id, 1)).is_dir()
    cancelled_at = time.monotonic()
    assert service.cancel(job.id).status is JobStatus.CANCELLING
    wait_until(lambda: not live_group_members(pgid), 2.0, "every process of the tree to die", interval=0.002)
    tree_dead_s = time.monotonic() - cancelled_at
    wait_until(lambda: status_of(service, job.id) is JobStatus.CANCELLED, 5, "status cancelled")
    assert not live_group_members(pgid)
    assert not (workdir_root / workdir_name(job.id, 1)).exists()
    print(f"{kind}: cancel -> tree dead in {tree_dead_s * 1000:.0f} ms")
    # Learning of the cancel (<= 100 ms) plus SIGTERM and reaping, with room for a loaded 2-core machine.
    assert tree_dead_s < 0.5


def test_cancel_kills_a_process_isolated_handler(service: JobService, start_worker: WorkerFactory) -> None:
    start_worker()
    job = service.submit(SubmitRequest(kind="e2e.isolated_spin")).job

    def child_pid() -> int | None:
        message = service.get(job.id).message or ""
        return int(message.removeprefix("pid=")) if message.startswith("pid=") else None

    pid = wait_until(child_pid, 20, "the isolated handler to start")
    pgid = pgid_of(pid)
    assert pgid is not None
    service.cancel(job.id)
    wait_until(lambda: not live_group_members(pgid), 2.0, "the handler process to die")
    wait_until(lambda: status_of(service, job.id) is JobStatus.CANCELLED, 5, "status cancelled")


def test_timeout_kills_the_tree_and_fails(
    service: JobService, start_worker: WorkerFactory, workdir_root: Path
) -> None:
    start_worker()
    job = service.submit(SubmitRequest(kind="e2e.tree_timeout", max_attempts=3)).job
    pgid = tree_pgid(service, job.id)
    final = wait_until(
        lambda: (j := service.get(job.id)).status is JobStatus.FAILED and j, 5, "the timeout to fail the job"
    )
    assert not live_group_members(pgid)
    assert final.error is not None and final.error["type"] == "timeout"
    assert final.attempts == 1  # a timeout is not retried
    assert not (workdir_root / workdir_name(job.id, 1)).exists()


def test_sigkilled_worker_job_is_taken_over_once(
    service: JobService, start_worker: WorkerFactory, exec_log: Path, workdir_root: Path
) -> None:
    first = start_worker(lease_s="1.5")
    job = service.submit(SubmitRequest(kind="e2e.slow_first")).job
    pgid = tree_pgid(service, job.id)
    running: Job = service.get(job.id)
    assert running.status is JobStatus.RUNNING and running.lease_token is not None
    first.signal(signal.SIGKILL)
    first.wait(10)
    # The shim dies with its worker and takes the job's process tree with it.
    wait_until(lambda: not live_group_members(pgid), 2.0, "the dead worker's child processes to die")
    start_worker(lease_s="1.5")
    done = wait_until(
        lambda: (j := service.get(job.id)).status is JobStatus.COMPLETED and j,
        20,
        "the second worker to finish",
    )
    assert done.attempts == 2 and done.result == {"attempt": 2}
    assert executions(exec_log)[job.id] == 2  # ran twice, and the first run's lease expired
    # The dead worker's late writes, made with its old lease, are refused.
    stale = Lease(job.id, running.lease_token)
    assert service.complete_many([Completion(stale, {"attempt": "stale"})]) == []
    assert not service.set_progress(stale, "stale", 50, None)
    assert service.get(job.id).result == {"attempt": 2}
    # The dead attempt's workdir is removed by the attempt that replaced it, which removes its own too.
    assert not (workdir_root / workdir_name(job.id, 1)).exists()
    assert not (workdir_root / workdir_name(job.id, 2)).exists()


def test_four_workers_drain_2000_jobs_exactly_once(
    service: JobService, start_worker: WorkerFactory, exec_log: Path
) -> None:
    ids = [
        r.job.id
        for r in service.submit_many([SubmitRequest(kind="e2e.record", params={"n": i}) for i in range(2000)])
    ]
    started = time.monotonic()
    workers = [start_worker("--concurrency", "8", "--burst") for _ in range(4)]
    for worker in workers:
        assert worker.wait(90) == 0, worker.log()
    elapsed = time.monotonic() - started
    completed = service.list_jobs(JobListParams(statuses=[JobStatus.COMPLETED], limit=5000))
    assert {j.id for j in completed} == set(ids)
    assert all(j.attempts == 1 for j in completed)
    counts = executions(exec_log)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    pids = {line.split()[2] for line in exec_log.read_text().splitlines()}
    print(f"4 workers drained 2000 jobs in {elapsed:.2f}s (incl. start-up); {len(pids)} workers took part")


def test_sigterm_finishes_a_short_job_and_stops_claiming(
    service: JobService, start_worker: WorkerFactory
) -> None:
    worker = start_worker(shutdown_grace_s="10")
    job = service.submit(SubmitRequest(kind="e2e.sleep", params={"seconds": 1.0})).job
    wait_until(lambda: status_of(service, job.id) is JobStatus.RUNNING, 20, "the job to start")
    worker.signal(signal.SIGTERM)
    late = service.submit(SubmitRequest(kind="e2e.record")).job
    assert worker.wait(20) == 0, worker.log()
    assert service.get(job.id).status is JobStatus.COMPLETED
    assert service.get(late.id).status is JobStatus.PENDING and service.get(late.id).attempts == 0


def test_sigterm_hands_a_long_job_back(service: JobService, start_worker: WorkerFactory) -> None:
    worker = start_worker(shutdown_grace_s="0.5")
    job = service.submit(SubmitRequest(kind="e2e.sleep", params={"seconds": 600})).job
    wait_until(lambda: status_of(service, job.id) is JobStatus.RUNNING, 20, "the job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()
    back = service.get(job.id)
    assert back.status is JobStatus.PENDING and back.attempts == 0 and back.lease_token is None
    assert service.queue_position(job.id) == 1


def test_retries_with_backoff_then_complete(
    service: JobService, start_worker: WorkerFactory, exec_log: Path
) -> None:
    start_worker(retry_base_s="0.3")
    job = service.submit(SubmitRequest(kind="e2e.flaky", params={"fail_times": 2}, max_attempts=3)).job
    done = wait_until(lambda: (j := service.get(job.id)).status.is_terminal and j, 30, "the job to finish")
    assert done.status is JobStatus.COMPLETED and done.attempts == 3 and done.result == {"attempt": 3}
    assert executions(exec_log)[job.id] == 3
    events = service.events(job.id)
    retried_at = [e.at for e in events if e.status is JobStatus.PENDING and e.data]
    restarted_at = [e.at for e in events if e.status is JobStatus.RUNNING and e.type == "status"][1:]
    assert len(retried_at) == 2 and len(restarted_at) == 2
    gaps = [(r - f).total_seconds() for f, r in zip(retried_at, restarted_at, strict=True)]
    # Attempt n waits 0.3 * 2^(n-1) s, jittered within [half, full]: >= 0.15 s, then >= 0.3 s.
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps


def test_retries_exhausted_fail_with_the_error(service: JobService, start_worker: WorkerFactory) -> None:
    start_worker(retry_base_s="0.05")
    job = service.submit(SubmitRequest(kind="e2e.flaky", params={"fail_times": 5}, max_attempts=2)).job
    done = wait_until(lambda: (j := service.get(job.id)).status.is_terminal and j, 30, "the job to finish")
    assert done.status is JobStatus.FAILED and done.attempts == 2
    assert done.error is not None
    assert done.error["type"] == "ValueError" and done.error["message"] == "planned failure 2"
    assert "Traceback" in done.error["traceback"]
