"""The event hub: per-subscriber filtering and bounded queues (a slow client is told to resync)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID, uuid4

from jobmill.domain.job import JobEvent, JobStatus
from jobmill.events.hub import EventHub


def event(n: int, tenant: str = "t", job_id: UUID | None = None) -> JobEvent:
    return JobEvent(
        n, job_id or uuid4(), tenant, n, datetime.now(UTC), "progress", JobStatus.RUNNING, None, n, None, None
    )


def test_subscribers_get_only_their_tenant_and_job() -> None:
    async def main() -> None:
        hub = EventHub()
        job = uuid4()
        tenant_sub, job_sub, other = hub.subscribe("t"), hub.subscribe("t", job), hub.subscribe("u")
        hub.publish([event(1, job_id=job), event(2), event(3, tenant="u")])
        assert [e.id for e in [await tenant_sub.next(1), await tenant_sub.next(1)] if e] == [1, 2]
        assert (await job_sub.next(1)).id == 1  # type: ignore[union-attr]
        assert await job_sub.next(0.05) is None
        assert (await other.next(1)).id == 3  # type: ignore[union-attr]
        hub.unsubscribe(other)
        hub.publish([event(4, tenant="u")])
        assert hub.subscriber_count == 2 and other.queue.empty()

    asyncio.run(main())


def test_a_slow_subscriber_is_bounded_and_told_to_resync() -> None:
    async def main() -> None:
        hub = EventHub(queue_size=10)
        slow = hub.subscribe("t")
        hub.publish([event(n) for n in range(1, 26)])
        assert slow.queue.qsize() <= 10  # never more than the bound, however many were published
        assert slow.take_lagged() and not slow.take_lagged()
        hub.publish([event(99)])
        drained = []
        while (e := await slow.next(0.01)) is not None:
            drained.append(e.id)
        assert drained[-1] == 99 and len(drained) <= 10

    asyncio.run(main())
