"""RQ: the job functions its workers import, and the driver for them.

An RQ worker runs one job at a time (it forks a work horse per job), so concurrency C is C worker
processes on one queue. Completion is read from RQ's own registries: a job is done once it is in the
finished or the failed registry (a stopped job lands in the latter).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import rq
from peer_common import REDIS_URL, RedisPeer, record_start, run_tree
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

QUEUE = "peers"
# Results outlive any run: the registries they are counted in must not expire mid-drain (default 500 s).
RESULT_TTL = 3600


def noop() -> None:
    return None


def stamp(key: str) -> None:
    record_start(key)


def tree(pidfile: str) -> None:
    run_tree(pidfile)


class RqPeer(RedisPeer):
    name = "rq"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.queue = Queue(QUEUE, connection=self.redis)
        self.finished = FinishedJobRegistry(queue=self.queue)
        self.failed = FailedJobRegistry(queue=self.queue)
        self.submitted = 0

    def version(self) -> str:
        return rq.__version__

    def worker_commands(self) -> list[list[str]]:
        rq_cli = str(Path(sys.executable).with_name("rq"))
        command = [rq_cli, "worker", "--url", REDIS_URL, "--logging_level", "WARNING", QUEUE]
        return [command for _ in range(self.concurrency)]

    def workers_ready(self) -> bool:
        return Worker.count(connection=self.redis, queue=self.queue) >= self.concurrency

    def enqueue_noops(self, count: int) -> None:
        # enqueue_many writes a whole chunk in one Redis pipeline.
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            self.queue.enqueue_many([Queue.prepare_data(noop, result_ttl=RESULT_TTL) for _ in range(size)])
            self.submitted += size

    def pending(self) -> int:
        # ZCARD without the registries' clean-up pass: cheap enough to poll every millisecond.
        finished = self.finished.get_job_count(cleanup=False)
        failed = self.failed.get_job_count(cleanup=False)
        return self.submitted - finished - failed

    def succeeded(self) -> int:
        return self.finished.get_job_count(cleanup=False)

    def submit_stamp(self, key: str) -> Any:
        self.submitted += 1
        return self.queue.enqueue(stamp, key, result_ttl=RESULT_TTL)

    def submit_tree(self, pidfile: str) -> Any:
        self.submitted += 1
        return self.queue.enqueue(tree, pidfile, result_ttl=RESULT_TTL, job_timeout=3600)

    def cancel(self, handle: Any) -> None:
        assert isinstance(handle, Job)
        send_stop_job_command(self.redis, handle.id)


PEER = RqPeer
