"""SQLite backend: one file in WAL mode, short write transactions, for a single machine.

Several processes may share the file (API node and workers): writers queue for their turn in the kernel
(sqlite_turn), then take the lock with BEGIN IMMEDIATE and wait on it (busy timeout) instead of failing.
Wake-ups reach stores of the same process at once; other processes notice new work and cancel requests
by polling (JOBMILL_POLL_INTERVAL_S).
`memory://` gives a private in-memory database with the same code, for users' unit tests.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from jobmill.domain.admin import ApiKeyRecord, AuditEntry, AuditRecord
from jobmill.domain.job import Job, JobEvent, JobStatus, NewJob
from jobmill.errors import ConfigError, StoreError, StoreUnavailable
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
from jobmill.store.sqlite_turn import TurnTimeout, open_turn

JOB_COLUMNS = (
    "seq, id, tenant, principal, kind, queue, priority, params, status, stage, progress, message, attempts,"
    " max_attempts, timeout_s, run_after, result, error, inputs, outputs, idempotency_key, lease_owner,"
    " lease_token, lease_expires_at, event_seq, created_at, started_at, finished_at, updated_at,"
    " request_hash, cache_key, cached"
)
# What a claim reads back: the columns it did not set itself (and those its events copy).
CLAIM_RESULT_COLUMNS = (
    "seq, id, tenant, principal, kind, queue, priority, params, attempts, max_attempts, timeout_s, run_after,"
    " result, inputs, outputs, idempotency_key, event_seq, created_at, finished_at, request_hash, cache_key,"
    " cached, status, stage, progress, message"
)
# An event row is derived from the job row it describes, inside the same transaction.
EVENT_FROM_RETURNING = "id, tenant, event_seq, status, stage, progress, message"

# SQLite limits the number of bound parameters per statement; batches are cut to stay below it.
MAX_BATCH = 500
BUSY_TIMEOUT_S = 30.0  # how long a statement waits for another process's lock on the database

# The runnable pending jobs claimed before a job, from the per-block counts of migration 0003 (kept by its
# triggers): higher priorities and the earlier blocks of the job's priority (about pending/width rows),
# the job's own block before it (fewer than `width` entries of the claim index), less the delayed jobs
# ahead, which the blocks count but the claim order skips (one index entry per delayed job of the queue).
JOBS_AHEAD_SQL = (
    "SELECT (SELECT coalesce(sum(pending), 0) FROM jobmill_position_blocks"
    " WHERE queue = :queue AND priority > :priority)"
    " + (SELECT coalesce(sum(pending), 0) FROM jobmill_position_blocks"
    " WHERE queue = :queue AND priority = :priority AND block < :block)"
    " + (SELECT count(*) FROM jobmill_jobs WHERE status = 'pending' AND queue = :queue"
    " AND priority = :priority AND seq >= :block_start AND seq < :seq)"
    " - (SELECT count(*) FROM jobmill_jobs INDEXED BY jobmill_jobs_delayed WHERE status = 'pending'"
    " AND queue = :queue AND run_after > :now"
    " AND (priority > :priority OR (priority = :priority AND seq < :seq)))"
)


def _ts(value: datetime) -> float:
    return value.timestamp()


def _ts_opt(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _dt_opt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _unjson(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


def _claim_order(source: JobStatus, queues: int) -> str:
    """The seqs of the next `limit` runnable jobs of `queues` queues, in claim order (parameters: queue,
    now and limit for each queue, then limit).

    One walk of the claim index per queue, stopped by its LIMIT, then merged: the cost is the jobs taken,
    not the jobs waiting. Left to itself, SQLite plans `queue IN (...) AND run_after <= ?` through the
    delayed-jobs index (queue, run_after) and sorts every pending job of the queues on each claim, which
    made a claim at 20,000 pending jobs cost 13 ms. The claim index is partial (status = 'pending'), so the
    status must be written as a literal for SQLite to see that it applies.
    """
    walk = (
        "SELECT seq, priority FROM jobmill_jobs INDEXED BY jobmill_jobs_claim"
        f" WHERE status = '{source.value}' AND queue = ? AND run_after <= ?"
        " ORDER BY priority DESC, seq LIMIT ?"
    )
    merged = " UNION ALL ".join(f"SELECT * FROM ({walk})" for _ in range(queues))
    return f"SELECT seq FROM ({merged}) ORDER BY priority DESC, seq LIMIT ?"


def _object(text: str) -> Any:
    """A JSON object column; most jobs have no params, inputs or outputs, and '{}' needs no parser."""
    return {} if text == "{}" else json.loads(text)


def _claimed_job(
    r: sqlite3.Row, status: JobStatus, worker: str, token: UUID, expires: datetime, started: datetime
) -> Job:
    """A claimed job from the CLAIM_RESULT_COLUMNS of its row and the values the claim wrote."""
    return Job(
        UUID(r[1]), r[0], r[2], r[3], r[4], r[5], r[6], _object(r[7]), status, None, None, None, r[8], r[9],
        r[10], _dt(r[11]), _unjson(r[12]), None, _object(r[13]), _object(r[14]), r[15], worker, token,
        expires, r[16], _dt(r[17]), started, _dt_opt(r[18]), started, r[19], r[20], bool(r[21]),
    )  # fmt: skip


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=UUID(row["id"]),
        seq=row["seq"],
        tenant=row["tenant"],
        principal=row["principal"],
        kind=row["kind"],
        queue=row["queue"],
        priority=row["priority"],
        params=json.loads(row["params"]),
        status=JobStatus(row["status"]),
        stage=row["stage"],
        progress=row["progress"],
        message=row["message"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        run_after=_dt(row["run_after"]),
        result=_unjson(row["result"]),
        error=_unjson(row["error"]),
        inputs=json.loads(row["inputs"]),
        outputs=json.loads(row["outputs"]),
        idempotency_key=row["idempotency_key"],
        lease_owner=row["lease_owner"],
        lease_token=None if row["lease_token"] is None else UUID(row["lease_token"]),
        lease_expires_at=_dt_opt(row["lease_expires_at"]),
        event_seq=row["event_seq"],
        created_at=_dt(row["created_at"]),
        started_at=_dt_opt(row["started_at"]),
        finished_at=_dt_opt(row["finished_at"]),
        updated_at=_dt(row["updated_at"]),
        request_hash=row["request_hash"],
        cache_key=row["cache_key"],
        cached=bool(row["cached"]),
    )


def _api_key_from_row(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        role=row["role"],
        name=row["name"],
        secret_hash=row["secret_hash"],
        created_at=_dt(row["created_at"]),
        revoked_at=_dt_opt(row["revoked_at"]),
    )


def _audit_from_row(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        at=_dt(row["at"]),
        tenant=row["tenant"],
        actor=row["actor"],
        action=row["action"],
        job_id=None if row["job_id"] is None else UUID(row["job_id"]),
        before=_unjson(row["before"]),
        after=_unjson(row["after"]),
    )


def _job_snapshot(row: sqlite3.Row) -> dict[str, Any]:
    """What the audit log keeps of a job before and after an admin action."""
    return {"status": row["status"], "priority": row["priority"]}


def _event_from_row(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        id=row["id"],
        job_id=UUID(row["job_id"]),
        tenant=row["tenant"],
        seq=row["seq"],
        at=_dt(row["at"]),
        type=row["type"],
        status=JobStatus(row["status"]),
        stage=row["stage"],
        progress=row["progress"],
        message=row["message"],
        data=_unjson(row["data"]),
    )


class _LocalHub:
    """Delivers notifications to every store of this process that has the same database open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Callable[[Notification], None]]] = {}

    def subscribe(self, key: str, callback: Callable[[Notification], None]) -> Subscription:
        with self._lock:
            self._subscribers.setdefault(key, []).append(callback)
        hub = self

        class _Sub:
            def close(self) -> None:
                with hub._lock:
                    callbacks = hub._subscribers.get(key, [])
                    if callback in callbacks:
                        callbacks.remove(callback)

        return _Sub()

    def publish(self, key: str, notifications: Sequence[Notification]) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(key, ()))
        for callback in callbacks:
            for notification in notifications:
                callback(notification)


_HUB = _LocalHub()


class SqliteJobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        if url == "memory://" or url == "sqlite://:memory:":
            self._path = ":memory:"
            # Each in-memory store is its own database, so it gets its own notification channel.
            self._hub_key = f"memory:{id(self)}"
        elif url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path = str(path)
            self._hub_key = str(path.resolve())
        else:
            raise ConfigError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db or memory://)")
        self._lock = threading.RLock()
        self._events_written = False
        try:
            self._conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self._path}: {exc}") from exc
        # Opened once the database is, so that a file that cannot be opened leaves no descriptor behind.
        self._turn = None if self._path == ":memory:" else open_turn(self._path)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash of the machine may lose the last commits, never corrupt the file.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    # -- plumbing -------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database lock up front, so it never fails half-way.

        When it appended events, this process's event followers are woken after the commit; other
        processes notice the new rows by polling.
        """
        with self._lock:
            self._take_turn()
            try:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise StoreUnavailable(f"SQLite is locked: {exc}") from exc
                self._events_written = False
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                else:
                    self._conn.execute("COMMIT")
            finally:
                if self._turn is not None:
                    self._turn.release()
            if self._events_written:
                _HUB.publish(self._hub_key, [Notification("events")])

    def _take_turn(self) -> None:
        """This process's turn among the writers of the file (see sqlite_turn), before SQLite's lock."""
        if self._turn is None:
            return
        try:
            self._turn.acquire(BUSY_TIMEOUT_S)
        except TurnTimeout as exc:
            raise StoreUnavailable(f"SQLite is locked: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot take the SQLite write turn: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def _append_events(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[sqlite3.Row],
        event_type: str,
        at: datetime,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._events_written = self._events_written or bool(rows)
        conn.executemany(
            "INSERT INTO jobmill_events"
            " (job_id, tenant, seq, at, type, status, stage, progress, message, data)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r["id"],
                    r["tenant"],
                    r["event_seq"],
                    _ts(at),
                    event_type,
                    r["status"],
                    r["stage"],
                    r["progress"],
                    r["message"],
                    _json(data),
                )
                for r in rows
            ],
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    def pending_migrations(self) -> list[str]:
        with self._read() as conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
            ).fetchone()
            done: set[int] = set()
            if exists:
                done = {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        return missing_migrations("sqlite", done)

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._write() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
            for migration in load_migrations("sqlite"):
                if migration.version in done:
                    continue
                for statement in _split_sql(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(UTC).timestamp()),
                )
                applied.append(migration.name)
        return applied

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._turn is not None:
                self._turn.close()
                self._turn = None

    # -- operations -----------------------------------------------------------------------------------

    def _insert_row(self, conn: sqlite3.Connection, new: NewJob, now: float) -> sqlite3.Row | None:
        cached = new.cached_from
        status = JobStatus.COMPLETED if cached is not None else JobStatus.PENDING
        return conn.execute(  # type: ignore[no-any-return]
            f"INSERT INTO jobmill_jobs (id, tenant, principal, kind, queue, priority, params, status,"
            f" max_attempts, timeout_s, run_after, inputs, idempotency_key, request_hash, cache_key, cached,"
            f" result, outputs, started_at, finished_at, event_seq, created_at, updated_at)"
            f" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?)"
            f" ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            f" RETURNING {JOB_COLUMNS}",
            (
                str(new.id),
                new.tenant,
                new.principal,
                new.kind,
                new.queue,
                new.priority,
                json.dumps(new.params),
                status.value,
                new.max_attempts,
                new.timeout_s,
                _ts(new.run_after),
                json.dumps(new.inputs),
                new.idempotency_key,
                new.request_hash,
                new.cache_key,
                int(cached is not None),
                _json(cached.result) if cached is not None else None,
                json.dumps(cached.outputs if cached is not None else {}),
                now if cached is not None else None,
                now if cached is not None else None,
                now,
                now,
            ),
        ).fetchone()

    def job_insert_many(self, params: JobInsertManyParams) -> list[JobInsertResult]:
        results: list[JobInsertResult] = []
        now = _ts(params.now)
        with self._write() as conn:
            for new in params.jobs:
                row = self._insert_row(conn, new, now)
                if row is not None:
                    data = {"cached_from": str(new.cached_from.id)} if new.cached_from is not None else None
                    self._append_events(conn, [row], "status", params.now, data)
                    results.append(JobInsertResult(_job_from_row(row), created=True))
                    continue
                existing = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE tenant = ? AND idempotency_key = ?",
                    (new.tenant, new.idempotency_key),
                ).fetchone()
                results.append(JobInsertResult(_job_from_row(existing), created=False))
        queues = sorted({r.job.queue for r in results if r.created and r.job.status is JobStatus.PENDING})
        _HUB.publish(self._hub_key, [Notification("new_job", queue=q) for q in queues])
        return results

    def job_get(self, params: JobGetParams) -> Job | None:
        sql = f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE id = ?"
        args: list[Any] = [str(params.job_id)]
        if params.tenant is not None:
            sql += " AND tenant = ?"
            args.append(params.tenant)
        with self._read() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else _job_from_row(row)

    def job_get_many_by_api_key(self, params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        if params.wait:
            return self._job_get_many_by_api_key(params)
        # Not waiting: neither for another thread's use of the connection (its lock) nor for another
        # process's lock on the database (a busy timeout of 0 meanwhile; in WAL mode readers seldom meet
        # one).
        if not self._lock.acquire(blocking=False):
            raise WouldBlock("the SQLite connection is in use")
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                return self._job_get_many_by_api_key(params)
            except StoreError as exc:
                if getattr(exc.__cause__, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                    raise WouldBlock(str(exc)) from exc
                raise
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        finally:
            self._lock.release()

    def _job_get_many_by_api_key(self, params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        with self._read() as conn:  # the reads below take the same (re-entrant) lock: nothing in between
            key = self.api_key_get(params.key_id)
            if key is None:
                return ApiKeyJobs(None, {}, {})
            jobs: dict[UUID, Job] = {}
            ids = list(dict.fromkeys(str(i) for i in params.job_ids))
            for first in range(0, len(ids), MAX_BATCH):
                chunk = ids[first : first + MAX_BATCH]
                rows = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE id IN ({_placeholders(len(chunk))})"
                    " AND tenant = ?",
                    [*chunk, key.tenant],
                ).fetchall()
                jobs.update((job.id, job) for job in map(_job_from_row, rows))
            positions: dict[UUID, int] = {}
            for job in jobs.values():
                if job.status is JobStatus.PENDING:
                    position = self.job_queue_position(JobQueuePositionParams(job.id, params.now, key.tenant))
                    if position is not None:
                        positions[job.id] = position
        return ApiKeyJobs(key, jobs, positions)

    def job_list(self, params: JobListParams) -> list[Job]:
        where: list[str] = []
        args: list[Any] = []
        if params.tenant is not None:
            where.append("tenant = ?")
            args.append(params.tenant)
        if params.statuses:
            where.append(f"status IN ({_placeholders(len(params.statuses))})")
            args.extend(s.value for s in params.statuses)
        if params.kind is not None:
            where.append("kind = ?")
            args.append(params.kind)
        if params.queue is not None:
            where.append("queue = ?")
            args.append(params.queue)
        if params.before_seq is not None:
            where.append("seq < ?")
            args.append(params.before_seq)
        sql = f"SELECT {JOB_COLUMNS} FROM jobmill_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(params.limit)
        with self._read() as conn:
            return [_job_from_row(r) for r in conn.execute(sql, args)]

    def job_claim(self, params: JobClaimParams, on_held: ClaimHeld | None = None) -> list[Job]:
        if not params.queues or params.limit <= 0:
            return []
        (source,) = params.edge.sources
        queues = list(dict.fromkeys(params.queues))  # a queue named twice would be walked twice
        token = str(uuid4())
        now = _ts(params.now)
        limit = min(params.limit, MAX_BATCH)

        def claimed(rows: list[sqlite3.Row]) -> list[Job]:
            # What the claim wrote is the same for every row: converted once (as a later read would).
            status, started, expires = params.edge.target, _dt(now), _dt(_ts(params.lease_expires_at))
            lease = UUID(token)
            jobs = [_claimed_job(r, status, params.worker_id, lease, expires, started) for r in rows]
            jobs.sort(key=lambda j: (-j.priority, j.seq))
            return jobs

        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE jobmill_jobs SET status = ?, attempts = attempts + 1, lease_owner = ?,"
                f" lease_token = ?,"
                f" lease_expires_at = ?, started_at = ?, updated_at = ?, event_seq = event_seq + 1,"
                f" stage = NULL, progress = NULL, message = NULL, error = NULL"
                f" WHERE seq IN ({_claim_order(source, len(queues))})"
                f" RETURNING {CLAIM_RESULT_COLUMNS}",
                (
                    params.edge.target.value,
                    params.worker_id,
                    token,
                    _ts(params.lease_expires_at),
                    now,
                    now,
                    *[arg for queue in queues for arg in (queue, now, limit)],
                    limit,
                ),
            ).fetchall()
            self._append_events(conn, rows, "status", params.now, {"attempt_by": params.worker_id})
            if rows and on_held is not None:
                jobs = claimed(rows)
                on_held(jobs)  # before the COMMIT, as on PostgreSQL: if it raises, nothing was claimed
                return jobs
        # Converted after the commit: every other process's writers wait while this one holds the lock.
        return claimed(rows)

    def job_heartbeat(self, params: JobHeartbeatParams) -> dict[UUID, JobStatus]:
        held: dict[UUID, JobStatus] = {}
        if not params.leases:
            return held
        with self._write() as conn:
            for chunk_start in range(0, len(params.leases), MAX_BATCH):
                chunk = params.leases[chunk_start : chunk_start + MAX_BATCH]
                pairs = " OR ".join("(id = ? AND lease_token = ?)" for _ in chunk)
                args: list[Any] = [_ts(params.lease_expires_at)]
                for lease in chunk:
                    args.extend((str(lease.job_id), str(lease.token)))
                rows = conn.execute(
                    f"UPDATE jobmill_jobs SET lease_expires_at = ? WHERE status IN ('running', 'cancelling')"
                    f" AND ({pairs}) RETURNING id, status",
                    args,
                ).fetchall()
                held.update((UUID(r["id"]), JobStatus(r["status"])) for r in rows)
        return held

    def job_status_many(self, params: JobStatusManyParams) -> dict[UUID, JobStatus]:
        found: dict[UUID, JobStatus] = {}
        with self._read() as conn:
            for start in range(0, len(params.job_ids), MAX_BATCH):
                chunk = [str(i) for i in params.job_ids[start : start + MAX_BATCH]]
                rows = conn.execute(
                    f"SELECT id, status FROM jobmill_jobs WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
                found.update((UUID(r["id"]), JobStatus(r["status"])) for r in rows)
        return found

    def job_set_progress(self, params: JobSetProgressParams) -> bool:
        now = _ts(params.now)
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE jobmill_jobs SET stage = ?, progress = ?, message = ?, updated_at = ?,"
                f" event_seq = event_seq + 1 WHERE id = ? AND lease_token = ? AND status = 'running'"
                f" RETURNING {EVENT_FROM_RETURNING}",
                (
                    params.stage,
                    params.progress,
                    params.message,
                    now,
                    str(params.lease.job_id),
                    str(params.lease.token),
                ),
            ).fetchone()
            if row is None:
                return False
            self._append_events(conn, [row], "progress", params.now)
        return True

    def job_complete_many(self, params: JobCompleteManyParams) -> list[UUID]:
        (source,) = params.edge.sources
        now = _ts(params.now)
        done: list[UUID] = []
        with self._write() as conn:
            # One UPDATE per chunk: the batch's (id, token, result, outputs) rows joined in as VALUES.
            for start in range(0, len(params.completions), MAX_BATCH // 4):
                chunk = params.completions[start : start + MAX_BATCH // 4]
                values = ",".join("(?,?,?,?)" for _ in chunk)
                args: list[Any] = []  # in the order of the placeholders: the VALUES rows come first
                for c in chunk:
                    args.extend((str(c.lease.job_id), str(c.lease.token), _json(c.result), _json(c.outputs)))
                args.extend((params.edge.target.value, now, now, source.value))
                rows = conn.execute(
                    f"WITH c(id, token, result, outputs) AS (VALUES {values})"
                    f" UPDATE jobmill_jobs SET status = ?, result = c.result,"
                    f" outputs = COALESCE(c.outputs, jobmill_jobs.outputs), finished_at = ?, updated_at = ?,"
                    f" lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,"
                    f" event_seq = event_seq + 1 FROM c"
                    f" WHERE jobmill_jobs.id = c.id AND jobmill_jobs.lease_token = c.token"
                    f" AND jobmill_jobs.status = ?"
                    f" RETURNING jobmill_jobs.id, jobmill_jobs.tenant, jobmill_jobs.event_seq,"
                    f" jobmill_jobs.status, jobmill_jobs.stage, jobmill_jobs.progress, jobmill_jobs.message",
                    args,
                ).fetchall()
                self._append_events(conn, rows, "status", params.now)
                done.extend(UUID(r["id"]) for r in rows)
        return done

    def _lease_write(
        self,
        conn: sqlite3.Connection,
        lease: Lease,
        sources: frozenset[JobStatus],
        assignments: str,
        args: Sequence[Any],
    ) -> sqlite3.Row | None:
        """CAS on (id, lease token, status); returns the job row after the change, or None."""
        status_list = [s.value for s in sources]
        row: sqlite3.Row | None = conn.execute(
            f"UPDATE jobmill_jobs SET {assignments}, event_seq = event_seq + 1"
            f" WHERE id = ? AND lease_token = ? AND status IN ({_placeholders(len(status_list))})"
            f" RETURNING {JOB_COLUMNS}",
            (*args, str(lease.job_id), str(lease.token), *status_list),
        ).fetchone()
        return row

    def _finish_attempt(
        self,
        lease: Lease,
        sources: frozenset[JobStatus],
        target: JobStatus,
        now: datetime,
        error: dict[str, Any] | None,
        run_after: datetime | None,
        refund_attempt: bool,
    ) -> Job | None:
        finished = None if target is JobStatus.PENDING else _ts(now)
        with self._write() as conn:
            row = self._lease_write(
                conn,
                lease,
                sources,
                "status = ?, error = ?, run_after = COALESCE(?, run_after), finished_at = ?, updated_at = ?,"
                " attempts = attempts - ?, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL",
                (target.value, _json(error), _ts_opt(run_after), finished, _ts(now), int(refund_attempt)),
            )
            if row is None:
                return None
            self._append_events(conn, [row], "status", now, {"error": error} if error else None)
        if target is JobStatus.PENDING:
            _HUB.publish(self._hub_key, [Notification("new_job", queue=row["queue"])])
        return _job_from_row(row)

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
            frozenset({params.expected_status}),
            params.edge.target,
            params.now,
            params.error,
            params.run_after,
            False,
        )

    def _append_audit(
        self,
        conn: sqlite3.Connection,
        audit: AuditEntry,
        tenant: str,
        at: datetime,
        job_id: UUID | None,
        after: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO jobmill_audit (at, tenant, actor, action, job_id, before, after)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                _ts(at),
                tenant,
                audit.actor,
                audit.action,
                None if job_id is None else str(job_id),
                _json(audit.before),
                _json(after),
            ),
        )

    def _user_write(
        self,
        job_id: UUID,
        tenant: str | None,
        expected: Collection[JobStatus],
        assignments: str,
        args: Sequence[Any],
        now: datetime,
        event_type: str = "status",
        audit: AuditEntry | None = None,
        principal: str | None = None,
    ) -> sqlite3.Row | None:
        """CAS on (id, status in `expected`[, tenant][, principal]); the event and the audit row are
        written in the same transaction."""
        statuses = [status.value for status in expected]
        sql = (
            f"UPDATE jobmill_jobs SET {assignments}, updated_at = ?, event_seq = event_seq + 1"
            f" WHERE id = ? AND status IN ({', '.join('?' * len(statuses))})"
        )
        all_args: list[Any] = [*args, _ts(now), str(job_id), *statuses]
        if tenant is not None:
            sql += " AND tenant = ?"
            all_args.append(tenant)
        if principal is not None:
            sql += " AND principal = ?"
            all_args.append(principal)
        with self._write() as conn:
            row: sqlite3.Row | None = conn.execute(sql + f" RETURNING {JOB_COLUMNS}", all_args).fetchone()
            if row is not None:
                self._append_events(conn, [row], event_type, now)
                if audit is not None:
                    self._append_audit(conn, audit, row["tenant"], now, job_id, _job_snapshot(row))
        return row

    def job_cancel(self, params: JobCancelParams) -> Job | None:
        # Each source status moves to its own edge's target; SET reads the row's status before the write.
        moves = params.moves
        terminal = [s.value for s, t in moves.items() if t.is_terminal]
        row = self._user_write(
            params.job_id,
            params.tenant,
            moves,
            f"status = CASE status {' '.join('WHEN ? THEN ?' for _ in moves)} END,"
            f" finished_at = CASE WHEN status IN ({', '.join('?' * len(terminal)) or 'NULL'})"
            " THEN ? ELSE finished_at END",
            (*[v for s, t in moves.items() for v in (s.value, t.value)], *terminal, _ts(params.now)),
            params.now,
            audit=params.audit,
            principal=params.principal,
        )
        if row is None:
            return None
        job = _job_from_row(row)
        if job.status is JobStatus.CANCELLING:
            _HUB.publish(self._hub_key, [Notification("cancel", job_id=params.job_id)])
        return job

    def job_reprioritize(self, params: JobReprioritizeParams) -> Job | None:
        # A priority change is not a status change; it is recorded as a progress-free "priority" event.
        row = self._user_write(
            params.job_id,
            params.tenant,
            (JobStatus.PENDING,),
            "priority = ?",
            (params.priority,),
            params.now,
            event_type="priority",
            audit=params.audit,
        )
        return None if row is None else _job_from_row(row)

    def job_requeue(self, params: JobRequeueParams) -> Job | None:
        if params.expected_status not in params.edge.sources:
            raise ValueError(f"{params.expected_status} is not a source of {params.edge}")
        row = self._user_write(
            params.job_id,
            params.tenant,
            (params.expected_status,),
            "status = ?, attempts = 0, max_attempts = ?, run_after = ?, finished_at = NULL, error = NULL,"
            " result = NULL, stage = NULL, progress = NULL, message = NULL",
            (params.edge.target.value, params.max_attempts, _ts(params.now)),
            params.now,
            audit=params.audit,
        )
        if row is None:
            return None
        _HUB.publish(self._hub_key, [Notification("new_job", queue=row["queue"])])
        return _job_from_row(row)

    def job_list_expired(self, params: JobListExpiredParams) -> list[Job]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE status IN ('running', 'cancelling')"
                f" AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?",
                (_ts(params.now), params.limit),
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    def job_queue_position(self, params: JobQueuePositionParams) -> int | None:
        now = _ts(params.now)
        sql = (
            "SELECT queue, priority, seq, status, run_after,"
            " (SELECT block_width FROM jobmill_position_settings) AS width FROM jobmill_jobs WHERE id = ?"
        )
        args: list[Any] = [str(params.job_id)]
        if params.tenant is not None:
            sql += " AND tenant = ?"
            args.append(params.tenant)
        with self._read() as conn:
            # One read transaction, so the job and the counts ahead of it are read from one snapshot.
            conn.execute("BEGIN")
            try:
                job = conn.execute(sql, args).fetchone()
                if job is None or job["status"] != "pending" or job["run_after"] > now:
                    return None
                seq, width = job["seq"], job["width"]
                ahead = conn.execute(
                    JOBS_AHEAD_SQL,
                    {
                        "queue": job["queue"],
                        "priority": job["priority"],
                        "seq": seq,
                        "block": seq // width,
                        "block_start": seq // width * width,
                        "now": now,
                    },
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
        return 1 + int(ahead)

    def event_list(self, params: EventListParams) -> list[JobEvent]:
        where: list[str] = []
        args: list[Any] = []
        if params.job_id is not None:
            where.append("job_id = ? AND seq > ?")
            args.extend((str(params.job_id), params.after_seq))
        if params.tenant is not None:
            where.append("tenant = ?")
            args.append(params.tenant)
        if params.after_id:
            where.append("id > ?")
            args.append(params.after_id)
        sql = "SELECT * FROM jobmill_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        args.append(params.limit)
        with self._read() as conn:
            return [_event_from_row(r) for r in conn.execute(sql, args)]

    def job_find_cached(self, params: JobFindCachedParams) -> Job | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobmill_jobs WHERE tenant = ? AND cache_key = ? AND kind = ?"
                f" AND status = 'completed' AND finished_at > ? ORDER BY finished_at DESC LIMIT 1",
                (params.tenant, params.cache_key, params.kind, _ts(params.finished_after)),
            ).fetchone()
        return None if row is None else _job_from_row(row)

    def job_queue_stats(self, params: JobQueueStatsParams) -> list[QueueStats]:
        sql = (
            "SELECT queue,"
            " sum(status = 'pending') AS pending,"
            " sum(status IN ('running', 'cancelling')) AS running,"
            " sum(status = 'completed' AND finished_at >= ?) AS completed_since,"
            " sum(status = 'failed' AND finished_at >= ?) AS failed_since,"
            " min(CASE WHEN status = 'pending' THEN created_at END) AS oldest_pending_at"
            " FROM jobmill_jobs"
        )
        since = _ts(params.since)
        args: list[Any] = [since, since]
        if params.tenant is not None:
            sql += " WHERE tenant = ?"
            args.append(params.tenant)
        sql += " GROUP BY queue ORDER BY queue"
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            QueueStats(
                queue=r["queue"],
                pending=int(r["pending"] or 0),
                running=int(r["running"] or 0),
                completed_since=int(r["completed_since"] or 0),
                failed_since=int(r["failed_since"] or 0),
                oldest_pending_at=_dt_opt(r["oldest_pending_at"]),
            )
            for r in rows
        ]

    def api_key_insert(self, params: ApiKeyInsertParams) -> ApiKeyRecord:
        key = params.key
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO jobmill_api_keys (key_id, tenant, role, name, secret_hash, created_at)"
                " VALUES (?,?,?,?,?,?) RETURNING *",
                (key.key_id, key.tenant, key.role, key.name, key.secret_hash, _ts(key.created_at)),
            ).fetchone()
            after = {"key_id": key.key_id, "role": key.role, "name": key.name}
            self._append_audit(conn, params.audit, key.tenant, key.created_at, None, after)
        return _api_key_from_row(row)

    def api_key_get(self, key_id: str) -> ApiKeyRecord | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM jobmill_api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _api_key_from_row(row)

    def api_key_list(self, params: ApiKeyListParams) -> list[ApiKeyRecord]:
        sql, args = "SELECT * FROM jobmill_api_keys", []
        if params.tenant is not None:
            sql += " WHERE tenant = ?"
            args.append(params.tenant)
        with self._read() as conn:
            return [_api_key_from_row(r) for r in conn.execute(sql + " ORDER BY created_at, key_id", args)]

    def api_key_revoke(self, params: ApiKeyRevokeParams) -> ApiKeyRecord | None:
        sql = "UPDATE jobmill_api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL"
        args: list[Any] = [_ts(params.now), params.key_id]
        if params.tenant is not None:
            sql += " AND tenant = ?"
            args.append(params.tenant)
        with self._write() as conn:
            row = conn.execute(sql + " RETURNING *", args).fetchone()
            if row is None:
                return None
            after = {"key_id": row["key_id"], "revoked": True}
            self._append_audit(conn, params.audit, row["tenant"], params.now, None, after)
        return _api_key_from_row(row)

    def audit_list(self, params: AuditListParams) -> list[AuditRecord]:
        sql = "SELECT * FROM jobmill_audit WHERE tenant = ?"
        args: list[Any] = [params.tenant]
        if params.before_id is not None:
            sql += " AND id < ?"
            args.append(params.before_id)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, params.limit]).fetchall()
        return [_audit_from_row(r) for r in rows]

    def notification_subscribe(
        self, callback: Callable[[Notification], None], topics: frozenset[str] | None = None
    ) -> Subscription:
        if topics is None:
            return _HUB.subscribe(self._hub_key, callback)

        def wanted(note: Notification) -> None:
            if note.topic in topics:
                callback(note)

        return _HUB.subscribe(self._hub_key, wanted)

    def change_counter(self) -> int | None:
        # PRAGMA data_version moves when another connection (any process) commits; reading it costs
        # microseconds, so idle workers can poll it instead of the tables. A private in-memory database
        # has no other connections.
        if self._path == ":memory:":
            return None
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])


def _split_sql(script: str) -> list[str]:
    """Statements of a migration file (they contain no semicolons inside literals or comments).

    A statement ends at the first semicolon that completes it, so a trigger's body (BEGIN ...; END;)
    stays whole.
    """
    text = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    statements: list[str] = []
    current = ""
    for piece in text.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current.strip().removesuffix(";").strip())
            current = ""
    return [s for s in statements if s]
