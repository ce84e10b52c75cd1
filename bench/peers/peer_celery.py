"""Celery: the app its workers load (`celery -A peer_celery worker`) and the driver for it.

Redis is both broker and result backend; acks_late so a message leaves the broker only once its task
is done and its result stored. Completion is read from the broker (the queue list plus kombu's `unacked`
hash: together, every message not yet acked), and the drain then checks every result in the backend.
"""

from __future__ import annotations

import sys
from typing import Any

import celery
from celery import Celery, group
from celery.result import AsyncResult
from peer_common import REDIS_URL, RedisPeer, record_start, run_tree

app = Celery("peers", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)
QUEUE = app.conf.task_default_queue  # "celery"
UNACKED = "unacked"  # kombu's Redis transport keeps delivered, not yet acked messages in this hash


@app.task(name="peers.noop")
def noop() -> None:
    return None


@app.task(name="peers.stamp")
def stamp(key: str) -> None:
    record_start(key)


@app.task(name="peers.tree")
def tree(pidfile: str) -> None:
    run_tree(pidfile)


class CeleryPeer(RedisPeer):
    name = "celery"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.task_ids: list[str] = []

    def version(self) -> str:
        return celery.__version__

    def worker_commands(self) -> list[list[str]]:
        # One prefork worker with `concurrency` children. Mingle and gossip are cluster features (sync
        # with other workers) that only add a second of start-up to a single worker: off.
        command = [sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "--pool", "prefork"]
        command += ["--concurrency", str(self.concurrency), "--loglevel", "WARNING"]
        return [[*command, "--without-mingle", "--without-gossip"]]

    def enqueue_noops(self, count: int) -> None:
        # Celery has no bulk insert; a group is its documented way to send many tasks in one call
        # (one producer, one connection), in chunks to bound the memory of each call.
        for start in range(0, count, 1000):
            result = group(noop.s() for _ in range(min(1000, count - start))).apply_async()
            self.task_ids.extend(child.id for child in result.results)

    def pending(self) -> int:
        with self.redis.pipeline() as pipe:
            pipe.llen(QUEUE)
            pipe.hlen(UNACKED)
            queued, unacked = pipe.execute()
        return int(queued) + int(unacked)

    def succeeded(self) -> int:
        backend = app.backend
        done = 0
        for start in range(0, len(self.task_ids), 5000):
            keys = [backend.get_key_for_task(i) for i in self.task_ids[start : start + 5000]]
            for raw in self.redis.mget(keys):
                if raw is not None and backend.decode_result(raw)["status"] == "SUCCESS":
                    done += 1
        return done

    def submit_stamp(self, key: str) -> Any:
        return stamp.apply_async(args=[key])

    def submit_tree(self, pidfile: str) -> Any:
        return tree.apply_async(args=[pidfile])

    def cancel(self, handle: Any) -> None:
        assert isinstance(handle, AsyncResult)
        app.control.revoke(handle.id, terminate=True, signal="SIGTERM")


PEER = CeleryPeer
