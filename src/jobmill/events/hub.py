"""EventHub: fans job events out to this process's subscribers (SSE and WebSocket clients).

Each subscriber has a bounded queue. A subscriber that falls behind is not allowed to make the server
buffer without bound: its queue is cleared and it is marked `lagged`, and the stream tells its client to
resync (refetch state) before going on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

from jobmill.domain.job import JobEvent

DEFAULT_QUEUE_SIZE = 256


@dataclass(eq=False)
class EventSubscription:
    tenant: str
    job_id: UUID | None = None
    queue: asyncio.Queue[JobEvent] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE_SIZE))
    lagged: bool = False

    def matches(self, event: JobEvent) -> bool:
        return event.tenant == self.tenant and (self.job_id is None or event.job_id == self.job_id)

    def offer(self, event: JobEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.lagged = True

    async def next(self, wait_s: float) -> JobEvent | None:
        """The next event, or None after `wait_s` seconds (time for a keep-alive)."""
        # An event already queued is taken at once; otherwise wait under a timeout. (asyncio.wait_for
        # made a task and a timer per call: per event and per subscriber, with a thousand subscribers.)
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        try:
            async with asyncio.timeout(wait_s):
                return await self.queue.get()
        except TimeoutError:
            return None

    def take_lagged(self) -> bool:
        lagged, self.lagged = self.lagged, False
        return lagged


class EventHub:
    """Lives on one event loop; publish() and subscribe() are called from it."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscriptions: set[EventSubscription] = set()

    def subscribe(self, tenant: str, job_id: UUID | None = None) -> EventSubscription:
        subscription = EventSubscription(tenant, job_id, asyncio.Queue(self._queue_size))
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: EventSubscription) -> None:
        self._subscriptions.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, events: list[JobEvent]) -> None:
        for event in events:
            for subscription in self._subscriptions:
                if subscription.matches(event):
                    subscription.offer(event)
