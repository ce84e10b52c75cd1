"""queue_position in a deep queue: latency at `pending` pending jobs, and what the counts cost the engine.

    python -m bench.deep_queue [--database-url URL] [--pending 1000000] [--samples 500] [--drain 20000]

`run()` loads `pending` pending jobs into one queue (`deep`) of the database at `database_url` (PostgreSQL,
or SQLite), in one INSERT ... SELECT per 100,000 jobs, so the store's triggers keep the per-block counts as
they do for any submission. About 10% of the jobs have a higher priority and 0.1% are delayed by an hour
(the part of the position that costs one index entry per delayed job). Then, for `samples` random pending
jobs, in turn:

- `position`: JobStore.job_queue_position (one statement: the job, then the per-block counts);
- `position_tenant`: the same for the job's tenant (as the row-level-security role: the switch and the
  statement in one pipelined round trip);
- `old_count`: the previous implementation, counting the jobs ahead in the claim index, on PostgreSQL; a
  mismatch between the two answers raises;
- `select_1`: a bare round trip, the floor under both (on a busy machine, its p99 shows the scheduler).

and then the engine at that depth: `insert_jobs_per_s` (submit_many, 100 jobs per statement) and
`drain_jobs_per_s` (2 processes, each claiming 100 jobs and completing them in one statement, in a loop,
for `drain` jobs in all). Give it a database of its own: the jobs stay behind (a PostgreSQL one is
migrated first). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from jobmill.service import JobService, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.store.base import Completion, JobQueuePositionParams, Lease

QUEUE = "deep"
TENANT = "bench"
CHUNK = 100_000  # jobs per INSERT ... SELECT
HIGH_PRIORITY_EVERY = 10  # one job in 10 has priority 5, the rest 0
DELAYED_EVERY = 1000  # one job in 1000 waits an hour (run_after in the future)
DRAIN_PROCESSES = 2
DRAIN_BATCH = 100
INSERT_BATCH = 100
INSERT_JOBS = 10_000

# The implementation this replaces: two counts of the jobs ahead, range scans of the claim index.
OLD_COUNT_SQL = (
    "SELECT 1 + (SELECT count(*) FROM jobmill_jobs AS o WHERE o.status = 'pending' AND o.queue = j.queue"
    " AND o.run_after <= %(now)s AND o.priority > j.priority) + (SELECT count(*) FROM jobmill_jobs AS o"
    " WHERE o.status = 'pending' AND o.queue = j.queue AND o.run_after <= %(now)s"
    " AND o.priority = j.priority AND o.seq < j.seq)"
    " FROM jobmill_jobs AS j WHERE j.id = %(id)s AND j.status = 'pending' AND j.run_after <= %(now)s"
)

PG_LOAD_SQL = (
    "INSERT INTO jobmill_jobs (id, tenant, kind, queue, priority, status, max_attempts, run_after,"
    " event_seq, created_at, updated_at)"
    f" SELECT gen_random_uuid(), '{TENANT}', 'bench.noop', '{QUEUE}',"
    f" CASE WHEN i %% {HIGH_PRIORITY_EVERY} = 0 THEN 5 ELSE 0 END, 'pending', 1,"
    f" CASE WHEN i %% {DELAYED_EVERY} = 7 THEN %(later)s ELSE %(now)s END, 0, %(now)s, %(now)s"
    " FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i"
)
SQLITE_LOAD_SQL = (
    "WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last),"
    " h(i, x) AS (SELECT i, lower(hex(randomblob(16))) FROM n)"
    " INSERT INTO jobmill_jobs (id, tenant, kind, queue, priority, status, max_attempts, run_after,"
    " event_seq, created_at, updated_at)"
    " SELECT substr(x, 1, 8) || '-' || substr(x, 9, 4) || '-4' || substr(x, 14, 3) || '-8'"
    f" || substr(x, 18, 3) || '-' || substr(x, 21, 12), '{TENANT}', 'bench.noop', '{QUEUE}',"
    f" CASE WHEN i % {HIGH_PRIORITY_EVERY} = 0 THEN 5 ELSE 0 END, 'pending', 1,"
    f" CASE WHEN i % {DELAYED_EVERY} = 7 THEN :later ELSE :now END, 0, :now, :now FROM h"
)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def load(database_url: str, pending: int) -> None:
    """`pending` jobs into queue `deep`, one INSERT ... SELECT (and its trigger run) per CHUNK jobs."""
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    if _is_sqlite(database_url):
        lite = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            for first in range(1, pending + 1, CHUNK):
                last = min(first + CHUNK - 1, pending)
                lite.execute("BEGIN IMMEDIATE")
                lite.execute(
                    SQLITE_LOAD_SQL,
                    {"first": first, "last": last, "now": now.timestamp(), "later": later.timestamp()},
                )
                lite.execute("COMMIT")
        finally:
            lite.close()
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        for first in range(1, pending + 1, CHUNK):
            last = min(first + CHUNK - 1, pending)
            conn.execute(PG_LOAD_SQL, {"first": first, "last": last, "now": now, "later": later})
        conn.execute("VACUUM ANALYZE jobmill_jobs")
        conn.execute("VACUUM ANALYZE jobmill_position_blocks")


def sample_ids(database_url: str, samples: int) -> list[UUID]:
    sql = (
        f"SELECT id FROM jobmill_jobs WHERE queue = '{QUEUE}' AND status = 'pending'"
        f" ORDER BY random() LIMIT {samples}"
    )
    if _is_sqlite(database_url):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            return [UUID(r[0]) for r in conn.execute(sql)]
        finally:
            conn.close()
    with psycopg.connect(database_url) as pg:
        return [r[0] for r in pg.execute(sql.encode())]


def positions(database_url: str, store: JobStore, samples: int) -> dict[str, float]:
    ids = sample_ids(database_url, samples)
    old_conn = None if _is_sqlite(database_url) else psycopg.connect(database_url, autocommit=True)
    new_ms: list[float] = []
    tenant_ms: list[float] = []
    old_ms: list[float] = []
    round_trip_ms: list[float] = []  # SELECT 1: the floor, what the machine's load adds to any query
    try:
        for job_id in ids:
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            position = store.job_queue_position(JobQueuePositionParams(job_id, now))
            t1 = time.perf_counter()
            scoped = store.job_queue_position(JobQueuePositionParams(job_id, now, TENANT))
            t2 = time.perf_counter()
            new_ms.append((t1 - t0) * 1000)
            tenant_ms.append((t2 - t1) * 1000)
            if scoped != position:
                raise AssertionError(f"job {job_id}: position {position}, for its tenant {scoped}")
            if old_conn is not None:
                t0 = time.perf_counter()
                old_conn.execute("SELECT 1").fetchone()
                t1 = time.perf_counter()
                row = old_conn.execute(OLD_COUNT_SQL, {"id": job_id, "now": now}).fetchone()
                round_trip_ms.append((t1 - t0) * 1000)
                old_ms.append((time.perf_counter() - t1) * 1000)
                if position != (None if row is None else int(row[0])):
                    raise AssertionError(f"job {job_id}: position {position}, counted {row}")
    finally:
        if old_conn is not None:
            old_conn.close()
    figures = {
        "position_p50_ms": statistics.median(new_ms),
        "position_p99_ms": percentile(new_ms, 99),
        "position_tenant_p50_ms": statistics.median(tenant_ms),
        "position_tenant_p99_ms": percentile(tenant_ms, 99),
    }
    if old_ms:
        figures |= {
            "old_count_p50_ms": statistics.median(old_ms),
            "old_count_p99_ms": percentile(old_ms, 99),
            "old_over_new_p50": statistics.median(old_ms) / statistics.median(new_ms),
            "select_1_p50_ms": statistics.median(round_trip_ms),
            "select_1_p99_ms": percentile(round_trip_ms, 99),
        }
    return figures


def _drain_worker(database_url: str, jobs: int, start: Any, done: Any) -> None:
    store = open_store(database_url)
    service = JobService(store)
    start.wait()
    completed = 0
    try:
        while completed < jobs:
            claimed = service.claim("bench", [QUEUE], min(DRAIN_BATCH, jobs - completed))
            if not claimed:
                break
            completed += len(
                service.complete_many(
                    [Completion(Lease(j.id, j.lease_token), None) for j in claimed if j.lease_token]
                )
            )
    finally:
        store.close()
        done.put(completed)


def drain(database_url: str, jobs: int) -> float:
    """claim+complete per second, DRAIN_PROCESSES processes of batches of DRAIN_BATCH."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    done = context.Queue()
    share = jobs // DRAIN_PROCESSES
    processes = [
        context.Process(target=_drain_worker, args=(database_url, share, start, done))
        for _ in range(DRAIN_PROCESSES)
    ]
    for process in processes:
        process.start()
    time.sleep(2.0)  # let them import and connect
    started = time.perf_counter()
    start.set()
    completed = sum(int(done.get(timeout=600)) for _ in processes)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(60)
    return completed / elapsed


def insert_rate(store: JobStore, jobs: int) -> float:
    service = JobService(store)
    started = time.perf_counter()
    for _ in range(0, jobs, INSERT_BATCH):
        service.submit_many(
            [SubmitRequest(kind="bench.noop", queue=QUEUE, tenant=TENANT) for _ in range(INSERT_BATCH)]
        )
    return jobs / (time.perf_counter() - started)


def run(
    database_url: str, pending: int = 1_000_000, samples: int = 500, drain_jobs: int = 20_000
) -> dict[str, float]:
    store = open_store(database_url, migrate=True)
    try:
        started = time.perf_counter()
        load(database_url, pending)
        figures = {"pending": float(pending), "load_s": time.perf_counter() - started}
        figures |= positions(database_url, store, samples)
        figures["insert_jobs_per_s"] = insert_rate(store, INSERT_JOBS)
    finally:
        store.close()
    figures["drain_jobs_per_s"] = drain(database_url, drain_jobs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help="a database of its own (default: a scratch PostgreSQL database from JOBMILL_TEST_DATABASE_URL)",
    )
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--sqlite", action="store_true", help="a scratch SQLite file instead")
    args = parser.parse_args()
    if args.database_url:
        figures = run(args.database_url, args.pending, args.samples, args.drain)
    elif args.sqlite:
        with tempfile.TemporaryDirectory() as folder:
            figures = run(f"sqlite:///{folder}/deep.db", args.pending, args.samples, args.drain)
    else:
        admin = os.environ.get("JOBMILL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
        name = f"jobmill_deep_{os.getpid()}_{random.randrange(1 << 30)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            figures = run(admin.rsplit("/", 1)[0] + "/" + name, args.pending, args.samples, args.drain)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps({key: round(value, 3) for key, value in figures.items()}), flush=True)


if __name__ == "__main__":
    main()
