"""Handlers of the worker-fault scenarios (`jobmill worker --app chaos.handlers`).

Every execution of a handler is written down by the handler itself, in a table of its own
(`chaos_executions`) on its own connection, apart from the job store: the store says how a job ended, this
table says how often its code really ran, so duplicates can be counted and then explained.

The child processes a handler starts carry `CHAOS_MARK=<run id>:<worker pid>` in their environment, so the
driver can find every process of a worker's trees in /proc, including a worker that was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from jobmill import JobContext, handler

log = logging.getLogger("chaos.handlers")

EXEC_URL_ENV = "CHAOS_EXEC_URL"  # sqlite:///path: where executions are recorded
RUN_ID_ENV = "CHAOS_RUN_ID"
MARK_ENV = "CHAOS_MARK"
QUEUE = "chaos"
# Attempts are spent by kills too (a killed attempt counts); a job must outlive many of them.
MAX_ATTEMPTS = 50
# A recording that finds its file locked longer than the busy timeout retries this long.
RECORD_RETRY_S = 60.0

EXECUTIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS chaos_executions (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " job_id TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,"
    " finished_at REAL, outcome TEXT)"
)


class PlannedFailure(Exception):
    """The 1% of jobs that fail their first attempt on purpose (and succeed on the retry)."""


class ExecutionLog:
    """One connection per worker process, used from one thread at a time.

    A SQLite file of its own, whatever the job store is: a write commits before the handler goes on (so a
    SIGKILL right after cannot lose it), and it does not depend on PostgreSQL, so the database outage stops
    only what the worker itself does with the database, not the handlers' bookkeeping.
    """

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqlite:///")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def write(self, sql: str, args: tuple[Any, ...]) -> Any:
        deadline = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                with self._lock:
                    if self._conn is None:
                        self._conn = sqlite3.connect(
                            self.path,
                            timeout=30,
                            isolation_level=None,  # autocommit: each write is committed at once
                            check_same_thread=False,  # used from asyncio.to_thread's threads, one at a time
                        )
                    # fetchall: a RETURNING statement left unfinished would keep its write transaction open.
                    rows = self._conn.execute(sql, args).fetchall()
                    return rows[0][0] if rows else None
            except sqlite3.Error as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("recording the execution failed, retrying: %s", exc)
                time.sleep(0.1)

    def started(self, ctx: JobContext) -> int:
        row_id = self.write(
            "INSERT INTO chaos_executions (job_id, attempt, pid, started_at) VALUES (?, ?, ?, ?)"
            " RETURNING id",
            (str(ctx.job_id), ctx.attempt, os.getpid(), time.time()),
        )
        return int(row_id)

    def finished(self, row_id: int, outcome: str) -> None:
        self.write(
            "UPDATE chaos_executions SET finished_at = ?, outcome = ? WHERE id = ? RETURNING id",
            (time.time(), outcome, row_id),
        )


_log: ExecutionLog | None = None


def execution_log() -> ExecutionLog:
    global _log
    if _log is None:
        _log = ExecutionLog(os.environ[EXEC_URL_ENV])
    return _log


def _dump_tasks(signum: int, frame: object) -> None:
    """With CHAOS_DEBUG_TASKS=1, SIGUSR1 prints every asyncio task's stack: what a stuck worker awaits."""
    import gc
    import sys

    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and not obj.done():
            obj.print_stack(file=sys.stderr)
    sys.stderr.flush()


if os.environ.get("CHAOS_DEBUG_TASKS") == "1":
    import signal

    signal.signal(signal.SIGUSR1, _dump_tasks)


def marked_env() -> dict[str, str]:
    return {**os.environ, MARK_ENV: f"{os.environ.get(RUN_ID_ENV, 'chaos')}:{os.getpid()}"}


@handler("chaos.work", queue=QUEUE, max_attempts=MAX_ATTEMPTS)
async def work(ctx: JobContext) -> dict[str, Any]:
    """Params: `ms` (how long), `tree` (run it as a process tree), `fail_first` (fail attempt 1)."""
    executions = execution_log()
    row_id = await asyncio.to_thread(executions.started, ctx)
    seconds = float(ctx.params["ms"]) / 1000
    # Every job uses its workdir, so a workdir left behind by any kind of ending shows.
    (ctx.workdir / "scratch").write_text(f"attempt {ctx.attempt}\n")
    if ctx.params.get("tree"):
        # A child shell with a grandchild: the background `sleep 300` would outlive everything if the
        # process group were not killed when the shell exits, or when the worker dies.
        await ctx.run(["sh", "-c", f"sleep 300 & sleep {seconds:.3f}"], env=marked_env())
    else:
        await asyncio.sleep(seconds)
    if ctx.params.get("fail_first") and ctx.attempt == 1:
        await asyncio.to_thread(executions.finished, row_id, "planned_failure")
        raise PlannedFailure("planned failure of the first attempt")
    await asyncio.to_thread(executions.finished, row_id, "ok")
    return {"attempt": ctx.attempt}
