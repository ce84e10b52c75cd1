"""PostgreSQL backend: many API and worker nodes on one database.

Every method is one transaction, and the hot ones are one statement: data-modifying CTEs change the jobs,
append their events (same transaction, per-job `event_seq`) and send the wake-ups with `pg_notify`, which
PostgreSQL delivers on commit. Pooled connections run in autocommit mode, so a one-statement method costs
one round trip; the few multi-statement methods open an explicit transaction.

Claims lock their rows with FOR UPDATE SKIP LOCKED, so concurrent claimers never wait for each other nor
share a job. Writes by workers are compare-and-set on (id, lease token, status); status filters are
written into the SQL text (they come from the transition table), so the planner can match the partial
indexes even with generic plans of prepared statements.
"""

from __future__ import annotations

import contextlib
import json
import json.scanner
import logging
import os
import select
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, cast
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
from psycopg.adapt import AdaptersMap
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads

from jobmill.domain.admin import ApiKeyRecord, AuditEntry, AuditRecord
from jobmill.domain.job import Job, JobEvent, JobStatus, NewJob
from jobmill.errors import ConfigError, StoreContention, StoreError, StoreUnavailable
from jobmill.store.base import (
    ApiKeyInsertParams,
    ApiKeyJobs,
    ApiKeyListParams,
    ApiKeyRevokeParams,
    AuditListParams,
    ClaimHeld,
    EventListParams,
    JobCancelParams,
    JobClaimParams,
    JobCompleteManyParams,
    JobConfirmCancelParams,
    JobFailParams,
    JobFindCachedParams,
    JobGetManyByApiKeyParams,
    JobGetParams,
    JobHeartbeatParams,
    JobInsertManyParams,
    JobInsertResult,
    JobListExpiredParams,
    JobListParams,
    JobQueuePositionParams,
    JobQueueStatsParams,
    JobRecoverParams,
    JobReprioritizeParams,
    JobRequeueParams,
    JobSetProgressParams,
    JobStatusManyParams,
    Lease,
    Notification,
    QueueStats,
    Subscription,
    WouldBlock,
)
from jobmill.store.migrations import MIGRATIONS_TABLE, load_migrations, missing_migrations

log = logging.getLogger(__name__)

CHANNEL = "jobmill"  # new_job and cancel wake-ups: what workers wait for
# Every statement that appends events sends one wake-up here (migration 0006): many per second under load,
# and only API nodes with live streams want them, so workers do not LISTEN on it.
EVENTS_CHANNEL = "jobmill_events"
TENANT_ROLE = "jobmill_tenant"  # created by migration 0003; restricted by the row-level security policies
LISTENER_NAME = "jobmill-listener"  # application_name of the LISTEN connections
# pg_advisory_xact_lock key that serialises concurrent migrators: "jobmill" in ASCII.
MIGRATION_LOCK_KEY = 0x6A6F626D696C6C

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
CONNECT_TIMEOUT_S = 5  # per connection attempt (libpq connect_timeout)
OPEN_TIMEOUT_S = 5.0  # the first connection, when the store is opened
ACQUIRE_TIMEOUT_S = 10.0  # waiting for a free pooled connection
# Readiness must answer fast: an orchestrator's probe gives up after ~1 s, and a store that cannot hand out a
# connection within this is not ready, whether the server is away or every connection is busy.
PING_TIMEOUT_S = 1.0
LISTEN_CHECK_S = 5.0  # the listener's longest sleep between checks that its connection still answers
RECONNECT_BACKOFF_S = (0.1, 5.0)  # listener reconnection: first and longest wait

# Same order as the fields of Job, so a row maps onto it positionally.
JOB_COLUMNS = (
    "id, seq, tenant, principal, kind, queue, priority, params, status, stage, progress, message, attempts,"
    " max_attempts, timeout_s, run_after, result, error, inputs, outputs, idempotency_key, lease_owner,"
    " lease_token, lease_expires_at, event_seq, created_at, started_at, finished_at, updated_at,"
    " request_hash, cache_key, cached"
)
EVENT_COLUMNS = "id, job_id, tenant, seq, at, type, status, stage, progress, message, data"
API_KEY_COLUMNS = "key_id, tenant, role, name, secret_hash, created_at, revoked_at"
AUDIT_COLUMNS = "id, at, tenant, actor, action, job_id, before, after"
CLAIMED_COLUMNS = ", ".join("j." + c for c in JOB_COLUMNS.split(", "))
# What a claim reads back: the columns it does not set itself.
CLAIM_RESULT_COLUMNS = (
    "id, seq, tenant, principal, kind, queue, priority, params, attempts, max_attempts, timeout_s, run_after,"
    " result, inputs, outputs, idempotency_key, event_seq, created_at, finished_at, request_hash, cache_key,"
    " cached"
)

# SQLSTATEs that mean "the server cannot serve us right now" rather than "this statement failed".
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300", "53400", "25006"})
# deadlock_detected, serialization_failure: the transaction was rolled back and may simply run again.
_CONTENTION_STATES = frozenset({"40P01", "40001"})


def _status(value: JobStatus) -> str:
    """A status as an SQL literal (from the enum only, so it is safe to inline)."""
    return "'" + JobStatus(value).value + "'"


def _status_in(values: Collection[JobStatus]) -> str:
    if not values:
        raise ValueError("an edge needs at least one source status")
    return "(" + ", ".join(sorted(_status(v) for v in values)) + ")"


# One encoder for all: json.dumps() with any option builds a new encoder on every call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _json(value: Any) -> str | None:
    return None if value is None else _dumps(value)


_JSON_SCAN = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))  # the stub's signature is wrong


def _loads(data: str | bytes) -> Any:
    """json.loads for the text PostgreSQL sends (valid, no surrounding blanks), without its overhead."""
    if data == b"{}":
        return {}
    text = data if isinstance(data, str) else data.decode()
    try:
        value, end = _JSON_SCAN(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else json.loads(text)


# The adapters of every pooled connection: the default ones with the faster JSON loader.
_ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(_loads, _ADAPTERS)


def _queue_position(job: str) -> str:
    """The queue position of the job row `job` at %(now)s while it is pending, else NULL."""
    # In the statement that reads the job, so the job and the jobs ahead of it are read from one snapshot
    # (jobmill_jobs_ahead is STABLE: it runs in the caller's snapshot). It reads the per-block counts that
    # migration 0005 keeps beside the jobs, so its cost does not grow with the jobs ahead (see the
    # migration). The job itself is looked up as the caller, under row-level security for a tenant; the
    # function then counts every tenant's jobs ahead, as the claim order does.
    return (
        f"CASE WHEN {job}.status = {_status(JobStatus.PENDING)} AND {job}.run_after <= %(now)s"
        f" THEN 1 + jobmill_jobs_ahead({job}.queue, {job}.priority, {job}.seq, %(now)s) END"
    )


# The two statements of job_get_many_by_api_key, sent together and run in one implicit transaction (no
# Sync between them). The first reads the key as the owner (a key is looked up before its tenant is known)
# and switches the rest of the transaction to the key's tenant, as _all(tenant) does; the second
# then reads under row-level security, scoped to that tenant. No key, no row, no switch: the second
# statement's tenant is then NULL, which matches no job.
_TENANT_SWITCH_SQL = "SELECT set_config('role', %s, true), set_config('jobmill.tenant', %s, true)"
_KEY_TENANT = "current_setting('jobmill.tenant', true)"
_API_KEY_THEN_TENANT_SQL = (
    f"SELECT {API_KEY_COLUMNS}, set_config('role', %(role)s, true),"
    " set_config('jobmill.tenant', tenant, true) FROM jobmill_api_keys WHERE key_id = %(key_id)s"
)
_JOBS_OF_KEY_TENANT_SQL = (
    f"SELECT {JOB_COLUMNS}, {_queue_position('jobmill_jobs')} FROM jobmill_jobs"
    f" WHERE id = ANY(%(ids)s) AND tenant = {_KEY_TENANT}"
)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _job(r: Sequence[Any]) -> Job:
    # Positional, in the order of JOB_COLUMNS (= the fields of Job): this runs for every job read.
    return Job(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], JobStatus(r[8]), r[9], r[10], r[11], r[12], r[13],
        r[14], r[15], r[16], r[17], r[18], r[19], r[20], r[21], r[22], r[23], r[24], r[25], r[26], r[27],
        r[28], r[29], r[30], r[31],
    )  # fmt: skip


def _claimed_job(
    r: Sequence[Any], status: JobStatus, worker: str, token: UUID, expires: datetime, now: datetime
) -> Job:
    """A claimed job from the CLAIM_RESULT_COLUMNS of its row and the values the claim wrote."""
    return Job(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], status, None, None, None, r[8], r[9], r[10], r[11],
        r[12], None, r[13], r[14], r[15], worker, token, expires, r[16], r[17], now, r[18], now, r[19], r[20],
        r[21],
    )  # fmt: skip


def _event(r: Sequence[Any]) -> JobEvent:
    return JobEvent(
        id=r[0],
        job_id=r[1],
        tenant=r[2],
        seq=r[3],
        at=r[4],
        type=r[5],
        status=JobStatus(r[6]),
        stage=r[7],
        progress=r[8],
        message=r[9],
        data=r[10],
    )


def _events(source: str, event_type: str, data: str = "NULL") -> str:
    """A CTE that appends one event per changed job row of `source` (its event_seq is already bumped)."""
    return (
        "events AS (INSERT INTO jobmill_events"
        " (job_id, tenant, seq, at, type, status, stage, progress, message, data)"
        f" SELECT id, tenant, event_seq, %(now)s, '{event_type}', status, stage, progress, message,"
        f" {data} FROM {source})"
    )


def _notify_new_job(source: str) -> str:
    """A CTE that sends one `new_job` wake-up per distinct queue of the rows of `source`."""
    return (
        f"notified AS (SELECT pg_notify('{CHANNEL}', json_build_object('topic', 'new_job', 'queue', q)::text)"
        f" FROM (SELECT DISTINCT queue AS q FROM {source}) AS queues)"
    )


def _notify_cancel(source: str) -> str:
    """A CTE that tells the workers about each row of `source` that is now cancelling (the one running
    it stops it); a pending job cancelled outright needs no worker."""
    return (
        f"notified AS (SELECT pg_notify('{CHANNEL}',"
        f" json_build_object('topic', 'cancel', 'job_id', id)::text) FROM {source}"
        f" WHERE status = {_status(JobStatus.CANCELLING)})"
    )


# A CTE that is not referenced is not run; the outer SELECT touches `notified` through this column.
NOTIFIED_COLUMN = "(SELECT count(*) FROM notified)"


def _message(exc: BaseException) -> str:
    """libpq's message on one line (it puts hints and details on indented lines of their own)."""
    return " ".join(str(exc).split())


def _translate(exc: psycopg.Error) -> NoReturn:
    if isinstance(exc, psycopg_pool.PoolClosed):
        raise StoreError("the PostgreSQL store is closed") from exc
    if isinstance(exc, psycopg_pool.PoolTimeout):
        raise StoreUnavailable(f"no PostgreSQL connection available: {_message(exc)}") from exc
    state = exc.sqlstate
    if isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith("08") or state in _UNAVAILABLE_STATES
    ):
        raise StoreUnavailable(f"PostgreSQL is unavailable: {_message(exc)}") from exc
    if state in _CONTENTION_STATES:
        raise StoreContention(f"PostgreSQL error {state}: {_message(exc)}") from exc
    raise StoreError(f"PostgreSQL error{f' {state}' if state else ''}: {_message(exc)}") from exc


def _conninfo(url: str) -> str:
    """The URL plus what every jobmill connection needs: UTC timestamps, a name, a connect timeout."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigError(f"invalid PostgreSQL URL: {_message(exc)}") from exc
    extra: dict[str, Any] = {"options": f"{given.get('options') or ''} -c TimeZone=UTC".strip()}
    if not given.get("connect_timeout"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    if not given.get("application_name"):
        extra["application_name"] = "jobmill"
    return make_conninfo(url, **extra)


class _Subscription:
    def __init__(self, listener: _Listener, entry: _Subscriber) -> None:
        self._listener = listener
        self._entry = entry

    def close(self) -> None:
        self._listener.unsubscribe(self._entry)


@dataclass(frozen=True, eq=False)
class _Subscriber:
    callback: Callable[[Notification], None]
    topics: frozenset[str] | None  # None: every topic


class _Listener:
    """One daemon thread per store: a dedicated autocommit connection that LISTENs on the channels its
    subscribers need (CHANNEL always; EVENTS_CHANNEL once a subscriber wants the "events" topic).

    When the connection breaks it reconnects with backoff and then delivers `Notification("new_job",
    queue=None)`, so that subscribers poll again for whatever was sent while it was away.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = make_conninfo(conninfo, application_name=LISTENER_NAME)
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        self._channels = [CHANNEL]
        self._stop = threading.Event()
        # close() writes here: the thread sleeps in select() on its socket and this pipe, so it stops at
        # once instead of at its next timeout (a burst worker's exit would otherwise wait for it).
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def subscribe(
        self, callback: Callable[[Notification], None], topics: frozenset[str] | None
    ) -> Subscription:
        entry = _Subscriber(callback, topics)
        with self._lock:
            if self._stop.is_set():
                raise StoreError("the PostgreSQL store is closed")
            if (topics is None or "events" in topics) and EVENTS_CHANNEL not in self._channels:
                self._channels.append(EVENTS_CHANNEL)
                if self._conn is not None:
                    # psycopg's connection lock makes this safe beside the listener thread, which holds it
                    # only while it reads. Should the connection be broken, the reconnect LISTENs anew.
                    with contextlib.suppress(psycopg.Error):
                        self._conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            if self._thread is None:
                # Connect in the caller's thread: once subscribe() returns, nothing committed is missed.
                self._conn = self._connect(list(self._channels))
                self._thread = threading.Thread(target=self._run, name="jobmill-pg-listener", daemon=True)
                self._thread.start()
            self._subscribers.append(entry)
        return _Subscription(self, entry)

    def unsubscribe(self, entry: _Subscriber) -> None:
        with self._lock:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

    def close(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            thread = self._thread
            self._subscribers.clear()
            os.write(self._wake_w, b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if thread is None or not thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _connect(self, channels: list[str]) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            _translate(exc)
        try:
            for channel in channels:
                conn.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            conn.close()
            _translate(exc)
        return conn

    def _run(self) -> None:
        backoff = RECONNECT_BACKOFF_S[0]
        try:
            while not self._stop.is_set():
                conn = self._conn
                if conn is None:
                    with self._lock:
                        channels = list(self._channels)
                    try:
                        conn = self._connect(channels)
                        with self._lock:  # a channel subscribed meanwhile LISTENs on self._conn from now on
                            self._conn = conn
                            added = [c for c in self._channels if c not in channels]
                        for channel in added:
                            conn.execute(f"LISTEN {channel}")
                    except (StoreError, psycopg.Error) as exc:
                        if conn is not None:
                            conn.close()
                            self._conn = conn = None
                        log.warning("jobmill listener: reconnecting in %.1fs: %s", backoff, exc)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])
                        continue
                    backoff = RECONNECT_BACKOFF_S[0]
                    # Anything sent while the connection was down is lost: ask everyone to poll.
                    self._deliver(Notification("new_job", queue=None))
                try:
                    self._wait(conn)
                except psycopg.Error as exc:
                    if self._stop.is_set():
                        break
                    log.warning("jobmill listener: connection lost: %s", exc)
                    self._conn = None
                    conn.close()
        finally:
            conn = self._conn
            self._conn = None
            if conn is not None:
                conn.close()

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        """Sleep until the server sends something or close() wakes us; deliver what arrived."""
        readable, _, _ = select.select([conn.fileno(), self._wake_r], [], [], LISTEN_CHECK_S)
        if self._stop.is_set():
            return
        if not readable:
            # Quiet for a while: a dead connection shows here, and is replaced. Notifications that arrive
            # during the query are kept by psycopg and delivered just below.
            conn.execute("SELECT 1")
        # Reads what the socket (and psycopg's backlog) holds and returns: timeout 0 never blocks.
        for notify in conn.notifies(timeout=0):
            self._deliver_payload(notify.payload)

    def _deliver_payload(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            topic = data["topic"]
            if topic == "new_job":
                notification = Notification("new_job", queue=data.get("queue"))
            elif topic == "cancel":
                notification = Notification("cancel", job_id=UUID(data["job_id"]))
            elif topic == "events":
                notification = Notification("events")
            else:
                return
        except (ValueError, KeyError, TypeError):
            log.warning("jobmill listener: ignoring malformed notification %r", payload)
            return
        self._deliver(notification)

    def _deliver(self, notification: Notification) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for entry in subscribers:
            if entry.topics is not None and notification.topic not in entry.topics:
                continue
            try:
                entry.callback(notification)
            except Exception:
                log.exception("jobmill notification callback failed")


class PostgresJobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo = _conninfo(url)
        # One direct attempt first: it fails fast and with the server's reason (unknown database, bad
        # password, refused), where the pool would retry until its timeout and report only that.
        try:
            psycopg.connect(self._conninfo).close()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_message(exc)}") from exc
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={"autocommit": True, "context": _ADAPTERS},
            timeout=ACQUIRE_TIMEOUT_S,
            name="jobmill",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_message(exc)}") from exc
        self._listener = _Listener(self._conninfo)
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, as the owner role (workers, the reaper, operators: every
        tenant); psycopg errors leave this block as StoreError."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            _translate(exc)

    def _all(
        self, sql: str, args: dict[str, Any] | Sequence[Any], tenant: str | None = None
    ) -> list[tuple[Any, ...]]:
        """The rows of one statement, in one round trip.

        With a tenant, the statement runs as the jobmill_tenant role with jobmill.tenant set, so row-level
        security hides every other tenant's rows even from a query that forgot its tenant filter. The
        switch and the statement go out together in a pipeline, with no Sync between them: one implicit
        transaction, which the switch lasts (set_config(..., true)), and one round trip instead of the
        four of BEGIN, switch, statement, COMMIT."""
        try:
            with self._pool.connection() as conn:
                if tenant is None:
                    return conn.execute(sql, args).fetchall()
                with conn.pipeline():
                    conn.execute(_TENANT_SWITCH_SQL, (TENANT_ROLE, tenant))
                    cursor = conn.execute(sql, args)
                return cursor.fetchall()
        except psycopg.Error as exc:
            _translate(exc)

    def _one(self, sql: str, args: dict[str, Any], tenant: str | None = None) -> tuple[Any, ...] | None:
        rows = self._all(sql, args, tenant)
        return rows[0] if rows else None

    # -- lifecycle ------------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._connection() as conn:
            for migration in load_migrations("postgres"):
                with conn.transaction():
                    # Released at commit; a concurrent migrator waits here, then sees the work as done.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY KEY,"
                        f" name text NOT NULL, applied_at timestamptz NOT NULL)"
                    )
                    done = conn.execute(
                        f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = %s", (migration.version,)
                    ).fetchone()
                    if done is not None:
                        continue
                    conn.execute(migration.sql.encode())  # no parameters: several statements are allowed
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, datetime.now(UTC)),
                    )
                applied.append(migration.name)
        return applied

    def pending_migrations(self) -> list[str]:
        with self._connection() as conn:
            if conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone() == (None,):
                done: set[int] = set()
            else:
                done = {r[0] for r in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        return missing_migrations("postgres", done)

    def ping(self) -> None:
        """Raises StoreUnavailable unless the server answers within about PING_TIMEOUT_S.

        Not through `_connection`: that would wait ACQUIRE_TIMEOUT_S for the pool while the server is away
        (a hung probe instead of a 503). A pooled connection that died with a restarted server is dropped
        and one fresh connection tried, so the probe does not report the server down after it came back.
        """
        for last_try in (False, True):
            try:
                with self._pool.connection(timeout=PING_TIMEOUT_S) as conn:
                    try:
                        conn.execute("SELECT 1")
                        return
                    except psycopg.OperationalError:
                        # Idempotent, so retried once whatever the cause; a server that is really away
                        # fails the fresh connection too (refused, or PoolTimeout after PING_TIMEOUT_S).
                        if last_try:
                            raise
            except psycopg.Error as exc:
                _translate(exc)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._listener.close()
        self._pool.close()

    # -- operations -----------------------------------------------------------------------------------

    def _insert_cached(self, new: NewJob, now: datetime) -> JobInsertResult:
        """A job served from the result cache: created completed, with the earlier job's result."""
        assert new.cached_from is not None
        sql = (
            "WITH created AS (INSERT INTO jobmill_jobs (id, tenant, principal, kind, queue, priority, params,"
            " status, max_attempts, timeout_s, run_after, inputs, idempotency_key, request_hash, cache_key,"
            " cached, result, outputs, started_at, finished_at, event_seq, created_at, updated_at)"
            " VALUES (%(id)s, %(tenant)s, %(principal)s, %(kind)s, %(queue)s, %(priority)s,"
            " %(params)s::jsonb,"
            f" {_status(JobStatus.COMPLETED)}, %(max_attempts)s, %(timeout_s)s, %(run_after)s,"
            " %(inputs)s::jsonb, %(key)s, %(request_hash)s, %(cache_key)s, true, %(result)s::jsonb,"
            " %(outputs)s::jsonb, %(now)s, %(now)s, 1, %(now)s, %(now)s)"
            " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            f" RETURNING {JOB_COLUMNS}),"
            f" {_events('created', 'status', '%(data)s::jsonb')}"
            f" SELECT {JOB_COLUMNS} FROM created"
        )
        args = {
            "id": new.id, "tenant": new.tenant, "principal": new.principal, "kind": new.kind,
            "queue": new.queue, "priority": new.priority, "params": _dumps(new.params),
            "max_attempts": new.max_attempts, "timeout_s": new.timeout_s, "run_after": new.run_after,
            "inputs": _dumps(new.inputs), "key": new.idempotency_key, "request_hash": new.request_hash,
            "cache_key": new.cache_key, "result": _json(new.cached_from.result),
            "outputs": _dumps(new.cached_from.outputs), "now": now,
            "data": _dumps({"cached_from": str(new.cached_from.id)}),
        }  # fmt: skip
        row = self._one(sql, args)
        if row is not None:
            return JobInsertResult(_job(row), created=True)
        existing = self._one(
            f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE tenant = %(tenant)s AND idempotency_key = %(key)s",
            {"tenant": new.tenant, "key": new.idempotency_key},
        )
        if existing is None:
            raise StoreError(f"job {new.id} was neither inserted nor found by its idempotency key")
        return JobInsertResult(_job(existing), created=False)

    def job_insert_many(self, params: JobInsertManyParams) -> list[JobInsertResult]:
        if any(j.cached_from is not None for j in params.jobs):
            # Rare (cache hits), so they take a simple path of their own; the order of results is kept.
            fresh = [j for j in params.jobs if j.cached_from is None]
            by_id = {r.job.id: r for r in self.job_insert_many(JobInsertManyParams(fresh, params.now))}
            results: list[JobInsertResult] = []
            for new in params.jobs:
                if new.cached_from is not None:
                    results.append(self._insert_cached(new, params.now))
                else:
                    inserted = by_id.get(new.id)
                    results.append(inserted if inserted is not None else self._lookup_by_key(new))
            return results
        jobs = params.jobs
        if not jobs:
            return []
        # Arrays travel in binary (%b): much cheaper to encode than their text form.
        sql = (
            "WITH input AS (SELECT * FROM unnest(%(id)b::uuid[], %(tenant)b::text[], %(principal)b::text[],"
            " %(kind)b::text[], %(queue)b::text[], %(priority)b::int[], %(params)b::text[],"
            " %(max_attempts)b::int[], %(timeout_s)b::float8[], %(run_after)b::timestamptz[],"
            " %(inputs)b::text[], %(key)b::text[], %(request_hash)b::text[], %(cache_key)b::text[])"
            " WITH ORDINALITY AS t(id, tenant, principal, kind, queue, priority, params, max_attempts,"
            " timeout_s, run_after, inputs, idempotency_key, request_hash, cache_key, ord)),"
            " created AS (INSERT INTO jobmill_jobs (id, tenant, principal, kind, queue, priority, params,"
            " status, max_attempts, timeout_s, run_after, inputs, idempotency_key, request_hash, cache_key,"
            " event_seq, created_at, updated_at) SELECT id, tenant, principal, kind, queue, priority,"
            f" params::jsonb, {_status(JobStatus.PENDING)}, max_attempts, timeout_s, run_after,"
            " inputs::jsonb,"
            " idempotency_key, request_hash, cache_key, 1, %(now)s, %(now)s FROM input ORDER BY ord"
            " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            " RETURNING id, seq, tenant, queue, event_seq, status, stage, progress, message),"
            f" {_events('created', 'status')},"
            f" {_notify_new_job('created')}"
            f" SELECT id, seq, {NOTIFIED_COLUMN} FROM created"
        )
        args = {
            "id": [j.id for j in jobs],
            "tenant": [j.tenant for j in jobs],
            "principal": [j.principal for j in jobs],
            "kind": [j.kind for j in jobs],
            "queue": [j.queue for j in jobs],
            "priority": [j.priority for j in jobs],
            "params": (params_json := [_dumps(j.params) for j in jobs]),
            "max_attempts": [j.max_attempts for j in jobs],
            "timeout_s": [None if j.timeout_s is None else float(j.timeout_s) for j in jobs],
            "run_after": [j.run_after for j in jobs],
            "inputs": (inputs_json := [_dumps(j.inputs) for j in jobs]),
            "key": [j.idempotency_key for j in jobs],
            "request_hash": [j.request_hash for j in jobs],
            "cache_key": [j.cache_key for j in jobs],
            "now": params.now,
        }
        seqs: dict[UUID, int]
        existing: dict[tuple[str, str | None], Job] = {}
        with self._connection() as conn:
            if not any(j.idempotency_key is not None for j in jobs):
                # No conflict is possible: one statement, its own transaction.
                seqs = {r[0]: r[1] for r in conn.execute(sql, args)}
            else:
                with conn.transaction():
                    seqs = {r[0]: r[1] for r in conn.execute(sql, args)}
                    lost = [j for j in jobs if j.id not in seqs]
                    if lost:
                        rows = conn.execute(
                            f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE (tenant, idempotency_key) IN"
                            " (SELECT * FROM unnest(%b::text[], %b::text[]))",
                            ([j.tenant for j in lost], [j.idempotency_key for j in lost]),
                        ).fetchall()
                        for row in rows:
                            job = _job(row)
                            existing[(job.tenant, job.idempotency_key)] = job
        # A created job is exactly what was sent plus the defaults: build it here rather than read it back.
        # Its params and inputs are decoded from the JSON sent, so they are not the caller's objects.
        now = _utc(params.now)
        results = []
        for new, new_params, new_inputs in zip(jobs, params_json, inputs_json, strict=True):
            seq = seqs.get(new.id)
            if seq is None:
                found = existing.get((new.tenant, new.idempotency_key))
                if found is None:
                    raise StoreError(f"job {new.id} was neither inserted nor found by its idempotency key")
                results.append(JobInsertResult(found, created=False))
                continue
            job = Job(
                id=new.id,
                seq=seq,
                tenant=new.tenant,
                principal=new.principal,
                kind=new.kind,
                queue=new.queue,
                priority=new.priority,
                params=_loads(new_params),
                status=JobStatus.PENDING,
                stage=None,
                progress=None,
                message=None,
                attempts=0,
                max_attempts=new.max_attempts,
                timeout_s=None if new.timeout_s is None else float(new.timeout_s),
                run_after=_utc(new.run_after),
                result=None,
                error=None,
                inputs=_loads(new_inputs),
                outputs={},
                idempotency_key=new.idempotency_key,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                event_seq=1,
                created_at=now,
                started_at=None,
                finished_at=None,
                updated_at=now,
                request_hash=new.request_hash,
                cache_key=new.cache_key,
            )
            results.append(JobInsertResult(job, created=True))
        return results

    def _lookup_by_key(self, new: NewJob) -> JobInsertResult:
        row = self._one(
            f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE tenant = %(tenant)s AND idempotency_key = %(key)s",
            {"tenant": new.tenant, "key": new.idempotency_key},
        )
        if row is None:
            raise StoreError(f"job {new.id} was neither inserted nor found by its idempotency key")
        return JobInsertResult(_job(row), created=False)

    def job_get(self, params: JobGetParams) -> Job | None:
        sql = f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE id = %(id)s"
        if params.tenant is not None:
            sql += " AND tenant = %(tenant)s"
        row = self._one(sql, {"id": params.job_id, "tenant": params.tenant}, params.tenant)
        return None if row is None else _job(row)

    def job_get_many_by_api_key(self, params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        if not params.wait:
            raise WouldBlock("PostgreSQL answers over the network")
        # One round trip however many jobs (a pipeline of the two statements above): the reading thread
        # of a busy server waits for the GIL again after every round trip, so round trips cost most here.
        try:
            with self._pool.connection() as conn:
                with conn.pipeline():
                    keys = conn.execute(
                        _API_KEY_THEN_TENANT_SQL, {"key_id": params.key_id, "role": TENANT_ROLE}
                    )
                    jobs_read = conn.execute(
                        _JOBS_OF_KEY_TENANT_SQL, {"ids": list(params.job_ids), "now": params.now}
                    )
                found, rows = keys.fetchone(), jobs_read.fetchall()
        except psycopg.Error as exc:
            _translate(exc)
        if found is None:
            return ApiKeyJobs(None, {}, {})
        key = ApiKeyRecord(*found[:7])
        jobs = {row[0]: _job(row[:-1]) for row in rows}
        positions = {row[0]: int(row[-1]) for row in rows if row[-1] is not None}
        return ApiKeyJobs(key, jobs, positions)

    def job_list(self, params: JobListParams) -> list[Job]:
        where: list[str] = []
        if params.tenant is not None:
            where.append("tenant = %(tenant)s")
        if params.statuses:
            where.append(f"status IN {_status_in(params.statuses)}")
        if params.kind is not None:
            where.append("kind = %(kind)s")
        if params.queue is not None:
            where.append("queue = %(queue)s")
        if params.before_seq is not None:
            where.append("seq < %(before_seq)s")
        sql = f"SELECT {JOB_COLUMNS} FROM jobmill_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT %(limit)s"
        args = {
            "tenant": params.tenant,
            "kind": params.kind,
            "queue": params.queue,
            "before_seq": params.before_seq,
            "limit": params.limit,
        }
        return [_job(r) for r in self._all(sql, args, params.tenant)]

    def job_claim(self, params: JobClaimParams, on_held: ClaimHeld | None = None) -> list[Job]:
        queues = list(dict.fromkeys(params.queues))  # a queue named twice would be walked twice
        if not queues or params.limit <= 0:
            return []
        (source,) = params.edge.sources
        pick = (
            f"SELECT id, priority, seq FROM jobmill_jobs WHERE status = {_status(source)}"
            " AND queue = {queue} AND run_after <= %(now)s ORDER BY priority DESC, seq LIMIT %(limit)s"
            " FOR UPDATE SKIP LOCKED"
        )
        if len(queues) == 1:
            # Equality on the leading column: the claim index yields rows in claim order, LIMIT stops early.
            picked = pick.format(queue="%(queue)s")
        else:
            # One ordered index walk per queue, merged. (With queue = ANY(...), PostgreSQL 15 cannot use the
            # index order and would sort every runnable pending job of those queues on each claim.)
            # Rows locked here but cut by the outer LIMIT are released at commit, a moment later.
            picked = (
                "SELECT c.id FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN LATERAL ("
                + pick.format(queue="q.name")
                + ") AS c ORDER BY c.priority DESC, c.seq LIMIT %(limit)s"
            )
        target = params.edge.target
        sql = (
            f"WITH picked AS ({picked}),"
            f" claimed AS (UPDATE jobmill_jobs AS j SET status = {_status(target)},"
            " attempts = j.attempts + 1, lease_owner = %(worker)s, lease_token = %(token)s,"
            " lease_expires_at = %(expires)s, started_at = %(now)s, updated_at = %(now)s,"
            " event_seq = j.event_seq + 1, stage = NULL, progress = NULL, message = NULL, error = NULL"
            f" FROM picked WHERE j.id = picked.id RETURNING {CLAIMED_COLUMNS}),"
            f" {_events('claimed', 'status', '%(data)s::jsonb')}"
            f" SELECT {CLAIM_RESULT_COLUMNS} FROM claimed"
        )
        token = uuid4()
        now = _utc(params.now)
        expires = _utc(params.lease_expires_at)
        args = {
            "queue": queues[0],
            "queues": queues,
            "now": now,
            "limit": params.limit,
            "worker": params.worker_id,
            "token": token,
            "expires": expires,
            "data": _json({"attempt_by": params.worker_id}),
        }

        def claimed(rows: list[tuple[Any, ...]]) -> list[Job]:
            # Only the columns the claim did not set are read back; the rest is known here.
            jobs = [_claimed_job(r, target, params.worker_id, token, expires, now) for r in rows]
            jobs.sort(key=lambda j: (-j.priority, j.seq))
            return jobs

        if on_held is None:
            return claimed(self._all(sql, args))  # one round trip: the statement is its own transaction
        # The rows are locked once the statement has run: the caller hears of its jobs then, and starts
        # them while the COMMIT waits for its WAL flush. BEGIN, the statement and a flush request go out
        # together, so the rows come back in one round trip, before the commit. (The explicit BEGIN matters:
        # an implicit transaction would be committed by the Sync that ends the pipeline even when on_held
        # raised. psycopg's own transaction() costs a round trip of its own here.)
        with self._connection() as conn:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    jobs = claimed(conn.execute(sql, args).fetchall())
                    if jobs:
                        on_held(jobs)
                    conn.execute("COMMIT")
            except BaseException:
                if not conn.broken and conn.info.transaction_status is not TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                raise
        return jobs

    def job_heartbeat(self, params: JobHeartbeatParams) -> dict[UUID, JobStatus]:
        if not params.leases:
            return {}
        # Batches lock their rows in id order, so that two batches of one worker cannot deadlock.
        leases = sorted(params.leases, key=lambda lease: lease.job_id)
        rows = self._all(
            "UPDATE jobmill_jobs AS j SET lease_expires_at = %(expires)s"
            " FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[]) AS l(id, token)"
            f" WHERE j.id = l.id AND j.lease_token = l.token"
            f" AND j.status IN {_status_in((JobStatus.RUNNING, JobStatus.CANCELLING))}"
            " RETURNING j.id, j.status",
            {
                "expires": params.lease_expires_at,
                "ids": [lease.job_id for lease in leases],
                "tokens": [lease.token for lease in leases],
            },
        )
        return {r[0]: JobStatus(r[1]) for r in rows}

    def job_status_many(self, params: JobStatusManyParams) -> dict[UUID, JobStatus]:
        rows = self._all(
            "SELECT id, status FROM jobmill_jobs WHERE id = ANY(%(ids)s)", {"ids": list(params.job_ids)}
        )
        return {r[0]: JobStatus(r[1]) for r in rows}

    def job_set_progress(self, params: JobSetProgressParams) -> bool:
        row = self._one(
            "WITH changed AS (UPDATE jobmill_jobs SET stage = %(stage)s, progress = %(progress)s,"
            " message = %(message)s, updated_at = %(now)s, event_seq = event_seq + 1"
            f" WHERE id = %(id)s AND lease_token = %(token)s AND status = {_status(JobStatus.RUNNING)}"
            " RETURNING id, tenant, event_seq, status, stage, progress, message),"
            f" {_events('changed', 'progress')}"
            " SELECT id FROM changed",
            {
                "stage": params.stage,
                "progress": None if params.progress is None else float(params.progress),
                "message": params.message,
                "now": params.now,
                "id": params.lease.job_id,
                "token": params.lease.token,
            },
        )
        return row is not None

    def job_complete_many(self, params: JobCompleteManyParams) -> list[UUID]:
        if not params.completions:
            return []
        completions = sorted(params.completions, key=lambda c: c.lease.job_id)  # lock order, as above
        (source,) = params.edge.sources
        rows = self._all(
            "WITH input AS (SELECT * FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[], %(results)b::text[],"
            " %(outputs)b::text[]) AS t(id, token, result, outputs)),"
            f" done AS (UPDATE jobmill_jobs AS j SET status = {_status(params.edge.target)},"
            " result = i.result::jsonb, outputs = COALESCE(i.outputs::jsonb, j.outputs),"
            " finished_at = %(now)s, updated_at = %(now)s, lease_owner = NULL, lease_token = NULL,"
            " lease_expires_at = NULL, event_seq = j.event_seq + 1"
            f" FROM input AS i WHERE j.id = i.id AND j.lease_token = i.token AND j.status = {_status(source)}"
            " RETURNING j.id, j.tenant, j.event_seq, j.status, j.stage, j.progress, j.message),"
            f" {_events('done', 'status')}"
            " SELECT id FROM done",
            {
                "ids": [c.lease.job_id for c in completions],
                "tokens": [c.lease.token for c in completions],
                "results": [_json(c.result) for c in completions],
                "outputs": [_json(c.outputs) for c in completions],
                "now": params.now,
            },
        )
        done = {r[0] for r in rows}
        result: list[UUID] = []
        for completion in params.completions:  # in the caller's order
            job_id = completion.lease.job_id
            if job_id in done:
                done.discard(job_id)  # a lease listed twice completes once
                result.append(job_id)
        return result

    def _finish_attempt(
        self,
        lease: Lease,
        sources: Collection[JobStatus],
        target: JobStatus,
        now: datetime,
        error: dict[str, Any] | None,
        run_after: datetime | None,
        refund_attempt: bool,
    ) -> Job | None:
        """CAS on (id, lease token, status): end the attempt, append its event, wake workers if pending."""
        notify = target is JobStatus.PENDING
        sql = (
            f"WITH changed AS (UPDATE jobmill_jobs SET status = {_status(target)}, error = %(error)s::jsonb,"
            " run_after = COALESCE(%(run_after)s, run_after), finished_at = %(finished)s,"
            " updated_at = %(now)s, attempts = attempts - %(refund)s, lease_owner = NULL, lease_token = NULL,"
            " lease_expires_at = NULL, event_seq = event_seq + 1"
            f" WHERE id = %(id)s AND lease_token = %(token)s AND status IN {_status_in(sources)}"
            f" RETURNING {JOB_COLUMNS}),"
            f" {_events('changed', 'status', '%(data)s::jsonb')}"
            + (f", {_notify_new_job('changed')}" if notify else "")
            + f" SELECT {JOB_COLUMNS}{', ' + NOTIFIED_COLUMN if notify else ''} FROM changed"
        )
        row = self._one(
            sql,
            {
                "error": _json(error),
                "run_after": run_after,
                "finished": None if target is JobStatus.PENDING else now,
                "now": now,
                "refund": int(refund_attempt),
                "id": lease.job_id,
                "token": lease.token,
                "data": _json({"error": error}) if error else None,
            },
        )
        return None if row is None else _job(row)

    def job_fail(self, params: JobFailParams) -> Job | None:
        return self._finish_attempt(
            params.lease,
            params.edge.sources,
            params.edge.target,
            params.now,
            params.error,
            params.run_after,
            params.refund_attempt,
        )

    def job_confirm_cancel(self, params: JobConfirmCancelParams) -> Job | None:
        return self._finish_attempt(
            params.lease, params.edge.sources, params.edge.target, params.now, None, None, False
        )

    def job_recover(self, params: JobRecoverParams) -> Job | None:
        if params.expected_status not in params.edge.sources:
            raise ValueError(f"{params.expected_status} is not a source of {params.edge}")
        return self._finish_attempt(
            params.lease,
            (params.expected_status,),
            params.edge.target,
            params.now,
            params.error,
            params.run_after,
            False,
        )

    def _user_write(
        self,
        job_id: UUID,
        tenant: str | None,
        expected: Collection[JobStatus],
        assignments: str,
        args: dict[str, Any],
        now: datetime,
        event_type: str = "status",
        notify: Callable[[str], str] | None = None,
        audit: AuditEntry | None = None,
        principal: str | None = None,
    ) -> Job | None:
        """CAS on (id, status in `expected`[, tenant][, principal]) for user and admin operations;
        appends the event and, for an admin action, the audit row, all in one statement (so a lost race
        writes neither)."""
        where = f"id = %(id)s AND status IN {_status_in(expected)}"
        if tenant is not None:
            where += " AND tenant = %(tenant)s"
        if principal is not None:
            where += " AND principal = %(principal)s"
        audited = (
            ", audited AS (INSERT INTO jobmill_audit (at, tenant, actor, action, job_id, before, after)"
            " SELECT %(now)s, tenant, %(actor)s, %(action)s, id, %(before)s::jsonb,"
            " jsonb_build_object('status', status, 'priority', priority) FROM changed)"
            if audit is not None
            else ""
        )
        sql = (
            f"WITH changed AS (UPDATE jobmill_jobs SET {assignments}, updated_at = %(now)s,"
            f" event_seq = event_seq + 1 WHERE {where} RETURNING {JOB_COLUMNS}),"
            f" {_events('changed', event_type)}"
            + audited
            + (f", {notify('changed')}" if notify else "")
            + f" SELECT {JOB_COLUMNS}{', ' + NOTIFIED_COLUMN if notify else ''} FROM changed"
        )
        audit_args = (
            {"actor": audit.actor, "action": audit.action, "before": _json(audit.before)} if audit else {}
        )
        args = {**args, **audit_args, "id": job_id, "tenant": tenant, "principal": principal, "now": now}
        row = self._one(sql, args, tenant)
        return None if row is None else _job(row)

    def job_cancel(self, params: JobCancelParams) -> Job | None:
        # Each source status moves to its own edge's target; SET reads the row's status before the write.
        moves = params.moves
        status_case = " ".join(f"WHEN {_status(s)} THEN {_status(t)}" for s, t in moves.items())
        terminal = [s for s, t in moves.items() if t.is_terminal]
        finished = (
            f"CASE WHEN status IN {_status_in(terminal)} THEN %(now)s ELSE finished_at END"
            if terminal
            else "finished_at"
        )
        return self._user_write(
            params.job_id,
            params.tenant,
            moves,
            f"status = CASE status {status_case} END, finished_at = {finished}",
            {},
            params.now,
            notify=_notify_cancel,
            audit=params.audit,
            principal=params.principal,
        )

    def job_reprioritize(self, params: JobReprioritizeParams) -> Job | None:
        # A priority change is not a status change; it is recorded as a "priority" event.
        return self._user_write(
            params.job_id,
            params.tenant,
            (JobStatus.PENDING,),
            "priority = %(priority)s",
            {"priority": params.priority},
            params.now,
            event_type="priority",
            audit=params.audit,
        )

    def job_requeue(self, params: JobRequeueParams) -> Job | None:
        if params.expected_status not in params.edge.sources:
            raise ValueError(f"{params.expected_status} is not a source of {params.edge}")
        return self._user_write(
            params.job_id,
            params.tenant,
            (params.expected_status,),
            f"status = {_status(params.edge.target)}, attempts = 0, max_attempts = %(max_attempts)s,"
            " run_after = %(now)s, finished_at = NULL, error = NULL, result = NULL, stage = NULL,"
            " progress = NULL, message = NULL",
            {"max_attempts": params.max_attempts},
            params.now,
            notify=_notify_new_job,
            audit=params.audit,
        )

    def job_list_expired(self, params: JobListExpiredParams) -> list[Job]:
        rows = self._all(
            f"SELECT {JOB_COLUMNS} FROM jobmill_jobs"
            f" WHERE status IN {_status_in((JobStatus.RUNNING, JobStatus.CANCELLING))}"
            " AND lease_expires_at < %(now)s ORDER BY lease_expires_at LIMIT %(limit)s",
            {"now": params.now, "limit": params.limit},
        )
        return [_job(r) for r in rows]

    def job_queue_position(self, params: JobQueuePositionParams) -> int | None:
        sql = f"SELECT {_queue_position('j')} FROM jobmill_jobs AS j WHERE j.id = %(id)s"
        if params.tenant is not None:
            sql += " AND j.tenant = %(tenant)s"
        row = self._one(sql, {"id": params.job_id, "now": params.now, "tenant": params.tenant}, params.tenant)
        return None if row is None or row[0] is None else int(row[0])

    def event_list(self, params: EventListParams) -> list[JobEvent]:
        where: list[str] = []
        if params.job_id is not None:
            where.append("job_id = %(job_id)s AND seq > %(after_seq)s")
        if params.tenant is not None:
            where.append("tenant = %(tenant)s")
        if params.after_id:
            where.append("id > %(after_id)s")
        sql = f"SELECT {EVENT_COLUMNS} FROM jobmill_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT %(limit)s"
        args = {
            "job_id": params.job_id,
            "after_seq": params.after_seq,
            "tenant": params.tenant,
            "after_id": params.after_id,
            "limit": params.limit,
        }
        return [_event(r) for r in self._all(sql, args, params.tenant)]

    def job_find_cached(self, params: JobFindCachedParams) -> Job | None:
        row = self._one(
            f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE tenant = %(tenant)s AND cache_key = %(key)s"
            f" AND kind = %(kind)s AND status = {_status(JobStatus.COMPLETED)} AND finished_at > %(after)s"
            " ORDER BY finished_at DESC LIMIT 1",
            {
                "tenant": params.tenant,
                "key": params.cache_key,
                "kind": params.kind,
                "after": params.finished_after,
            },
            params.tenant,
        )
        return None if row is None else _job(row)

    def job_queue_stats(self, params: JobQueueStatsParams) -> list[QueueStats]:
        sql = (
            "SELECT queue,"
            " count(*) FILTER (WHERE status = 'pending'),"
            " count(*) FILTER (WHERE status IN ('running', 'cancelling')),"
            " count(*) FILTER (WHERE status = 'completed' AND finished_at >= %(since)s),"
            " count(*) FILTER (WHERE status = 'failed' AND finished_at >= %(since)s),"
            " min(created_at) FILTER (WHERE status = 'pending')"
            " FROM jobmill_jobs"
            + (" WHERE tenant = %(tenant)s" if params.tenant is not None else "")
            + " GROUP BY queue ORDER BY queue"
        )
        rows = self._all(sql, {"since": params.since, "tenant": params.tenant}, params.tenant)
        return [QueueStats(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def api_key_insert(self, params: ApiKeyInsertParams) -> ApiKeyRecord:
        key = params.key
        self._one(
            "WITH created AS (INSERT INTO jobmill_api_keys"
            " (key_id, tenant, role, name, secret_hash, created_at)"
            " VALUES (%(key_id)s, %(tenant)s, %(role)s, %(name)s, %(hash)s, %(at)s) RETURNING *),"
            " audited AS (INSERT INTO jobmill_audit (at, tenant, actor, action, after)"
            " SELECT %(at)s, tenant, %(actor)s, %(action)s,"
            " jsonb_build_object('key_id', key_id, 'role', role, 'name', name) FROM created)"
            " SELECT key_id FROM created",
            {
                "key_id": key.key_id, "tenant": key.tenant, "role": key.role, "name": key.name,
                "hash": key.secret_hash, "at": key.created_at, "actor": params.audit.actor,
                "action": params.audit.action,
            },
        )  # fmt: skip
        return key

    def api_key_get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one(
            f"SELECT {API_KEY_COLUMNS} FROM jobmill_api_keys WHERE key_id = %(key_id)s", {"key_id": key_id}
        )
        return None if row is None else ApiKeyRecord(*row)

    def api_key_list(self, params: ApiKeyListParams) -> list[ApiKeyRecord]:
        sql = f"SELECT {API_KEY_COLUMNS} FROM jobmill_api_keys"
        if params.tenant is not None:
            sql += " WHERE tenant = %(tenant)s"
        return [
            ApiKeyRecord(*r)
            for r in self._all(sql + " ORDER BY created_at, key_id", {"tenant": params.tenant})
        ]

    def api_key_revoke(self, params: ApiKeyRevokeParams) -> ApiKeyRecord | None:
        where = "key_id = %(key_id)s AND revoked_at IS NULL"
        if params.tenant is not None:
            where += " AND tenant = %(tenant)s"
        row = self._one(
            f"WITH revoked AS (UPDATE jobmill_api_keys SET revoked_at = %(now)s WHERE {where}"
            f" RETURNING {API_KEY_COLUMNS}),"
            " audited AS (INSERT INTO jobmill_audit (at, tenant, actor, action, after)"
            " SELECT %(now)s, tenant, %(actor)s, %(action)s,"
            " jsonb_build_object('key_id', key_id, 'revoked', true) FROM revoked)"
            f" SELECT {API_KEY_COLUMNS} FROM revoked",
            {
                "key_id": params.key_id, "tenant": params.tenant, "now": params.now,
                "actor": params.audit.actor, "action": params.audit.action,
            },
        )  # fmt: skip
        return None if row is None else ApiKeyRecord(*row)

    def audit_list(self, params: AuditListParams) -> list[AuditRecord]:
        sql = f"SELECT {AUDIT_COLUMNS} FROM jobmill_audit WHERE tenant = %(tenant)s"
        if params.before_id is not None:
            sql += " AND id < %(before)s"
        rows = self._all(
            sql + " ORDER BY id DESC LIMIT %(limit)s",
            {"tenant": params.tenant, "before": params.before_id, "limit": params.limit},
            params.tenant,
        )
        return [AuditRecord(*r) for r in rows]

    def notification_subscribe(
        self, callback: Callable[[Notification], None], topics: frozenset[str] | None = None
    ) -> Subscription:
        return self._listener.subscribe(callback, topics)

    def change_counter(self) -> int | None:
        return None  # LISTEN/NOTIFY reaches every process; there is nothing to poll
