"""How an in-process worker records what its handlers returned, batch by batch."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobmill.domain.job import Job, JobStatus
from jobmill.errors import StoreUnavailable
from jobmill.handlers import HandlerRegistry, HandlerSpec
from jobmill.service import JobService, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.worker.context import JobContext
from jobmill.worker.worker import Worker, WorkerConfig, WorkerStats, workdir_name


async def returns_params_value(ctx: JobContext) -> Any:
    value = ctx.params["value"]
    return {"not json": {1, 2}} if value == "set" else (math.nan if value == "nan" else value)


@pytest.mark.parametrize("bad", ["set", "nan"])
def test_a_result_that_is_not_json_fails_its_own_job_only(tmp_path: Path, bad: str) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.echo", returns_params_value, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    good = [service.submit(SubmitRequest(kind="t.echo", params={"value": i})).job for i in range(20)]
    broken = service.submit(SubmitRequest(kind="t.echo", params={"value": bad})).job
    # One worker, every job in one claim and so in one completion batch.
    worker = Worker(
        service,
        registry,
        WorkerConfig(queues=["q"], concurrency=50, burst=True, workdir_root=tmp_path / "work"),
    )
    stats = asyncio.run(worker.run())
    assert stats.completed == 20 and stats.failed == 1
    for job in good:
        done = service.get(job.id)
        assert done.status is JobStatus.COMPLETED and done.result == job.params["value"]
    failed = service.get(broken.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "bad_result"
    store.close()


async def returns_one(ctx: JobContext) -> int:
    return 1


def test_a_batch_write_is_retried_while_the_database_is_briefly_away(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.one", returns_one, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    jobs = [service.submit(SubmitRequest(kind="t.one")).job for _ in range(5)]
    real = service.complete_many
    failures = iter([StoreUnavailable("the database restarts"), StoreUnavailable("still restarting")])

    def flaky(completions: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(completions)

    service.complete_many = flaky  # type: ignore[method-assign]
    worker = Worker(
        service,
        registry,
        WorkerConfig(queues=["q"], concurrency=10, burst=True, workdir_root=tmp_path / "work"),
    )
    stats = asyncio.run(worker.run())
    assert stats.completed == 5
    assert all(service.get(job.id).status is JobStatus.COMPLETED for job in jobs)
    store.close()


def test_a_starting_worker_removes_workdirs_no_live_attempt_owns(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.one", returns_one, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    finished = service.submit(SubmitRequest(kind="t.one")).job
    running = service.submit(SubmitRequest(kind="t.one", queue="elsewhere")).job
    (claimed,) = service.claim("another-worker", ["elsewhere"], 1)
    assert claimed.id == running.id
    root = tmp_path / "work"
    leftovers = [root / workdir_name(finished.id, 1), root / workdir_name(uuid.uuid4(), 3)]
    stale_attempt = root / workdir_name(running.id, 7)  # not the attempt that runs now
    live = root / workdir_name(running.id, claimed.attempts)  # another worker's, on this host
    unrelated = root / "notes"
    for folder in (*leftovers, stale_attempt, live, unrelated):
        (folder / "sub").mkdir(parents=True)
    worker = Worker(service, registry, WorkerConfig(queues=["q"], burst=True, workdir_root=root))
    asyncio.run(worker.run())
    assert service.get(finished.id).status is JobStatus.COMPLETED
    assert not any(p.exists() for p in (*leftovers, stale_attempt))
    assert live.is_dir() and unrelated.is_dir()
    store.close()


def at_claim_commit(name: str, body: str) -> str:
    """SQL for a deferred constraint trigger `name` that runs `body` (PL/pgSQL) at the COMMIT of every
    transaction that claims a job: a real commit of the claim, slowed or failed."""
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body}
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER {name} AFTER UPDATE ON jobmill_jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status = 'pending' AND NEW.status = 'running') EXECUTE FUNCTION {name}();
"""


# Fails the COMMIT of the first claim, and only that one: a sequence (not rolled back with the
# transaction) counts the tries.
FAIL_FIRST_CLAIM_COMMIT = "CREATE SEQUENCE test_claim_commits;" + at_claim_commit(
    "test_fail_first_claim",
    "IF nextval('test_claim_commits') = 1 THEN RAISE EXCEPTION 'this claim does not commit'; END IF;",
)
# Makes every COMMIT of a claim slow: long enough that a quick handler reports progress and returns
# while its claim is still committing.
SLOW_CLAIM_COMMIT = at_claim_commit("test_slow_claim", "PERFORM pg_sleep(0.3);")


def one_job(pg_url: str, spec: HandlerSpec) -> tuple[JobStore, JobService, HandlerRegistry, Job]:
    """A store on `pg_url`, a service whose registry holds `spec`, and one job of that kind."""
    registry = HandlerRegistry()
    registry.register(spec)
    store = open_store(pg_url)
    service = JobService(store, registry=registry)
    return store, service, registry, service.submit(SubmitRequest(kind=spec.kind)).job


def run_worker_with_sql(
    pg_url: str, service: JobService, registry: HandlerRegistry, config: WorkerConfig, sql: str
) -> WorkerStats:
    """A burst worker run while `sql` (triggers of the tests below) is in place; they go afterwards, as
    they would otherwise outlive the test in the session's database (truncation keeps triggers)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql)
        try:
            return asyncio.run(asyncio.wait_for(Worker(service, registry, config).run(), 20))
        finally:
            conn.execute(
                "DROP TRIGGER IF EXISTS test_fail_first_claim ON jobmill_jobs;"
                " DROP FUNCTION IF EXISTS test_fail_first_claim();"
                " DROP SEQUENCE IF EXISTS test_claim_commits;"
                " DROP TRIGGER IF EXISTS test_slow_claim ON jobmill_jobs;"
                " DROP FUNCTION IF EXISTS test_slow_claim();"
            )


def test_a_job_started_before_its_claim_failed_to_commit_is_stopped_and_run_again(
    pg_url: str, tmp_path: Path
) -> None:
    """An idle worker starts a claim's handlers before the commit returns (see Worker._claim). When the
    commit fails, the handler already running is stopped, nothing is written under its lease, and the
    job, still pending, runs once more on a later claim."""

    runs: list[str] = []
    first_ran_s: list[float] = []

    async def slow_then_quick(ctx: JobContext) -> str:
        if runs:
            runs.append("second")
            return "second run"
        runs.append("first")
        started = time.monotonic()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            runs.append("first stopped")
            first_ran_s.append(time.monotonic() - started)
            raise
        return "first run"

    store, service, registry, job = one_job(pg_url, HandlerSpec("t.slow", slow_then_quick, queue="q"))
    config = WorkerConfig(
        queues=["q"],
        concurrency=2,
        burst=True,
        poll_interval_s=0.5,  # the first heartbeat would stop it too, but only after this
        cancel_grace_s=1,
        workdir_root=tmp_path / "work",
    )
    stats = run_worker_with_sql(pg_url, service, registry, config, FAIL_FIRST_CLAIM_COMMIT)
    assert runs == ["first", "first stopped", "second"]
    assert first_ran_s[0] < 0.25  # stopped by the failed commit itself, not by a later heartbeat
    assert stats.lost == 1 and stats.completed == 1
    done = service.get(job.id)
    # The failed claim left no trace: one attempt, the second run's result.
    assert done.status is JobStatus.COMPLETED and done.attempts == 1 and done.result == "second run"
    assert [e.type for e in service.events(job.id)] == ["status", "status", "status"]
    store.close()


def test_what_a_job_writes_before_its_claim_has_committed_waits_for_the_commit(
    pg_url: str, tmp_path: Path
) -> None:
    """A statement that ran before the claim's commit would see the job still pending and be refused:
    the progress report and the completion of a handler that beat its claim's commit wait for it."""

    async def quick(ctx: JobContext) -> str:
        await ctx.progress(50, "half way")
        return "done"

    store, service, registry, job = one_job(pg_url, HandlerSpec("t.quick", quick, queue="q"))
    config = WorkerConfig(queues=["q"], concurrency=2, burst=True, workdir_root=tmp_path / "work")
    stats = run_worker_with_sql(pg_url, service, registry, config, SLOW_CLAIM_COMMIT)
    assert stats.completed == 1 and stats.lost == 0
    done = service.get(job.id)
    assert done.status is JobStatus.COMPLETED and done.result == "done" and done.progress == 50
    assert [e.type for e in service.events(job.id)] == ["status", "status", "progress", "status"]
    store.close()
