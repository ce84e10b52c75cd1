"""arq: the worker settings its worker loads (`arq peer_arq.WorkerSettings`) and the driver for them.

arq's worker settings are left at their defaults but for max_jobs (the concurrency) and
allow_abort_jobs (off by default; Job.abort() needs it). Completion is read from arq's queue, a sorted
set from which a job is removed once it has finished (succeeded, failed or aborted).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, result_key_prefix
from arq.jobs import Job, deserialize_result
from arq.version import VERSION
from peer_common import ENV_CONCURRENCY, REDIS_URL, RedisPeer, record_start_async, run_tree_async

REDIS_SETTINGS = RedisSettings.from_dsn(REDIS_URL)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def stamp(ctx: dict[str, Any], key: str) -> None:
    await record_start_async(key)


async def tree(ctx: dict[str, Any], pidfile: str) -> None:
    await run_tree_async(pidfile)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, stamp, tree]
    redis_settings = REDIS_SETTINGS
    max_jobs = int(os.environ.get(ENV_CONCURRENCY, "4"))
    allow_abort_jobs = True


class ArqPeer(RedisPeer):
    name = "arq"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        # arq's client is asyncio only: one event loop for the driver's whole run.
        self.runner = asyncio.Runner()
        self.pool: ArqRedis = self.runner.run(create_pool(REDIS_SETTINGS))
        self.job_ids: list[str] = []
        self.aborts: list[threading.Thread] = []

    def version(self) -> str:
        return VERSION

    def close(self) -> None:
        for thread in self.aborts:
            thread.join(30)
        self.runner.run(self.pool.aclose())
        self.runner.close()
        super().close()

    def worker_commands(self) -> list[list[str]]:
        return [[str(Path(sys.executable).with_name("arq")), "peer_arq.WorkerSettings"]]

    async def _enqueue(self, function: str, count: int, *args: Any) -> list[Job]:
        jobs = await asyncio.gather(*(self.pool.enqueue_job(function, *args) for _ in range(count)))
        if any(job is None for job in jobs):
            raise RuntimeError("arq refused to enqueue a job")
        return [job for job in jobs if job is not None]

    def enqueue_noops(self, count: int) -> None:
        # arq has no bulk enqueue: enqueue_job calls, 500 at a time on one connection pool.
        for start in range(0, count, 500):
            jobs = self.runner.run(self._enqueue("noop", min(500, count - start)))
            self.job_ids.extend(job.job_id for job in jobs)

    def pending(self) -> int:
        return int(self.runner.run(self.pool.zcard(default_queue_name)))

    def succeeded(self) -> int:
        done = 0
        for start in range(0, len(self.job_ids), 5000):
            keys = [result_key_prefix + i for i in self.job_ids[start : start + 5000]]
            for raw in self.redis.mget(keys):
                done += raw is not None and deserialize_result(raw).success
        return done

    def submit_stamp(self, key: str) -> Any:
        return self.runner.run(self._enqueue("stamp", 1, key))[0]

    def submit_tree(self, pidfile: str) -> Any:
        return self.runner.run(self._enqueue("tree", 1, pidfile))[0]

    def cancel(self, handle: Any) -> None:
        # Job.abort() asks, then waits for the job's result: it runs in a thread of its own (with its own
        # loop and pool) so that the driver watches the processes meanwhile.
        job_id = handle.job_id
        thread = threading.Thread(target=asyncio.run, args=(self._abort(job_id),), daemon=True)
        thread.start()
        self.aborts.append(thread)

    @staticmethod
    async def _abort(job_id: str) -> None:
        pool = await create_pool(REDIS_SETTINGS)
        try:
            await Job(job_id, pool).abort(timeout=15)
        except TimeoutError:
            pass  # the driver measures what happened to the processes; the verdict is not needed
        finally:
            await pool.aclose()


PEER = ArqPeer
