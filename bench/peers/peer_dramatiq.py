"""Dramatiq: the actors its worker loads (`dramatiq peer_dramatiq`) and the driver for them.

Redis broker, no result backend: completion is read from the broker itself. Dramatiq's Redis broker
keeps each message in the queue's `.msgs` hash from enqueue until it is acked (done) or nacked (moved
to the dead-letter `.XQ`), so that hash's length is the number of jobs not yet finished.

Cancelling a running message is not in Dramatiq's core; the `dramatiq-abort` middleware adds it (it
raises an exception in the actor's thread), and is used when it is installed.
"""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_common import REDIS_URL, RedisPeer, record_start, run_tree

try:
    from dramatiq_abort import Abortable, abort
    from dramatiq_abort.backends import RedisBackend
except ImportError:  # the cancel scenario then reports that Dramatiq cannot
    Abortable = None  # type: ignore[assignment,misc]

QUEUE = "peers"
NAMESPACE = "dramatiq"  # RedisBroker's default key prefix

broker = RedisBroker(url=REDIS_URL)
abortable = None if Abortable is None else Abortable(backend=RedisBackend.from_url(REDIS_URL))
if abortable is not None:
    broker.add_middleware(abortable)
dramatiq.set_broker(broker)


# max_retries=0: the default Retries middleware would run a cancelled (failed) job again, 20 times.
@dramatiq.actor(actor_name="peers.noop", queue_name=QUEUE, max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(actor_name="peers.stamp", queue_name=QUEUE, max_retries=0)
def stamp(key: str) -> None:
    record_start(key)


@dramatiq.actor(actor_name="peers.tree", queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
def tree(pidfile: str) -> None:
    run_tree(pidfile)


class DramatiqPeer(RedisPeer):
    name = "dramatiq"
    cannot_cancel = (
        None
        if abortable is not None
        else "Dramatiq's core cannot cancel a running message, and dramatiq-abort is not installed"
    )

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.submitted = 0

    def version(self) -> str:
        return dramatiq.__version__

    def worker_commands(self) -> list[list[str]]:
        command = [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--queues", QUEUE]
        return [[*command, "--processes", "1", "--threads", str(self.concurrency)]]

    def enqueue_noops(self, count: int) -> None:
        # Dramatiq has no bulk enqueue (a group sends its messages one by one too).
        for _ in range(count):
            noop.send()
        self.submitted += count

    def pending(self) -> int:
        return int(self.redis.hlen(f"{NAMESPACE}:{QUEUE}.msgs"))

    def succeeded(self) -> int:
        dead = int(self.redis.hlen(f"{NAMESPACE}:{QUEUE}.XQ.msgs"))
        return self.submitted - self.pending() - dead

    def submit_stamp(self, key: str) -> Any:
        self.submitted += 1
        return stamp.send(key)

    def submit_tree(self, pidfile: str) -> Any:
        self.submitted += 1
        return tree.send(pidfile)

    def cancel(self, handle: Any) -> None:
        assert abortable is not None
        abort(handle.message_id, middleware=abortable)


PEER = DramatiqPeer
