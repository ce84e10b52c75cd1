"""EventFollower: reads new rows of the event log and hands them to the hub, one reader per process.

It wakes on the store's `events` notification (PostgreSQL NOTIFY from any node; in-process commits on
SQLite) and otherwise polls every `poll_interval_s`, which is how events written by other processes
reach an SQLite node. It reads only while someone is subscribed.

Event ids are given out at insert, not at commit, so a transaction may commit an id lower than one
already read. The follower therefore re-reads a short window behind its cursor and skips ids it has
delivered; per-job streams also fill any gap from the per-job sequence, which is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from jobmill.domain.job import JobEvent
from jobmill.errors import JobmillError
from jobmill.events.hub import EventHub
from jobmill.store.base import EventListParams, JobStore, Notification, Subscription

log = logging.getLogger("jobmill.events")

LOOKBACK_IDS = 256  # how far behind the cursor a late commit is still picked up
SEEN_MEMORY = 4096  # delivered ids remembered for de-duplication
BATCH = 1000


class EventFollower:
    def __init__(self, store: JobStore, hub: EventHub, *, poll_interval_s: float = 0.25) -> None:
        self.store = store
        self.hub = hub
        self.poll_interval_s = poll_interval_s
        self._cursor = 0
        self._seen: deque[int] = deque(maxlen=SEEN_MEMORY)
        self._seen_set: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start following from the end of the log (history is served from the store by the streams)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._cursor = await asyncio.to_thread(self._latest_id)
        self._subscription = await asyncio.to_thread(self.store.notification_subscribe, self._on_notification)
        self._task = asyncio.create_task(self._run(), name="jobmill-event-follower")

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def _on_notification(self, note: Notification) -> None:
        if note.topic in ("events", "new_job", "cancel") and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake.set)

    def _latest_id(self) -> int:
        latest = 0
        while batch := self.store.event_list(EventListParams(after_id=latest, limit=BATCH * 10)):
            latest = batch[-1].id
            if len(batch) < BATCH * 10:
                break
        return latest

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives while the
            # wake-up completes, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self.hub.subscriber_count:
                continue
            try:
                events = await asyncio.to_thread(self._read_new)
            except JobmillError as exc:
                log.warning("reading the event log failed: %s", exc)
                continue
            if events:
                self.hub.publish(events)

    def _read_new(self) -> list[JobEvent]:
        fresh: list[JobEvent] = []
        after = max(0, self._cursor - LOOKBACK_IDS)
        while True:
            batch = self.store.event_list(EventListParams(after_id=after, limit=BATCH))
            for event in batch:
                if event.id not in self._seen_set:
                    self._remember(event.id)
                    fresh.append(event)
            if batch:
                after = batch[-1].id
                self._cursor = max(self._cursor, after)
            if len(batch) < BATCH:
                return fresh

    def _remember(self, event_id: int) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(event_id)
        self._seen_set.add(event_id)
