"""What every peer shares: where its stores are, the handler bodies, and the driver interface.

Worker processes import this module too (through their system's module), so it imports only what the
handlers need: redis-py, nothing of the driver.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shlex
import subprocess
import time
from typing import Any, ClassVar

import redis
import redis.asyncio

# A dedicated Redis db, flushed before and after each run. Not 0 or 15: jobmill's own tests use (and
# FLUSHDB) those, and a test run beside a bench run would wipe the peers' queues mid-drain.
REDIS_URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_ADMIN_URL = os.environ.get("JOBMILL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The environment variables the driver hands its workers (besides PYTHONPATH).
ENV_CONCURRENCY = "PEERS_CONCURRENCY"
ENV_PG_URL = "PEERS_PG_URL"


def tree_script(pidfile: str) -> str:
    """The cancel scenario's command: a shell (the handler's child) that writes its pid, then waits on
    a foreground `sleep` while a background one runs beside it (the handler's grandchildren)."""
    return f"echo pid=$$ > {shlex.quote(pidfile)}; sleep 600 & sleep 600"


_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    """One client per process, made on first use: after a prefork worker forked, never before."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    return _redis


def record_start(key: str) -> None:
    """The pickup handler's body: when it started (wall clock), pushed where the driver waits for it."""
    started = time.time()
    redis_client().rpush(key, repr(started))


def run_tree(pidfile: str) -> None:
    """The cancel handler's body for thread/process workers: the plain, blocking way to run a command."""
    subprocess.run(["sh", "-c", tree_script(pidfile)], check=False)


_aredis: redis.asyncio.Redis | None = None


async def record_start_async(key: str) -> None:
    """record_start() for asyncio workers (one event loop per worker process)."""
    global _aredis
    started = time.time()
    if _aredis is None:
        _aredis = redis.asyncio.Redis.from_url(REDIS_URL)
    await _aredis.rpush(key, repr(started))


async def run_tree_async(pidfile: str) -> None:
    """The cancel handler's body for asyncio workers: the plain way to run a command and wait for it."""
    process = await asyncio.create_subprocess_exec("sh", "-c", tree_script(pidfile))
    await process.wait()


class Peer(abc.ABC):
    """How the driver (run_peer.py) works one system: its store, its enqueue and cancel APIs, its workers.

    `pending()` is the only completion signal the scenarios use: the number of submitted jobs the
    system's own store does not yet show as finished (succeeded, failed or cancelled).
    """

    name: ClassVar[str]
    # Set when the system has no way to cancel a running job: the cancel scenario then reports why.
    cannot_cancel: ClassVar[str | None] = None

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency

    @abc.abstractmethod
    def open(self) -> None:
        """Make a fresh, empty store for this run."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop everything open() made (flush the Redis db, drop the database)."""

    @abc.abstractmethod
    def version(self) -> str: ...

    @abc.abstractmethod
    def worker_commands(self) -> list[list[str]]:
        """The worker processes to start, together giving `concurrency` jobs at once."""

    def worker_env(self) -> dict[str, str]:
        return {ENV_CONCURRENCY: str(self.concurrency)}

    def workers_ready(self) -> bool:
        """True once every worker process listens (beyond what one warm-up job proves)."""
        return True

    @abc.abstractmethod
    def enqueue_noops(self, count: int) -> None:
        """Enqueue `count` no-op jobs, with the system's bulk API where it has one."""

    @abc.abstractmethod
    def pending(self) -> int: ...

    @abc.abstractmethod
    def succeeded(self) -> int:
        """How many jobs the store shows as succeeded: the drain's check that nothing failed."""

    @abc.abstractmethod
    def submit_stamp(self, key: str) -> Any:
        """Submit one job that runs record_start(key)."""

    @abc.abstractmethod
    def submit_tree(self, pidfile: str) -> Any:
        """Submit one job that runs tree_script(pidfile) and waits for it."""

    def cancel(self, handle: Any) -> None:
        """Ask the system, through its documented API, to cancel the running job `handle`; return at once."""
        raise NotImplementedError(self.cannot_cancel)


class RedisPeer(Peer):
    """A peer whose whole store is the dedicated Redis db."""

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.redis = redis.Redis.from_url(REDIS_URL)

    def open(self) -> None:
        self.redis.flushdb()

    def close(self) -> None:
        self.redis.flushdb()
        self.redis.close()
