"""procrastinate: the app its worker loads (`procrastinate --app peer_procrastinate.app worker`) and the
driver for it.

Each run gets its own PostgreSQL database (server defaults: durable, synchronous_commit on), made here
and dropped at the end. Completion is read from procrastinate's job table.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import AbstractContextManager
from typing import Any

import procrastinate
import psycopg
from peer_common import ENV_PG_URL, PG_ADMIN_URL, Peer, record_start_async, run_tree_async
from procrastinate import App, PsycopgConnector

# The worker process reads its database from the environment; the driver swaps in its own connector.
app = App(connector=PsycopgConnector(conninfo=os.environ.get(ENV_PG_URL, PG_ADMIN_URL)))


# Async tasks: procrastinate's worker is an event loop, and its documented abort of a running job is the
# cancellation of an async task (a sync task is only asked to poll `context.should_abort()`).
@app.task(name="peers.noop")
async def noop() -> None:
    return None


@app.task(name="peers.stamp")
async def stamp(key: str) -> None:
    await record_start_async(key)


@app.task(name="peers.tree")
async def tree(pidfile: str) -> None:
    await run_tree_async(pidfile)


class ProcrastinatePeer(Peer):
    name = "procrastinate"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.database = f"peers_procrastinate_{os.getpid()}_{time.monotonic_ns()}"
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.database
        self.conn: psycopg.Connection[Any] | None = None
        self.swap: AbstractContextManager[App] | None = None
        self.app_open = False

    def version(self) -> str:
        return procrastinate.__version__

    def open(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.swap = app.replace_connector(PsycopgConnector(conninfo=self.url))
        self.swap.__enter__()
        app.open()
        self.app_open = True
        app.schema_manager.apply_schema()
        self.conn = psycopg.connect(self.url, autocommit=True)

    def close(self) -> None:
        """Undo whatever part of open() was done (it may have failed half-way)."""
        if self.conn is not None:
            self.conn.close()
        if self.app_open:
            app.close()
        if self.swap is not None:
            self.swap.__exit__(None, None, None)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def worker_env(self) -> dict[str, str]:
        return {**super().worker_env(), ENV_PG_URL: self.url}

    def worker_commands(self) -> list[list[str]]:
        command = [sys.executable, "-m", "procrastinate", "--app", "peer_procrastinate.app"]
        return [[*command, "--log-level", "warning", "worker", "--concurrency", str(self.concurrency)]]

    def enqueue_noops(self, count: int) -> None:
        # batch_defer inserts a whole chunk in one statement.
        for start in range(0, count, 1000):
            noop.batch_defer(*({} for _ in range(min(1000, count - start))))
        # A table filled a moment ago has no statistics yet: the planner then takes the `todo` jobs for
        # one row and sorts them all on every fetch (4.5 ms a fetch at 5,000 jobs, growing with N: the
        # drain ran at a quarter of its speed). In service, autovacuum would have analysed the table;
        # here the drain starts before its first pass (up to a minute), so analyse it as it would.
        assert self.conn is not None
        self.conn.execute("ANALYZE procrastinate_jobs")

    def _count(self, statuses: tuple[str, ...]) -> int:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = ANY(%s::procrastinate_job_status[])",
            [list(statuses)],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def pending(self) -> int:
        return self._count(("todo", "doing"))

    def succeeded(self) -> int:
        return self._count(("succeeded",))

    def submit_stamp(self, key: str) -> Any:
        return stamp.defer(key=key)

    def submit_tree(self, pidfile: str) -> Any:
        return tree.defer(pidfile=pidfile)

    def cancel(self, handle: Any) -> None:
        app.job_manager.cancel_job_by_id(handle, abort=True)


PEER = ProcrastinatePeer
