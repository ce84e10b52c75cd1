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

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobmill.domain.job import Job, JobEvent, JobStatus
from jobmill.errors import StoreError, StoreUnavailable
from jobmill.store.base import (
    EventListParams,
    JobCancelParams,
    JobClaimParams,
    JobCompleteManyParams,
    JobConfirmCancelParams,
    JobFailParams,
    JobGetParams,
    JobHeartbeatParams,
    JobInsertManyParams,
    JobInsertResult,
    JobListExpiredParams,
    JobListParams,
    JobQueuePositionParams,
    JobRecoverParams,
    JobReprioritizeParams,
    JobRequeueParams,
    JobSetProgressParams,
    Lease,
    Notification,
    Subscription,
)
from jobmill.store.migrations import MIGRATIONS_TABLE, load_migrations

log = logging.getLogger(__name__)

CHANNEL = "jobmill"
# pg_advisory_xact_lock key that serialises concurrent migrators: "jobmill" in ASCII.
MIGRATION_LOCK_KEY = 0x6A6F626D696C6C

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
CONNECT_TIMEOUT_S = 5  # per connection attempt (libpq connect_timeout)
OPEN_TIMEOUT_S = 5.0  # the first connection, when the store is opened
ACQUIRE_TIMEOUT_S = 10.0  # waiting for a free pooled connection
LISTEN_POLL_S = 0.2  # how often the listener thread checks whether it should stop
RECONNECT_BACKOFF_S = (0.1, 5.0)  # listener reconnection: first and longest wait

# Same order as the fields of Job, so a row maps onto it positionally.
JOB_COLUMNS = (
    "id, seq, tenant, principal, kind, queue, priority, params, status, stage, progress, message, attempts,"
    " max_attempts, timeout_s, run_after, result, error, inputs, outputs, idempotency_key, lease_owner,"
    " lease_token, lease_expires_at, event_seq, created_at, started_at, finished_at, updated_at"
)
EVENT_COLUMNS = "id, job_id, tenant, seq, at, type, status, stage, progress, message, data"
CLAIMED_COLUMNS = ", ".join("j." + c for c in JOB_COLUMNS.split(", "))

# SQLSTATEs that mean "the server cannot serve us right now" rather than "this statement failed".
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300", "53400", "25006"})


def _status(value: JobStatus) -> str:
    """A status as an SQL literal (from the enum only, so it is safe to inline)."""
    return "'" + JobStatus(value).value + "'"


def _status_in(values: Collection[JobStatus]) -> str:
    if not values:
        raise ValueError("an edge needs at least one source status")
    return "(" + ", ".join(sorted(_status(v) for v in values)) + ")"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _job(r: Sequence[Any]) -> Job:
    return Job(
        id=r[0],
        seq=r[1],
        tenant=r[2],
        principal=r[3],
        kind=r[4],
        queue=r[5],
        priority=r[6],
        params=r[7],
        status=JobStatus(r[8]),
        stage=r[9],
        progress=r[10],
        message=r[11],
        attempts=r[12],
        max_attempts=r[13],
        timeout_s=r[14],
        run_after=r[15],
        result=r[16],
        error=r[17],
        inputs=r[18],
        outputs=r[19],
        idempotency_key=r[20],
        lease_owner=r[21],
        lease_token=r[22],
        lease_expires_at=r[23],
        event_seq=r[24],
        created_at=r[25],
        started_at=r[26],
        finished_at=r[27],
        updated_at=r[28],
    )


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
    return (
        f"notified AS (SELECT pg_notify('{CHANNEL}',"
        f" json_build_object('topic', 'cancel', 'job_id', id)::text) FROM {source})"
    )


# A CTE that is not referenced is not run; the outer SELECT touches `notified` through this column.
NOTIFIED_COLUMN = "(SELECT count(*) FROM notified)"


def _translate(exc: psycopg.Error) -> NoReturn:
    if isinstance(exc, psycopg_pool.PoolClosed):
        raise StoreError("the PostgreSQL store is closed") from exc
    if isinstance(exc, psycopg_pool.PoolTimeout):
        raise StoreUnavailable(f"no PostgreSQL connection available: {exc}") from exc
    state = exc.sqlstate
    if isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith("08") or state in _UNAVAILABLE_STATES
    ):
        raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
    raise StoreError(f"PostgreSQL error{f' {state}' if state else ''}: {exc}") from exc


def _conninfo(url: str) -> str:
    """The URL plus what every jobmill connection needs: UTC timestamps, a name, a connect timeout."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(f"invalid PostgreSQL URL: {exc}") from exc
    extra: dict[str, Any] = {"options": f"{given.get('options') or ''} -c TimeZone=UTC".strip()}
    if not given.get("connect_timeout"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    if not given.get("application_name"):
        extra["application_name"] = "jobmill"
    return make_conninfo(url, **extra)


class _Subscription:
    def __init__(self, listener: _Listener, callback: Callable[[Notification], None]) -> None:
        self._listener = listener
        self._callback = callback

    def close(self) -> None:
        self._listener.unsubscribe(self._callback)


class _Listener:
    """One daemon thread per store: a dedicated autocommit connection that LISTENs on the channel.

    When the connection breaks it reconnects with backoff and then delivers `Notification("new_job",
    queue=None)`, so that subscribers poll again for whatever was sent while it was away.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Notification], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def subscribe(self, callback: Callable[[Notification], None]) -> Subscription:
        with self._lock:
            if self._stop.is_set():
                raise StoreError("the PostgreSQL store is closed")
            if self._thread is None:
                # Connect in the caller's thread: once subscribe() returns, nothing committed is missed.
                self._conn = self._connect()
                self._thread = threading.Thread(target=self._run, name="jobmill-pg-listener", daemon=True)
                self._thread.start()
            self._callbacks.append(callback)
        return _Subscription(self, callback)

    def unsubscribe(self, callback: Callable[[Notification], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
            self._callbacks.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            _translate(exc)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
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
                    try:
                        conn = self._conn = self._connect()
                    except StoreError as exc:
                        log.warning("jobmill listener: reconnecting in %.1fs: %s", backoff, exc)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])
                        continue
                    backoff = RECONNECT_BACKOFF_S[0]
                    # Anything sent while the connection was down is lost: ask everyone to poll.
                    self._deliver(Notification("new_job", queue=None))
                try:
                    for notify in conn.notifies(timeout=LISTEN_POLL_S):
                        self._deliver_payload(notify.payload)
                        if self._stop.is_set():
                            break
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

    def _deliver_payload(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            topic = data["topic"]
            if topic == "new_job":
                notification = Notification("new_job", queue=data.get("queue"))
            elif topic == "cancel":
                notification = Notification("cancel", job_id=UUID(data["job_id"]))
            else:
                return
        except (ValueError, KeyError, TypeError):
            log.warning("jobmill listener: ignoring malformed notification %r", payload)
            return
        self._deliver(notification)

    def _deliver(self, notification: Notification) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(notification)
            except Exception:
                log.exception("jobmill notification callback failed")


class PostgresJobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo = _conninfo(url)
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={"autocommit": True},
            timeout=ACQUIRE_TIMEOUT_S,
            name="jobmill",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        self._listener = _Listener(self._conninfo)
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; psycopg errors leave this block as StoreError."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            _translate(exc)

    def _one(self, sql: str, args: dict[str, Any]) -> tuple[Any, ...] | None:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: dict[str, Any] | Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

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

    def ping(self) -> None:
        self._one("SELECT 1", {})

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._listener.close()
        self._pool.close()

    # -- operations -----------------------------------------------------------------------------------

    def job_insert_many(self, params: JobInsertManyParams) -> list[JobInsertResult]:
        jobs = params.jobs
        if not jobs:
            return []
        sql = (
            "WITH input AS (SELECT * FROM unnest(%(id)s::uuid[], %(tenant)s::text[], %(principal)s::text[],"
            " %(kind)s::text[], %(queue)s::text[], %(priority)s::int[], %(params)s::text[],"
            " %(max_attempts)s::int[], %(timeout_s)s::float8[], %(run_after)s::timestamptz[],"
            " %(inputs)s::text[], %(key)s::text[]) WITH ORDINALITY AS t(id, tenant, principal, kind, queue,"
            " priority, params, max_attempts, timeout_s, run_after, inputs, idempotency_key, ord)),"
            " created AS (INSERT INTO jobmill_jobs (id, tenant, principal, kind, queue, priority, params,"
            " status, max_attempts, timeout_s, run_after, inputs, idempotency_key, event_seq, created_at,"
            " updated_at) SELECT id, tenant, principal, kind, queue, priority, params::jsonb, 'pending',"
            " max_attempts, timeout_s, run_after, inputs::jsonb, idempotency_key, 1, %(now)s, %(now)s"
            " FROM input ORDER BY ord"
            " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            f" RETURNING {JOB_COLUMNS}),"
            f" {_events('created', 'status')},"
            f" {_notify_new_job('created')}"
            f" SELECT {JOB_COLUMNS}, {NOTIFIED_COLUMN} FROM created"
        )
        args = {
            "id": [j.id for j in jobs],
            "tenant": [j.tenant for j in jobs],
            "principal": [j.principal for j in jobs],
            "kind": [j.kind for j in jobs],
            "queue": [j.queue for j in jobs],
            "priority": [j.priority for j in jobs],
            "params": [json.dumps(j.params, separators=(",", ":")) for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "timeout_s": [None if j.timeout_s is None else float(j.timeout_s) for j in jobs],
            "run_after": [j.run_after for j in jobs],
            "inputs": [json.dumps(j.inputs, separators=(",", ":")) for j in jobs],
            "key": [j.idempotency_key for j in jobs],
            "now": params.now,
        }
        keyed = any(j.idempotency_key is not None for j in jobs)
        with self._connection() as conn:
            if not keyed:
                # No conflict is possible: one statement, its own transaction.
                created = {row[0]: _job(row) for row in conn.execute(sql, args).fetchall()}
                return [JobInsertResult(created[j.id], created=True) for j in jobs]
            with conn.transaction():
                created = {row[0]: _job(row) for row in conn.execute(sql, args).fetchall()}
                lost = [j for j in jobs if j.id not in created]
                existing: dict[tuple[str, str], Job] = {}
                if lost:
                    rows = conn.execute(
                        f"SELECT {JOB_COLUMNS} FROM jobmill_jobs"
                        " WHERE (tenant, idempotency_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                        ([j.tenant for j in lost], [j.idempotency_key for j in lost]),
                    ).fetchall()
                    for row in rows:
                        job = _job(row)
                        assert job.idempotency_key is not None
                        existing[(job.tenant, job.idempotency_key)] = job
        results: list[JobInsertResult] = []
        for new in jobs:
            if new.id in created:
                results.append(JobInsertResult(created[new.id], created=True))
                continue
            found = existing.get((new.tenant, new.idempotency_key or ""))
            if found is None:
                raise StoreError(f"job {new.id} was neither inserted nor found by its idempotency key")
            results.append(JobInsertResult(found, created=False))
        return results

    def job_get(self, params: JobGetParams) -> Job | None:
        sql = f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE id = %(id)s"
        if params.tenant is not None:
            sql += " AND tenant = %(tenant)s"
        row = self._one(sql, {"id": params.job_id, "tenant": params.tenant})
        return None if row is None else _job(row)

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
        return [_job(r) for r in self._all(sql, args)]

    def job_claim(self, params: JobClaimParams) -> list[Job]:
        if not params.queues or params.limit <= 0:
            return []
        (source,) = params.edge.sources
        pick = (
            f"SELECT id, priority, seq FROM jobmill_jobs WHERE status = {_status(source)}"
            " AND queue = {queue} AND run_after <= %(now)s ORDER BY priority DESC, seq LIMIT %(limit)s"
            " FOR UPDATE SKIP LOCKED"
        )
        if len(params.queues) == 1:
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
        sql = (
            f"WITH picked AS ({picked}),"
            f" claimed AS (UPDATE jobmill_jobs AS j SET status = {_status(params.edge.target)},"
            " attempts = j.attempts + 1, lease_owner = %(worker)s, lease_token = %(token)s,"
            " lease_expires_at = %(expires)s, started_at = %(now)s, updated_at = %(now)s,"
            " event_seq = j.event_seq + 1, stage = NULL, progress = NULL, message = NULL, error = NULL"
            f" FROM picked WHERE j.id = picked.id RETURNING {CLAIMED_COLUMNS}),"
            f" {_events('claimed', 'status', '%(data)s::jsonb')}"
            f" SELECT {JOB_COLUMNS} FROM claimed"
        )
        args = {
            "queue": params.queues[0],
            "queues": list(params.queues),
            "now": params.now,
            "limit": params.limit,
            "worker": params.worker_id,
            "token": uuid4(),
            "expires": params.lease_expires_at,
            "data": _json({"attempt_by": params.worker_id}),
        }
        jobs = [_job(r) for r in self._all(sql, args)]
        jobs.sort(key=lambda j: (-j.priority, j.seq))
        return jobs

    def job_heartbeat(self, params: JobHeartbeatParams) -> dict[UUID, JobStatus]:
        if not params.leases:
            return {}
        rows = self._all(
            "UPDATE jobmill_jobs AS j SET lease_expires_at = %(expires)s"
            " FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS l(id, token)"
            f" WHERE j.id = l.id AND j.lease_token = l.token"
            f" AND j.status IN {_status_in((JobStatus.RUNNING, JobStatus.CANCELLING))}"
            " RETURNING j.id, j.status",
            {
                "expires": params.lease_expires_at,
                "ids": [lease.job_id for lease in params.leases],
                "tokens": [lease.token for lease in params.leases],
            },
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
        completions = params.completions
        if not completions:
            return []
        (source,) = params.edge.sources
        rows = self._all(
            "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(results)s::text[],"
            " %(outputs)s::text[]) AS t(id, token, result, outputs)),"
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
        for completion in completions:
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
        expected: JobStatus,
        assignments: str,
        args: dict[str, Any],
        now: datetime,
        event_type: str = "status",
        notify: Callable[[str], str] | None = None,
    ) -> Job | None:
        """CAS on (id, status[, tenant]) for user and admin operations; appends the event."""
        where = f"id = %(id)s AND status = {_status(expected)}"
        if tenant is not None:
            where += " AND tenant = %(tenant)s"
        sql = (
            f"WITH changed AS (UPDATE jobmill_jobs SET {assignments}, updated_at = %(now)s,"
            f" event_seq = event_seq + 1 WHERE {where} RETURNING {JOB_COLUMNS}),"
            f" {_events('changed', event_type)}"
            + (f", {notify('changed')}" if notify else "")
            + f" SELECT {JOB_COLUMNS}{', ' + NOTIFIED_COLUMN if notify else ''} FROM changed"
        )
        row = self._one(sql, {**args, "id": job_id, "tenant": tenant, "now": now})
        return None if row is None else _job(row)

    def job_cancel(self, params: JobCancelParams) -> Job | None:
        if params.expected_status not in params.edge.sources:
            raise ValueError(f"{params.expected_status} is not a source of {params.edge}")
        target = params.edge.target
        return self._user_write(
            params.job_id,
            params.tenant,
            params.expected_status,
            f"status = {_status(target)}, finished_at = COALESCE(%(finished)s, finished_at)",
            {"finished": params.now if target.is_terminal else None},
            params.now,
            notify=_notify_cancel if target is JobStatus.CANCELLING else None,
        )

    def job_reprioritize(self, params: JobReprioritizeParams) -> Job | None:
        # A priority change is not a status change; it is recorded as a "priority" event.
        return self._user_write(
            params.job_id,
            params.tenant,
            JobStatus.PENDING,
            "priority = %(priority)s",
            {"priority": params.priority},
            params.now,
            event_type="priority",
        )

    def job_requeue(self, params: JobRequeueParams) -> Job | None:
        if params.expected_status not in params.edge.sources:
            raise ValueError(f"{params.expected_status} is not a source of {params.edge}")
        return self._user_write(
            params.job_id,
            params.tenant,
            params.expected_status,
            f"status = {_status(params.edge.target)}, attempts = 0, max_attempts = %(max_attempts)s,"
            " run_after = %(now)s, finished_at = NULL, error = NULL, result = NULL, stage = NULL,"
            " progress = NULL, message = NULL",
            {"max_attempts": params.max_attempts},
            params.now,
            notify=_notify_new_job,
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
        # One statement, so the job and the jobs ahead of it are read from one snapshot. The two counts
        # are index range scans of the claim index: higher priorities, then the same priority earlier.
        pending = _status(JobStatus.PENDING)
        ahead = (
            f"SELECT count(*) FROM jobmill_jobs AS o WHERE o.status = {pending} AND o.queue = j.queue"
            " AND o.run_after <= %(now)s AND {cond}"
        )
        sql = (
            "SELECT 1 + ("
            + ahead.format(cond="o.priority > j.priority")
            + ") + ("
            + ahead.format(cond="o.priority = j.priority AND o.seq < j.seq")
            + f") FROM jobmill_jobs AS j WHERE j.id = %(id)s AND j.status = {pending}"
            " AND j.run_after <= %(now)s"
        )
        if params.tenant is not None:
            sql += " AND j.tenant = %(tenant)s"
        row = self._one(sql, {"id": params.job_id, "now": params.now, "tenant": params.tenant})
        return None if row is None else int(row[0])

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
        return [_event(r) for r in self._all(sql, args)]

    def notification_subscribe(self, callback: Callable[[Notification], None]) -> Subscription:
        return self._listener.subscribe(callback)
