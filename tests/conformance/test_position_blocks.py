"""The per-block counts behind queue_position (postgres 0005, sqlite 0003) stay equal to a recount.

Random operations through every path that moves a job in or out of the pending set (submit, claim,
complete, retry with backoff, fail, cancel pending and running, confirm a cancel, admin requeue, priority
change, lease expiry, a deleted row) with tiny blocks; after each one the counts table must equal a
recount from jobmill_jobs. Then: tenants, existing databases that migrate, concurrent writers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobmill.domain.job import Job, JobStatus
from jobmill.domain.ordering import oracle_position
from jobmill.service import JobService, RetryPolicy, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.store.base import Completion, JobListParams, Lease
from jobmill.store.migrations import MIGRATIONS_TABLE, load_migrations
from jobmill.store.sqlite import _split_sql
from tests.support.clock import FakeClock
from tests.support.positions import BlockCounts
from tests.support.postgres import ScratchDatabase, require_server

DEFAULT_BLOCK_WIDTH = 1024
QUEUES = ["a", "b"]
TENANTS = ["t1", "t2"]

Step = tuple[str, Any]
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.lists(
                st.tuples(
                    st.sampled_from(QUEUES),
                    st.integers(0, 1),
                    st.sampled_from([0, 0, 5]),
                    st.sampled_from(TENANTS),
                ),
                min_size=1,
                max_size=6,
            ),
        ),
        st.tuples(st.just("claim"), st.tuples(st.sampled_from(QUEUES), st.integers(1, 5))),
        st.tuples(st.just("complete"), st.integers(0, 1000)),
        st.tuples(st.just("fail"), st.tuples(st.integers(0, 1000), st.booleans())),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
        st.tuples(st.just("confirm_cancel"), st.integers(0, 1000)),
        st.tuples(st.just("requeue"), st.integers(0, 1000)),
        st.tuples(st.just("reprioritize"), st.tuples(st.integers(0, 1000), st.integers(0, 1))),
        st.tuples(st.just("expire"), st.just(None)),
        st.tuples(st.just("delete"), st.integers(0, 1000)),
        st.tuples(st.just("advance"), st.sampled_from([1, 6])),
    ),
    min_size=1,
    max_size=30,
)


def all_jobs(service: JobService) -> list[Job]:
    return service.list_jobs(JobListParams(limit=10_000))


def apply(service: JobService, clock: FakeClock, counts: BlockCounts, op: str, arg: Any) -> None:
    jobs = all_jobs(service)
    if op == "submit":
        service.submit_many(
            [
                SubmitRequest(
                    kind="k",
                    queue=queue,
                    priority=priority,
                    tenant=tenant,
                    max_attempts=2,
                    run_after=clock() + timedelta(seconds=delay),
                )
                for queue, priority, delay, tenant in arg
            ]
        )
    elif op == "claim":
        service.claim("w", [arg[0]], arg[1])
    elif op == "advance":
        clock.advance(arg)
    elif op == "expire":
        clock.advance(60)  # past every lease: the reaper retries, fails or settles cancels
        service.recover_expired()
    elif jobs:
        index = arg[0] if isinstance(arg, tuple) else arg
        job = jobs[index % len(jobs)]
        lease = Lease(job.id, job.lease_token) if job.lease_token is not None else None
        if op == "complete" and job.status is JobStatus.RUNNING and lease:
            service.complete_many([Completion(lease, {"ok": True})])
        elif op == "fail" and job.status is JobStatus.RUNNING and lease:
            service.fail(job, lease, {"type": "E", "message": "m"}, retryable=arg[1])
        elif op == "cancel" and not job.status.is_terminal:
            service.cancel(job.id, job.tenant)
        elif op == "confirm_cancel" and job.status is JobStatus.CANCELLING and lease:
            service.confirm_cancel(lease)
        elif op == "requeue" and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            service.requeue(job.id, job.tenant)
        elif op == "reprioritize" and job.status is JobStatus.PENDING:
            service.reprioritize(job.id, arg[1], job.tenant)
        elif op == "delete":
            # No jobmill path deletes jobs yet (retention will): the trigger must handle it already.
            counts.execute(f"DELETE FROM jobmill_jobs WHERE id = '{job.id}'")


def run_and_recount(store: JobStore, counts: BlockCounts, sequence: list[Step]) -> None:
    clock = FakeClock()
    service = JobService(store, clock=clock, lease_s=30, retry=RetryPolicy(base_s=2, max_s=8))
    for op, arg in sequence:
        apply(service, clock, counts, op, arg)
        counts.assert_consistent()
        jobs = all_jobs(service)
        for job in jobs:
            assert service.queue_position(job.id) == oracle_position(job, jobs, clock())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=steps, width=st.sampled_from([2, 3, 4]))
def test_block_counts_equal_recount_sqlite(sequence: list[Step], width: int, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / uuid4().hex}.db"
    store = open_store(url)
    counts = BlockCounts(url)
    try:
        counts.set_width(width)
        run_and_recount(store, counts, sequence)
    finally:
        counts.close()
        store.close()


@pytest.mark.postgres
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=steps, width=st.sampled_from([2, 3, 4]))
def test_block_counts_equal_recount_postgres(
    sequence: list[Step], width: int, pg_database: ScratchDatabase
) -> None:
    pg_database.truncate()
    store = open_store(pg_database.url)
    counts = BlockCounts(pg_database.url)
    try:
        counts.set_width(width)
        run_and_recount(store, counts, sequence)
    finally:
        counts.set_width(DEFAULT_BLOCK_WIDTH)
        counts.close()
        store.close()


# -- tenants ------------------------------------------------------------------------------------------


def test_tenants_see_their_own_positions_counting_every_tenant(service: JobService) -> None:
    """The claim order does not look at tenants, so neither does the position; but a tenant can ask only
    about its own jobs (another tenant's job is None, as if it did not exist)."""
    tenants = ["t1", "t2", "t1", "t2", "t2", "t1"]
    jobs = [
        service.submit(SubmitRequest(kind="k", tenant=t, priority=i % 2)).job for i, t in enumerate(tenants)
    ]
    expected = {job.id: oracle_position(job, jobs, service.clock()) for job in jobs}
    assert sorted(p or 0 for p in expected.values()) == [1, 2, 3, 4, 5, 6]
    for job in jobs:
        other = "t2" if job.tenant == "t1" else "t1"
        assert service.queue_position(job.id, job.tenant) == expected[job.id]
        assert service.queue_position(job.id) == expected[job.id]
        assert service.queue_position(job.id, other) is None


@pytest.mark.postgres
def test_tenant_role_cannot_write_the_counts(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("SET LOCAL ROLE jobmill_tenant")
        conn.execute("SELECT set_config('jobmill.tenant', 't1', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE jobmill_position_blocks SET pending = 0")


# -- existing databases -------------------------------------------------------------------------------


def _old_jobs(now: datetime) -> list[tuple[str, str, int, str, datetime]]:
    """(queue, tenant, priority, status, run_after) rows as a database from before the counts held them."""
    rows = []
    for i in range(40):
        status = ["pending", "pending", "running", "completed", "pending"][i % 5]
        run_after = now + timedelta(seconds=30) if i % 7 == 0 else now - timedelta(seconds=i)
        rows.append((QUEUES[i % 2], TENANTS[i % 3 % 2], i % 3 - 1, status, run_after))
    return rows


def _check_migrated(url: str, now: datetime) -> None:
    counts = BlockCounts(url)
    store = open_store(url)
    try:
        counts.assert_consistent()
        assert counts.width() == DEFAULT_BLOCK_WIDTH
        assert counts.blocks() != []
        service = JobService(store, clock=lambda: now)
        jobs = all_jobs(service)
        assert len(jobs) == 40
        for job in jobs:
            assert service.queue_position(job.id) == oracle_position(job, jobs, now)
        counts.set_width(2)  # and once re-cut into many blocks
        for job in jobs:
            assert service.queue_position(job.id) == oracle_position(job, jobs, now)
    finally:
        store.close()
        counts.close()


def test_sqlite_migration_counts_existing_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"CREATE TABLE {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                     " applied_at REAL NOT NULL)")  # fmt: skip
        for migration in load_migrations("sqlite")[:2]:
            for statement in _split_sql(migration.sql):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?, 0)", (migration.version, migration.name)
            )
        for queue, tenant, priority, status, run_after in _old_jobs(now):
            conn.execute(
                "INSERT INTO jobmill_jobs (id, tenant, kind, queue, priority, status, run_after, created_at,"
                " updated_at) VALUES (?, ?, 'k', ?, ?, ?, ?, ?, ?)",
                (str(uuid4()), tenant, queue, priority, status, run_after.timestamp(), now.timestamp(),
                 now.timestamp()),
            )  # fmt: skip
    finally:
        conn.close()
    _check_migrated(f"sqlite:///{path}", now)


@pytest.fixture
def scratch_database() -> Iterator[ScratchDatabase]:
    require_server()
    db = ScratchDatabase()
    db.create()
    try:
        yield db
    finally:
        db.drop()


@pytest.mark.postgres
def test_postgres_migration_counts_existing_jobs(scratch_database: ScratchDatabase) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(scratch_database.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {MIGRATIONS_TABLE} (version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL)")  # fmt: skip
        for migration in load_migrations("postgres")[:4]:
            conn.execute(migration.sql.encode())
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} VALUES (%s, %s, now())", (migration.version, migration.name)
            )
        for queue, tenant, priority, status, run_after in _old_jobs(now):
            conn.execute(
                "INSERT INTO jobmill_jobs (id, tenant, kind, queue, priority, status, run_after, created_at,"
                " updated_at) VALUES (%s, %s, 'k', %s, %s, %s, %s, %s, %s)",
                (uuid4(), tenant, queue, priority, status, run_after, now, now),
            )
    store = open_store(scratch_database.url, migrate=True)
    store.close()
    _check_migrated(scratch_database.url, now)


# -- concurrency --------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_claims_and_submissions_keep_the_counts(pg_url: str) -> None:
    """Claimers share the head block and submitters the tail one: they queue on those rows (in one lock
    order, so without deadlocks) and the counts still add up."""
    counts = BlockCounts(pg_url)
    stores = [open_store(pg_url) for _ in range(6)]
    try:
        counts.set_width(8)
        seed = JobService(stores[0])
        seed.submit_many([SubmitRequest(kind="k", priority=i % 3) for i in range(600)])
        errors: list[BaseException] = []

        def claimer(store: JobStore) -> None:
            service = JobService(store)
            try:
                while jobs := service.claim("w", ["default"], 7):
                    service.complete_many(
                        [Completion(Lease(j.id, j.lease_token), None) for j in jobs if j.lease_token]
                    )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        def submitter(store: JobStore) -> None:
            service = JobService(store)
            try:
                for i in range(40):
                    service.submit_many([SubmitRequest(kind="k", priority=i % 3) for _ in range(5)])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(s,)) for s in stores[:4]]
        threads += [threading.Thread(target=submitter, args=(s,)) for s in stores[4:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        counts.assert_consistent()
        service = JobService(stores[0])
        jobs = all_jobs(service)
        for job in jobs:
            if job.status is JobStatus.PENDING:
                assert service.queue_position(job.id) == oracle_position(job, jobs, service.clock())
    finally:
        counts.set_width(DEFAULT_BLOCK_WIDTH)
        counts.close()
        for store in stores:
            store.close()
