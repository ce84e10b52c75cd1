"""PostgreSQL-only behaviour: wake-ups through LISTEN/NOTIFY, SKIP LOCKED claims, error translation,
concurrent migrators, and the details the common suite cannot see (UTC timestamps, plans that stay
index-driven as dead rows pile up)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import random
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from jobmill.domain.job import Job, JobStatus
from jobmill.domain.ordering import claim_sort_key, oracle_position
from jobmill.domain.transitions import Transition, edge
from jobmill.errors import StoreError, StoreUnavailable
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store
from jobmill.store.base import (
    Completion,
    JobClaimParams,
    JobCompleteManyParams,
    JobInsertManyParams,
    JobListParams,
    Lease,
    Notification,
)
from jobmill.store.migrations import load_migrations
from jobmill.store.postgres import LISTENER_NAME, PING_TIMEOUT_S, POOL_MAX_SIZE, PostgresJobStore
from tests.support.clock import FakeClock
from tests.support.postgres import ScratchDatabase, require_server

pytestmark = pytest.mark.postgres


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[PostgresJobStore]]:
    """Stores opened by a test on the session database; closed at the end."""
    opened: list[PostgresJobStore] = []
    yield opened
    for store in opened:
        store.close()


def open_pg(url: str, opened: list[PostgresJobStore]) -> PostgresJobStore:
    store = PostgresJobStore(url)
    opened.append(store)
    return store


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[float, Notification]] = []
        self.changed = threading.Condition()

    def __call__(self, notification: Notification) -> None:
        with self.changed:
            self.items.append((time.perf_counter(), notification))
            self.changed.notify_all()

    def wait_for(self, wanted: Notification, timeout: float = 5.0) -> float:
        """The arrival time of `wanted`, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for at, notification in self.items:
                    if notification == wanted:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{wanted} not received; got {[n for _, n in self.items]}")
                self.changed.wait(left)


# -- notifications ------------------------------------------------------------------------------------


def test_notify_latency_is_milliseconds(pg_url: str, stores: list[PostgresJobStore]) -> None:
    inbox = Inbox()
    subscription = open_pg(pg_url, stores).notification_subscribe(inbox)
    service = JobService(open_pg(pg_url, stores))
    latencies = []
    for i in range(20):
        queue = f"q{i}"
        sent = time.perf_counter()
        service.submit(SubmitRequest(kind="k", queue=queue))
        latencies.append(inbox.wait_for(Notification("new_job", queue=queue)) - sent)
    subscription.close()
    # Measured from before the INSERT's round trip, so this includes the commit.
    assert statistics.median(latencies) < 0.05, latencies


def test_a_subscriber_gets_only_its_topics(pg_url: str, stores: list[PostgresJobStore]) -> None:
    """Live-stream wake-ups ride a channel of their own, which only subscribers of "events" LISTEN on:
    workers (new_job and cancel) get none, however many claims and completions others commit."""
    worker_inbox, all_inbox = Inbox(), Inbox()
    worker_store = open_pg(pg_url, stores)
    worker_store.notification_subscribe(worker_inbox, frozenset({"new_job", "cancel"}))
    service = JobService(open_pg(pg_url, stores))
    service.submit(SubmitRequest(kind="k", queue="before"))  # appends a 'created' event
    worker_inbox.wait_for(Notification("new_job", queue="before"))
    # A second subscriber of the same store wants events: the listener starts LISTENing on their channel.
    worker_store.notification_subscribe(all_inbox)
    service.submit(SubmitRequest(kind="k", queue="after"))
    all_inbox.wait_for(Notification("new_job", queue="after"))
    all_inbox.wait_for(Notification("events"))
    service.claim("w", ["before", "after"], 10)  # appends 'claimed' events
    service.submit(SubmitRequest(kind="k", queue="last"))
    worker_inbox.wait_for(Notification("new_job", queue="last"))
    assert {n.topic for _, n in worker_inbox.items} == {"new_job"}


def test_every_change_that_makes_work_notifies(pg_url: str, stores: list[PostgresJobStore]) -> None:
    inbox = Inbox()
    subscription = open_pg(pg_url, stores).notification_subscribe(inbox)
    clock = FakeClock()
    service = JobService(open_pg(pg_url, stores), clock=clock)
    # A batch sends one wake-up per queue.
    service.submit_many([SubmitRequest(kind="k", queue=q) for q in ("a", "b", "a", "a")])
    inbox.wait_for(Notification("new_job", queue="a"))
    inbox.wait_for(Notification("new_job", queue="b"))
    # A retry puts the job back: wake-up for its queue.
    service.submit(SubmitRequest(kind="k", queue="retry", max_attempts=2))
    (job,) = service.claim("w", ["retry"], 1)
    with inbox.changed:
        inbox.items.clear()
    assert job.lease_token is not None
    service.fail(job, Lease(job.id, job.lease_token), {"type": "E", "message": "m"})
    inbox.wait_for(Notification("new_job", queue="retry"))
    # An admin requeue too; a cancel of a running job sends the job id.
    service.submit(SubmitRequest(kind="k", queue="requeue"))
    (running,) = service.claim("w", ["requeue"], 1)
    service.cancel(running.id)
    inbox.wait_for(Notification("cancel", job_id=running.id))
    assert running.lease_token is not None
    service.confirm_cancel(Lease(running.id, running.lease_token))
    with inbox.changed:
        inbox.items.clear()
    service.requeue(running.id)
    inbox.wait_for(Notification("new_job", queue="requeue"))
    subscription.close()
    # Nothing arrives after the subscription is closed.
    with inbox.changed:
        inbox.items.clear()
    service.submit(SubmitRequest(kind="k", queue="late"))
    time.sleep(0.3)
    assert inbox.items == []


def test_nothing_is_sent_when_nothing_changed(pg_url: str, stores: list[PostgresJobStore]) -> None:
    inbox = Inbox()
    subscription = open_pg(pg_url, stores).notification_subscribe(inbox)
    service = JobService(open_pg(pg_url, stores))
    first = service.submit(SubmitRequest(kind="k", queue="once", idempotency_key="key"))
    # The first submission wakes workers of its queue and, after its statement, the event followers.
    inbox.wait_for(Notification("new_job", queue="once"))
    inbox.wait_for(Notification("events"))
    with inbox.changed:
        inbox.items.clear()
    again = service.submit(SubmitRequest(kind="k", queue="once", idempotency_key="key"))
    assert not again.created and again.job == first.job
    service.submit(SubmitRequest(kind="k", queue="marker"))
    inbox.wait_for(Notification("new_job", queue="marker"))
    inbox.wait_for(Notification("events"))
    # The replay appended no event and woke nobody: only the marker's two notices arrived.
    assert [n for _, n in inbox.items] == [Notification("new_job", queue="marker"), Notification("events")]
    subscription.close()


def listener_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (LISTENER_NAME,),
        ).fetchall()
    return [r[0] for r in rows]


def test_listener_reconnects_and_asks_for_a_repoll(pg_url: str, stores: list[PostgresJobStore]) -> None:
    inbox = Inbox()
    listening = open_pg(pg_url, stores)
    subscription = listening.notification_subscribe(inbox)
    (pid,) = listener_pids(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    inbox.wait_for(Notification("new_job", queue=None), timeout=10)
    assert listener_pids(pg_url) not in ([], [pid])
    service = JobService(open_pg(pg_url, stores))
    service.submit(SubmitRequest(kind="k", queue="after"))
    inbox.wait_for(Notification("new_job", queue="after"))
    subscription.close()


def test_close_stops_the_listener_and_is_idempotent(pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    store.notification_subscribe(lambda n: None)
    store.notification_subscribe(lambda n: None)  # one listener per store, however many subscribers
    assert len(listener_pids(pg_url)) == 1
    store.close()
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "jobmill-pg-listener" and t.is_alive()]
    deadline = time.monotonic() + 5
    while listener_pids(pg_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener_pids(pg_url) == []
    with pytest.raises(StoreError):
        store.ping()
    with pytest.raises(StoreError):
        store.notification_subscribe(lambda n: None)


def test_close_wakes_the_listener_at_once(pg_url: str) -> None:
    """The listener sleeps in select() on its socket and a wake-up pipe: close() does not wait for a
    poll interval (which a burst worker's exit used to, 0.1 s on average)."""
    for _ in range(5):
        store = PostgresJobStore(pg_url)
        store.notification_subscribe(lambda n: None)
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 0.05


def test_a_failing_callback_does_not_stop_the_others(pg_url: str, stores: list[PostgresJobStore]) -> None:
    listening = open_pg(pg_url, stores)
    inbox = Inbox()

    def broken(notification: Notification) -> None:
        raise RuntimeError("subscriber bug")

    listening.notification_subscribe(broken)
    listening.notification_subscribe(inbox)
    JobService(open_pg(pg_url, stores)).submit(SubmitRequest(kind="k", queue="x"))
    inbox.wait_for(Notification("new_job", queue="x"))
    JobService(open_pg(pg_url, stores)).submit(SubmitRequest(kind="k", queue="y"))
    inbox.wait_for(Notification("new_job", queue="y"))


# -- claims -------------------------------------------------------------------------------------------


def test_concurrent_claimers_on_several_queues(pg_url: str, stores: list[PostgresJobStore]) -> None:
    seed = JobService(open_pg(pg_url, stores))
    rng = random.Random(7)
    seed.submit_many(
        [SubmitRequest(kind="k", queue=rng.choice("abc"), priority=rng.randint(-2, 2)) for _ in range(600)]
    )
    claimed: list[list[Job]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def claimer(slot: int) -> None:
        try:
            service = JobService(open_pg(pg_url, stores))
            while batch := service.claim(f"w{slot}", ["a", "b", "c"], 9):
                assert batch == sorted(batch, key=claim_sort_key)
                claimed[slot].extend(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [j.id for batch in claimed for j in batch]
    assert len(ids) == 600 and len(set(ids)) == 600


def test_multi_queue_claim_follows_the_global_order(pg_url: str, stores: list[PostgresJobStore]) -> None:
    clock = FakeClock()
    service = JobService(open_pg(pg_url, stores), clock=clock)
    rng = random.Random(3)
    service.submit_many(
        [
            SubmitRequest(
                kind="k",
                queue=rng.choice("abc"),
                priority=rng.randint(-3, 3),
                run_after=clock() + timedelta(seconds=rng.choice([0, 0, 0, 30])),
            )
            for _ in range(200)
        ]
    )
    while True:
        jobs = service.list_jobs(JobListParams(limit=1000))
        runnable = sorted(
            (j for j in jobs if j.queue in ("a", "b") and j.is_runnable(clock())), key=claim_sort_key
        )
        batch = service.claim("w", ["a", "b"], 7)
        assert [j.id for j in batch] == [j.id for j in runnable[:7]]
        if not batch:
            break
    assert service.claim("w", ["c"], 1000) != []


def test_claimed_job_equals_what_is_stored(pg_url: str, stores: list[PostgresJobStore]) -> None:
    """The claim reads back only what it did not write; the rest must match the row exactly."""
    service = JobService(open_pg(pg_url, stores))
    service.submit(SubmitRequest(kind="k", params={"a": [1, 2.5, "x"]}, inputs={"f": {"key": "k"}}))
    (claimed,) = service.claim("worker-1", ["default"], 1)
    assert claimed == service.get(claimed.id)
    submitted = service.submit(SubmitRequest(kind="k", timeout_s=3, principal="p", idempotency_key="i")).job
    assert submitted == service.get(submitted.id)
    params = {"nested": [1]}
    job = service.submit(SubmitRequest(kind="k", params=params)).job
    params["nested"].append(2)  # the caller's object is not the job's
    assert job.params == {"nested": [1]} == service.get(job.id).params


def test_one_batch_with_a_repeated_idempotency_key(pg_url: str, stores: list[PostgresJobStore]) -> None:
    service = JobService(open_pg(pg_url, stores))
    results = service.submit_many(
        [
            SubmitRequest(kind="k", idempotency_key="same", params={"n": 1}),
            SubmitRequest(kind="k"),
            SubmitRequest(kind="k", idempotency_key="same", params={"n": 1}),  # a replay of the first
            SubmitRequest(kind="k", idempotency_key="same", tenant="other"),
        ]
    )
    assert [r.created for r in results] == [True, True, False, True]
    assert results[2].job == results[0].job and results[0].job.params == {"n": 1}
    assert results[3].job.id != results[0].job.id
    seqs = [results[i].job.seq for i in (0, 1, 3)]
    assert seqs == sorted(seqs)  # submission order is the order of the batch
    assert len(service.events(results[0].job.id)) == 1


# -- queue position -----------------------------------------------------------------------------------


def test_queue_position_matches_the_oracle(pg_url: str, stores: list[PostgresJobStore]) -> None:
    clock = FakeClock()
    service = JobService(open_pg(pg_url, stores), clock=clock)
    rng = random.Random(11)
    service.submit_many(
        [
            SubmitRequest(
                kind="k",
                queue=rng.choice("ab"),
                priority=rng.randint(-2, 2),
                tenant=rng.choice(["t1", "t2"]),
                run_after=clock() + timedelta(seconds=rng.choice([0, 0, 5])),
            )
            for _ in range(150)
        ]
    )
    service.claim("w", ["a"], 10)
    for job in service.list_jobs(JobListParams(limit=20))[:5]:
        if job.status is JobStatus.PENDING:
            service.reprioritize(job.id, 5)
    jobs = service.list_jobs(JobListParams(limit=1000))
    for job in jobs:
        assert service.queue_position(job.id) == oracle_position(job, jobs, clock())
        other = "t2" if job.tenant == "t1" else "t1"
        assert service.queue_position(job.id, other) is None


# -- timestamps ---------------------------------------------------------------------------------------


def test_timestamps_come_back_utc_to_the_microsecond(pg_url: str, stores: list[PostgresJobStore]) -> None:
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=paris)
    service = JobService(open_pg(pg_url, stores), clock=lambda: now)
    created = service.submit(SubmitRequest(kind="k", run_after=now + timedelta(microseconds=1))).job
    stored = service.get(created.id)
    assert stored == created
    for value in (stored.created_at, stored.updated_at, stored.run_after, created.created_at):
        assert value.tzinfo is UTC
    assert stored.created_at == now and stored.run_after == now + timedelta(microseconds=1)
    assert service.claim("w", ["default"], 1) == []  # run_after is 1 µs in the future
    later = now + timedelta(microseconds=1)
    service.clock = lambda: later
    (claimed,) = service.claim("w", ["default"], 1)
    assert claimed.started_at == later and claimed.started_at.tzinfo is UTC
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at.tzinfo is UTC
    assert claimed == service.get(claimed.id)
    events = service.events(claimed.id)
    assert [e.at for e in events] == [now, later] and all(e.at.tzinfo is UTC for e in events)


# -- errors -------------------------------------------------------------------------------------------


def test_unreachable_server_is_store_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        PostgresJobStore("postgresql://postgres@127.0.0.1:1/nowhere")
    assert "\n" not in str(info.value)  # libpq's hint lines are folded into one line
    with pytest.raises(StoreUnavailable):
        open_store("postgresql://postgres@127.0.0.1:5432/jobmill_no_such_database")
    assert time.monotonic() - started < 5


def test_lost_connections_are_unavailable_then_replaced(pg_url: str, stores: list[PostgresJobStore]) -> None:
    store = open_pg(pg_url, stores)
    store.ping()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'jobmill'"
        )
    # A readiness probe does not report the server down because a pooled connection died: ping drops it
    # and tries one fresh connection.
    store.ping()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'jobmill'"
        )
    service = JobService(store)
    with pytest.raises(StoreUnavailable):
        service.statuses([uuid4()])
    # Each broken pooled connection fails once, then the pool replaces it.
    for _ in range(POOL_MAX_SIZE):
        try:
            service.statuses([uuid4()])
            break
        except StoreUnavailable:
            continue
    service.statuses([uuid4()])


def test_ping_answers_fast_when_no_connection_is_free(pg_url: str, stores: list[PostgresJobStore]) -> None:
    """Regression (chaos): while PostgreSQL was down, /readyz waited ACQUIRE_TIMEOUT_S (10 s) for the pool
    instead of answering 503; a readiness probe must answer within about a second either way."""
    store = open_pg(pg_url, stores)
    held = [store._pool.getconn() for _ in range(POOL_MAX_SIZE)]
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ping()
        assert time.monotonic() - started < PING_TIMEOUT_S + 1.0
    finally:
        for conn in held:
            store._pool.putconn(conn)
    store.ping()


def test_other_driver_errors_are_store_errors(pg_url: str, stores: list[PostgresJobStore]) -> None:
    store = open_pg(pg_url, stores)
    service = JobService(store)
    # The service refuses NUL in params; straight to the store, jsonb's own refusal must be translated.
    bad = service._new_job(SubmitRequest(kind="k"), service.clock())
    bad = dataclasses.replace(bad, params={"text": "nul \x00 byte"})
    with pytest.raises(StoreError) as info:
        store.job_insert_many(JobInsertManyParams([bad], service.clock()))
    assert not isinstance(info.value, StoreUnavailable)
    assert not isinstance(info.value.__cause__, StoreError)
    assert isinstance(info.value.__cause__, psycopg.Error)
    service.submit(SubmitRequest(kind="k"))  # the store is still usable


# -- plans --------------------------------------------------------------------------------------------


def test_lease_writes_do_not_walk_the_lease_index(pg_url: str, stores: list[PostgresJobStore]) -> None:
    """CAS writes by id must not be planned through the lease index.

    A `status IN ('running', 'cancelling')` predicate on it would be implied by `status = 'running'`, and
    with few live leases the planner would prefer a bitmap scan of that index, whose dead entries are
    never marked killed by bitmap scans: each completion would then cost more than the one before.
    """
    store = open_pg(pg_url, stores)
    JobService(store).submit_many([SubmitRequest(kind="k") for _ in range(1000)])
    claim_edge, complete_edge = edge(Transition.CLAIM), edge(Transition.COMPLETE)
    for _ in range(9):
        now = datetime.now(UTC)
        jobs = store.job_claim(JobClaimParams(["default"], 100, "w", now, now, claim_edge))
        leases = [Lease(j.id, j.lease_token or uuid4()) for j in jobs]
        done = store.job_complete_many(
            JobCompleteManyParams([Completion(lease, None) for lease in leases], now, complete_edge)
        )
        assert len(done) == 100
    now = datetime.now(UTC)
    jobs = store.job_claim(JobClaimParams(["default"], 100, "w", now, now, claim_edge))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        plans = [
            "\n".join(
                str(r[0])
                for r in conn.execute(
                    f"EXPLAIN UPDATE jobmill_jobs AS j SET updated_at = now()"
                    f" FROM unnest(%s::uuid[], %s::uuid[]) AS t(id, token)"
                    f" WHERE j.id = t.id AND j.lease_token = t.token AND j.status IN {statuses}",
                    ([j.id for j in jobs], [j.lease_token for j in jobs]),
                )
            )
            for statuses in ("('running')", "('running', 'cancelling')")
        ]
    for plan in plans:
        assert "jobmill_jobs_lease" not in plan, plan


# -- migrations ---------------------------------------------------------------------------------------


def _migrate(url: str, start: Any, results: Any) -> None:
    start.wait(10)
    store = PostgresJobStore(url)
    try:
        results.put(store.migrate())
    finally:
        store.close()


@pytest.mark.slow
def test_concurrent_migrators_apply_each_migration_once() -> None:
    require_server()
    db = ScratchDatabase()
    db.create()
    try:
        context = multiprocessing.get_context("spawn")
        start = context.Event()
        results = context.Queue()
        workers = [context.Process(target=_migrate, args=(db.url, start, results)) for _ in range(3)]
        for w in workers:
            w.start()
        start.set()
        applied = [results.get(timeout=30) for _ in workers]
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        # Each migration is its own transaction under the lock, so the migrators may share the work out
        # (one applies 0001-0002, another the rest): what matters is that each one ran exactly once.
        names = [m.name for m in load_migrations("postgres")]
        assert sorted(name for one in applied for name in one) == names
        store = PostgresJobStore(db.url)
        try:
            assert store.migrate() == []
            store.ping()
        finally:
            store.close()
    finally:
        db.drop()


# -- row-level security ---------------------------------------------------------------------------------


def test_row_level_security_hides_other_tenants_from_unscoped_queries(
    pg_url: str, stores: list[PostgresJobStore]
) -> None:
    """The second wall: under a tenant's setting, a query with NO tenant filter sees only that tenant."""
    store = open_pg(pg_url, stores)
    service = JobService(store)
    mine = [service.submit(SubmitRequest(kind="k", tenant="a")).job for _ in range(3)]
    theirs = service.submit(SubmitRequest(kind="k", tenant="b")).job
    # The store's own tenant-scoped path, handed a query that forgot its tenant filter:
    rows = store._all("SELECT id, tenant FROM jobmill_jobs", {}, tenant="a")
    assert {r[0] for r in rows} == {j.id for j in mine} and {r[1] for r in rows} == {"a"}
    assert store._all("SELECT count(*) FROM jobmill_events", {}, tenant="a") == [(3,)]
    # Forged writes reach nothing, and rows for another tenant cannot be created.
    assert (
        store._all(
            "UPDATE jobmill_jobs SET priority = 99 WHERE id = %(id)s RETURNING id", {"id": theirs.id}, "a"
        )
        == []
    )
    with pytest.raises(StoreError):
        store._all(
            "INSERT INTO jobmill_audit (at, tenant, actor, action)"
            " VALUES (now(), 'b', 'x', 'forged') RETURNING id",
            {},
            tenant="a",
        )
    # The same statements by hand, as an API transaction runs them, without the store's help.
    with psycopg.connect(pg_url) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE jobmill_tenant")
        conn.execute("SELECT set_config('jobmill.tenant', 'b', true)")
        assert conn.execute("SELECT id FROM jobmill_jobs").fetchall() == [(theirs.id,)]
        conn.execute("SELECT set_config('jobmill.tenant', '', true)")
        assert conn.execute("SELECT count(*) FROM jobmill_jobs").fetchone() == (0,)  # no tenant: nothing
    # Workers and operators (no tenant) still see every tenant.
    assert store._all("SELECT count(*) FROM jobmill_jobs", {}) == [(4,)]
    assert service.queue_position(theirs.id, "a") is None


def test_a_deadlock_is_reported_as_contention_safe_to_retry() -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL rolls one back with 40P01, which
    the store reports as StoreContention (the worker retries its batch writes on it)."""
    import threading

    from jobmill.errors import StoreContention
    from jobmill.store.postgres import _translate
    from tests.support.postgres import ADMIN_URL

    require_server()
    with psycopg.connect(ADMIN_URL, autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS jobmill_deadlock_probe")
        setup.execute("CREATE TABLE jobmill_deadlock_probe (id int PRIMARY KEY)")
        setup.execute("INSERT INTO jobmill_deadlock_probe VALUES (1), (2)")
    errors: list[psycopg.Error] = []
    both_locked = threading.Barrier(2)

    def lock(first: int, second: int) -> None:
        with psycopg.connect(ADMIN_URL) as conn:
            try:
                conn.execute("UPDATE jobmill_deadlock_probe SET id = id WHERE id = %s", (first,))
                both_locked.wait(10)
                conn.execute("UPDATE jobmill_deadlock_probe SET id = id WHERE id = %s", (second,))
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with psycopg.connect(ADMIN_URL, autocommit=True) as setup:
        setup.execute("DROP TABLE jobmill_deadlock_probe")
    assert len(errors) == 1 and errors[0].sqlstate == "40P01"
    with pytest.raises(StoreContention):
        _translate(errors[0])


def test_pending_migrations_lists_what_the_database_lacks() -> None:
    require_server()
    db = ScratchDatabase()
    db.create()
    try:
        names = [m.name for m in load_migrations("postgres")]
        store = PostgresJobStore(db.url)  # not migrated: PostgreSQL is migrated only on request
        assert store.pending_migrations() == names
        store.migrate()
        assert store.pending_migrations() == []
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("DELETE FROM jobmill_schema_migrations WHERE version = %s", (len(names),))
        assert store.pending_migrations() == names[-1:]
        store.close()
    finally:
        db.drop()
