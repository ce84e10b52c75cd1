"""The store conformance suite: every operation, through the service, on every backend."""

from __future__ import annotations

import threading
from datetime import timedelta
from uuid import uuid4

import pytest

from jobmill.domain.job import Job, JobStatus
from jobmill.domain.transitions import Transition, edge
from jobmill.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    UnknownKind,
    ValidationError,
)
from jobmill.handlers import HandlerRegistry, HandlerSpec
from jobmill.service import Actor, JobService, RetryPolicy, SubmitRequest
from jobmill.store import JobStore
from jobmill.store.base import (
    Completion,
    JobCancelParams,
    JobCompleteManyParams,
    JobListParams,
    Lease,
    Notification,
)
from tests.conftest import StoreFactory
from tests.support.clock import FakeClock


def submit(service: JobService, **kwargs: object) -> object:
    kwargs.setdefault("kind", "test.noop")
    return service.submit(SubmitRequest(**kwargs)).job  # type: ignore[arg-type]


def lease_of(job: object) -> Lease:
    assert job.lease_token is not None  # type: ignore[attr-defined]
    return Lease(job.id, job.lease_token)  # type: ignore[attr-defined]


def test_submit_and_get_round_trip(service: JobService, clock: FakeClock) -> None:
    result = service.submit(
        SubmitRequest(
            kind="audio.transcode",
            params={"bitrate": 128, "nested": {"a": [1, 2]}},
            queue="audio",
            priority=5,
            max_attempts=3,
            timeout_s=60,
            tenant="acme",
            principal="key:1",
            idempotency_key=None,
            inputs={"source": {"key": "k1", "size": 3}},
        )
    )
    assert result.created
    job = service.get(result.job.id, "acme")
    assert job == result.job
    assert (job.kind, job.queue, job.priority, job.max_attempts, job.timeout_s) == (
        "audio.transcode",
        "audio",
        5,
        3,
        60,
    )
    assert job.params == {"bitrate": 128, "nested": {"a": [1, 2]}}
    assert job.inputs == {"source": {"key": "k1", "size": 3}}
    assert job.status is JobStatus.PENDING and job.attempts == 0
    assert job.created_at == clock() and job.run_after == clock()
    assert job.tenant == "acme" and job.principal == "key:1"


def test_tenant_scoping(service: JobService) -> None:
    job = submit(service, tenant="a")
    assert service.get(job.id, "a").id == job.id  # type: ignore[attr-defined]
    with pytest.raises(JobNotFound):
        service.get(job.id, "b")  # type: ignore[attr-defined]
    with pytest.raises(JobNotFound):
        service.cancel(job.id, "b")  # type: ignore[attr-defined]
    assert service.queue_position(job.id, "b") is None  # type: ignore[attr-defined]
    assert service.list_jobs(JobListParams(tenant="b")) == []
    assert service.events(job.id, "b") == []  # type: ignore[attr-defined]
    with pytest.raises(JobNotFound):
        service.get(uuid4())


def test_idempotency_key_returns_existing_job_per_tenant(service: JobService) -> None:
    first = service.submit(SubmitRequest(kind="k", tenant="a", idempotency_key="abc", params={"x": 1}))
    again = service.submit(SubmitRequest(kind="k", tenant="a", idempotency_key="abc", params={"x": 1}))
    other = service.submit(SubmitRequest(kind="k", tenant="b", idempotency_key="abc", params={"x": 2}))
    assert first.created and not again.created and other.created
    assert again.job.id == first.job.id
    assert other.job.id != first.job.id
    batch = service.submit_many(
        [SubmitRequest(kind="k", tenant="a", idempotency_key="abc", params={"x": 1}), SubmitRequest(kind="k")]
    )
    assert [r.created for r in batch] == [False, True]
    # The same key with a different request is a conflict, and changes nothing.
    with pytest.raises(IdempotencyConflict) as info:
        service.submit(SubmitRequest(kind="k", tenant="a", idempotency_key="abc", params={"x": 2}))
    assert info.value.job_id == first.job.id
    assert service.get(first.job.id).params == {"x": 1}


def test_result_cache_serves_completed_jobs(store: object, clock: FakeClock) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("cached.kind", lambda ctx: None, cacheable=True))
    registry.register(HandlerSpec("plain.kind", lambda ctx: None))
    service = JobService(store, registry=registry, clock=clock, cache_ttl_s=60)  # type: ignore[arg-type]
    first = service.submit(SubmitRequest(kind="cached.kind", params={"n": 1}, tenant="t")).job
    (running,) = service.claim("w", ["default"], 1)
    service.complete_many([Completion(lease_of(running), {"answer": 42}, {"out": {"key": "k1"}})])
    hit = service.submit(SubmitRequest(kind="cached.kind", params={"n": 1}, tenant="t")).job
    assert hit.id != first.id and hit.cached and hit.status is JobStatus.COMPLETED
    assert hit.result == {"answer": 42} and hit.outputs == {"out": {"key": "k1"}}
    assert [e.status for e in service.events(hit.id)] == [JobStatus.COMPLETED]
    # Other params, another tenant, a non-cacheable kind or an expired entry: a fresh pending job.
    misses = [
        SubmitRequest(kind="cached.kind", params={"n": 2}, tenant="t"),
        SubmitRequest(kind="cached.kind", params={"n": 1}, tenant="other"),
    ]
    assert all(service.submit(m).job.status is JobStatus.PENDING for m in misses)
    clock.advance(61)
    assert service.submit(SubmitRequest(kind="cached.kind", params={"n": 1}, tenant="t")).job.status is (
        JobStatus.PENDING
    )


def test_validation_and_unknown_kind(store: object, clock: FakeClock) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("known", lambda ctx: None, queue="q1", timeout_s=5, max_attempts=4))
    service = JobService(store, registry=registry, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(UnknownKind):
        service.submit(SubmitRequest(kind="unknown"))
    job = service.submit(SubmitRequest(kind="known")).job
    assert (job.queue, job.timeout_s, job.max_attempts) == ("q1", 5, 4)
    for bad in (
        SubmitRequest(kind="known", priority=10_000),
        SubmitRequest(kind="known", max_attempts=0),
        SubmitRequest(kind="known", queue="bad queue"),
        SubmitRequest(kind="known", params=[1, 2]),  # type: ignore[arg-type]
        SubmitRequest(kind="known", params={"big": "x" * 300_000}),
        SubmitRequest(kind="known", timeout_s=-1),
        SubmitRequest(kind="known", params={"nul": "a\x00b"}),
    ):
        with pytest.raises(ValidationError):
            service.submit(bad)


def test_list_filters_and_cursor(service: JobService) -> None:
    ids = [submit(service, kind="a" if i % 2 else "b", queue="q", tenant="t").id for i in range(7)]  # type: ignore[attr-defined]
    submit(service, tenant="other")
    page1 = service.list_jobs(JobListParams(tenant="t", limit=3))
    assert [j.id for j in page1] == ids[::-1][:3]
    page2 = service.list_jobs(JobListParams(tenant="t", limit=3, before_seq=page1[-1].seq))
    assert [j.id for j in page2] == ids[::-1][3:6]
    assert {j.kind for j in service.list_jobs(JobListParams(tenant="t", kind="a"))} == {"a"}
    service.cancel(ids[0], "t")
    cancelled = service.list_jobs(JobListParams(tenant="t", statuses=[JobStatus.CANCELLED]))
    assert [j.id for j in cancelled] == [ids[0]]
    assert service.list_jobs(JobListParams(tenant="t", queue="nope")) == []


def test_claim_order_priority_then_fifo(service: JobService) -> None:
    low1 = submit(service, priority=0)
    high = submit(service, priority=10)
    low2 = submit(service, priority=0)
    mid = submit(service, priority=5)
    other_queue = submit(service, priority=100, queue="elsewhere")
    claimed = service.claim("w1", ["default"], 10)
    assert [j.id for j in claimed] == [high.id, mid.id, low1.id, low2.id]  # type: ignore[attr-defined]
    assert all(j.status is JobStatus.RUNNING and j.attempts == 1 for j in claimed)
    assert all(j.lease_owner == "w1" and j.lease_token is not None for j in claimed)
    assert service.get(other_queue.id).status is JobStatus.PENDING  # type: ignore[attr-defined]
    assert service.claim("w1", ["default"], 10) == []


def test_claim_respects_limit_and_run_after(service: JobService, clock: FakeClock) -> None:
    later = submit(service, run_after=clock() + timedelta(seconds=60))
    now_jobs = [submit(service) for _ in range(3)]
    assert service.queue_position(later.id) is None  # type: ignore[attr-defined]
    first = service.claim("w", ["default"], 2)
    assert [j.id for j in first] == [j.id for j in now_jobs[:2]]  # type: ignore[attr-defined]
    assert [j.id for j in service.claim("w", ["default"], 5)] == [now_jobs[2].id]  # type: ignore[attr-defined]
    assert service.claim("w", ["default"], 5) == []
    clock.advance(61)
    assert [j.id for j in service.claim("w", ["default"], 5)] == [later.id]  # type: ignore[attr-defined]


def test_claim_from_several_queues(service: JobService) -> None:
    a = submit(service, queue="a", priority=1)
    b = submit(service, queue="b", priority=2)
    submit(service, queue="c", priority=3)
    assert [j.id for j in service.claim("w", ["a", "b"], 10)] == [b.id, a.id]  # type: ignore[attr-defined]


def test_a_claim_hands_its_jobs_to_on_held_before_it_commits(
    store_factory: StoreFactory, backend: str, clock: FakeClock
) -> None:
    """What lets an idle worker start its handlers while the claim's commit is flushed: on_held hears of
    exactly the claimed jobs, in claim order, while any other connection still sees them pending."""
    if backend == "memory":
        pytest.skip("an in-memory store is one connection: no other one could look")
    service = JobService(store_factory(), clock=clock)
    observer = JobService(store_factory(), clock=clock)
    jobs = [submit(service, priority=p) for p in (0, 5, 0)]
    seen: list[tuple[list[object], list[JobStatus]]] = []

    def on_held(held: list[Job]) -> None:
        seen.append(([j.id for j in held], [observer.get(j.id).status for j in held]))

    claimed = service.claim("w", ["default"], 2, on_held)
    assert [j.id for j in claimed] == [jobs[1].id, jobs[0].id]  # type: ignore[attr-defined]
    assert seen == [([j.id for j in claimed], [JobStatus.PENDING, JobStatus.PENDING])]
    assert all(observer.get(j.id).status is JobStatus.RUNNING for j in claimed)
    assert [j.id for j in service.claim("w", ["default"], 5, on_held)] == [jobs[2].id]  # type: ignore[attr-defined]
    assert service.claim("w", ["default"], 5, on_held) == []
    assert len(seen) == 2  # an empty claim tells nobody


def test_a_claim_whose_on_held_raises_claims_nothing(service: JobService) -> None:
    jobs = [submit(service) for _ in range(2)]

    def refuse(held: list[Job]) -> None:
        raise RuntimeError("the caller cannot take them")

    with pytest.raises(RuntimeError, match="cannot take them"):
        service.claim("w", ["default"], 5, refuse)
    for position, job in enumerate(jobs, start=1):
        after = service.get(job.id)  # type: ignore[attr-defined]
        assert after.status is JobStatus.PENDING and after.attempts == 0 and after.lease_token is None
        assert service.queue_position(after.id) == position
    assert [j.id for j in service.claim("w", ["default"], 5)] == [j.id for j in jobs]  # type: ignore[attr-defined]


def test_a_claimed_job_equals_what_is_stored(service: JobService) -> None:
    """Claims build jobs from the columns they did not write plus the values they did: all must match."""
    service.submit(SubmitRequest(kind="k", params={"a": [1, 2.5, "x"]}, inputs={"f": {"key": "k"}}))
    service.submit(SubmitRequest(kind="k", timeout_s=3, principal="p", idempotency_key="i", priority=-1))
    for claimed in service.claim("worker-1", ["default"], 2):
        assert claimed == service.get(claimed.id)


def test_queue_position_follows_priority_changes(service: JobService) -> None:
    jobs = [submit(service, priority=p) for p in (0, 0, 5, 0)]
    assert [service.queue_position(j.id) for j in jobs] == [2, 3, 1, 4]  # type: ignore[attr-defined]
    changed, position = service.reprioritize(jobs[3].id, 10)  # type: ignore[attr-defined]
    assert changed.priority == 10 and position == 1
    assert [service.queue_position(j.id) for j in jobs] == [3, 4, 2, 1]  # type: ignore[attr-defined]
    running = service.claim("w", ["default"], 1)[0]
    assert running.id == jobs[3].id  # type: ignore[attr-defined]
    assert service.queue_position(running.id) is None
    with pytest.raises(InvalidTransition) as info:
        service.reprioritize(running.id, 1)
    assert info.value.current is JobStatus.RUNNING


def test_heartbeat_extends_held_leases_only(service: JobService, clock: FakeClock) -> None:
    submit(service)
    submit(service)
    a, b = service.claim("w", ["default"], 2)
    clock.advance(20)
    held = service.heartbeat([lease_of(a), Lease(b.id, uuid4())])
    assert held == {a.id: JobStatus.RUNNING}
    assert service.get(a.id).lease_expires_at == clock() + timedelta(seconds=30)
    service.cancel(a.id)
    assert service.heartbeat([lease_of(a)]) == {a.id: JobStatus.CANCELLING}


def test_progress_needs_the_lease_and_appends_events(service: JobService) -> None:
    job = submit(service, tenant="t")
    (running,) = service.claim("w", ["default"], 1)
    assert service.set_progress(lease_of(running), "decode", 10, "starting")
    assert service.set_progress(lease_of(running), "decode", None, None)
    assert not service.set_progress(Lease(job.id, uuid4()), "evil", 99, None)  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        service.set_progress(lease_of(running), "x", 101, None)
    current = service.get(job.id)  # type: ignore[attr-defined]
    assert (current.stage, current.progress, current.message) == ("decode", None, None)
    events = service.events(job.id, "t")  # type: ignore[attr-defined]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [(e.type, e.status) for e in events] == [
        ("status", JobStatus.PENDING),
        ("status", JobStatus.RUNNING),
        ("progress", JobStatus.RUNNING),
        ("progress", JobStatus.RUNNING),
    ]
    assert (events[2].stage, events[2].progress, events[2].message) == ("decode", 10, "starting")
    assert [e.seq for e in service.events(job.id, "t", after_seq=2)] == [3, 4]  # type: ignore[attr-defined]


def test_complete_is_compare_and_set_on_the_lease(service: JobService, store: object) -> None:
    submit(service)
    submit(service)
    a, b = service.claim("w", ["default"], 2)
    done = service.complete_many(
        [
            Completion(lease_of(a), {"ok": 1}, {"out.txt": {"key": "x"}}),
            Completion(Lease(b.id, uuid4()), {"evil": 1}),
        ]
    )
    assert done == [a.id]
    completed = service.get(a.id)
    assert completed.status is JobStatus.COMPLETED and completed.result == {"ok": 1}
    assert completed.outputs == {"out.txt": {"key": "x"}}
    assert completed.lease_token is None and completed.finished_at is not None
    assert service.get(b.id).status is JobStatus.RUNNING
    # A second completion of the same attempt is refused.
    assert service.complete_many([Completion(lease_of(a), {"again": 1})]) == []
    assert service.get(a.id).result == {"ok": 1}
    # A completion that claims a source state the table does not allow changes nothing.
    wrong = JobCompleteManyParams(
        [Completion(lease_of(b), 1)], service.clock(), edge(Transition.CONFIRM_CANCEL)
    )
    assert store.job_complete_many(wrong) == []  # type: ignore[attr-defined]


def test_retry_with_backoff_then_fail(store: object, clock: FakeClock) -> None:
    service = JobService(store, clock=clock, retry=RetryPolicy(base_s=10, max_s=1000))  # type: ignore[arg-type]
    job = submit(service, max_attempts=2)
    (first,) = service.claim("w", ["default"], 1)
    retried = service.fail(first, lease_of(first), {"type": "ValueError", "message": "boom"})
    assert retried is not None and retried.status is JobStatus.PENDING
    delay = (retried.run_after - clock()).total_seconds()
    assert 5 <= delay <= 10  # base 10 s with jitter in [half, full]
    assert service.claim("w", ["default"], 1) == []  # backoff not over
    assert service.queue_position(job.id) is None  # type: ignore[attr-defined]
    clock.advance(delay)
    (second,) = service.claim("w", ["default"], 1)
    assert second.attempts == 2 and second.error is None
    failed = service.fail(second, lease_of(second), {"type": "ValueError", "message": "boom again"})
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == {"type": "ValueError", "message": "boom again"}
    assert failed.finished_at == clock()
    # The old lease can no longer write.
    assert service.fail(second, lease_of(second), {"type": "x", "message": "y"}) is None


def test_non_retryable_failure_and_release(service: JobService) -> None:
    submit(service, max_attempts=5)
    (job,) = service.claim("w", ["default"], 1)
    failed = service.fail(job, lease_of(job), {"type": "timeout", "message": "over 1s"}, retryable=False)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.attempts == 1
    submit(service)
    (other,) = service.claim("w", ["default"], 1)
    released = service.release(lease_of(other))
    assert released is not None and released.status is JobStatus.PENDING and released.attempts == 0
    assert [j.id for j in service.claim("w2", ["default"], 1)] == [other.id]


def test_cancel_semantics(service: JobService) -> None:
    pending = submit(service)
    cancelled = service.cancel(pending.id)  # type: ignore[attr-defined]
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    with pytest.raises(InvalidTransition) as info:
        service.cancel(pending.id)  # type: ignore[attr-defined]
    assert info.value.current is JobStatus.CANCELLED

    submit(service)
    (running,) = service.claim("w", ["default"], 1)
    assert service.cancel(running.id).status is JobStatus.CANCELLING
    assert service.cancel(running.id).status is JobStatus.CANCELLING  # idempotent
    # A cancelling job cannot be completed, only confirmed cancelled by its lease holder.
    assert service.complete_many([Completion(lease_of(running), 1)]) == []
    assert service.confirm_cancel(Lease(running.id, uuid4())) is None
    confirmed = service.confirm_cancel(lease_of(running))
    assert confirmed is not None and confirmed.status is JobStatus.CANCELLED
    assert [e.status for e in service.events(running.id)][-2:] == [JobStatus.CANCELLING, JobStatus.CANCELLED]


def test_one_cancel_write_takes_the_edge_of_the_jobs_status(store: object, clock: FakeClock) -> None:
    """job_cancel with both cancel edges: each job moves by the edge that leaves its own status, a job
    in neither source status or of another principal is left as it is, and each write appends its event."""
    service = JobService(store, clock=clock)  # type: ignore[arg-type]
    both = (edge(Transition.CANCEL), edge(Transition.REQUEST_CANCEL))
    submit(service, principal="alice")
    (running,) = service.claim("w", ["default"], 1)
    pending = submit(service, principal="alice")
    cancel = store.job_cancel  # type: ignore[attr-defined]

    def params(job_id: object, principal: str | None = None) -> JobCancelParams:
        return JobCancelParams(job_id, None, clock(), both, principal=principal)  # type: ignore[arg-type]

    assert cancel(params(pending.id, principal="bob")) is None  # type: ignore[attr-defined]
    assert cancel(params(running.id, principal="bob")) is None
    assert service.get(pending.id).status is JobStatus.PENDING  # type: ignore[attr-defined]
    assert service.get(running.id).status is JobStatus.RUNNING

    done = cancel(params(pending.id, principal="alice"))  # type: ignore[attr-defined]
    assert done.status is JobStatus.CANCELLED and done.finished_at == clock()
    stopping = cancel(params(running.id))
    assert stopping.status is JobStatus.CANCELLING and stopping.finished_at is None
    assert cancel(params(running.id)) is None  # cancelling is in neither source: nothing written
    assert cancel(params(pending.id)) is None  # nor is cancelled
    assert [e.status for e in service.events(pending.id)] == [JobStatus.PENDING, JobStatus.CANCELLED]  # type: ignore[attr-defined]
    assert [e.status for e in service.events(running.id)][-1] is JobStatus.CANCELLING
    with pytest.raises(ValueError):
        JobCancelParams(running.id, None, clock(), (edge(Transition.CANCEL), edge(Transition.CANCEL)))
    with pytest.raises(ValueError):
        JobCancelParams(running.id, None, clock(), ())


class _CountingStore:
    """A store whose calls are counted by name, passed through to the real one."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if callable(attr) and name.startswith("job_"):

            def counted(*args: object, **kwargs: object) -> object:
                self.calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr


def test_cancel_of_an_own_pending_or_running_job_is_one_write_and_no_read(
    store: object, clock: FakeClock
) -> None:
    counting = _CountingStore(store)
    service = JobService(counting, clock=clock)  # type: ignore[arg-type]
    owner = Actor(subject="alice", is_admin=False)
    submit(service, principal="alice")
    (running,) = service.claim("w", ["default"], 1)
    pending = submit(service, principal="alice")
    for job, status in ((pending, JobStatus.CANCELLED), (running, JobStatus.CANCELLING)):
        counting.calls.clear()
        assert service.cancel(job.id, actor=owner).status is status  # type: ignore[attr-defined]
        assert counting.calls == ["job_cancel"]
    # Everything else still reads the job first and answers as before.
    counting.calls.clear()
    assert service.cancel(running.id, actor=owner).status is JobStatus.CANCELLING
    assert counting.calls == ["job_cancel", "job_get"]
    other = submit(service, principal="bob")
    with pytest.raises(Forbidden):
        service.cancel(other.id, actor=owner)  # type: ignore[attr-defined]
    assert service.get(other.id).status is JobStatus.PENDING  # type: ignore[attr-defined]
    with pytest.raises(JobNotFound):
        service.cancel(uuid4(), actor=owner)


def test_recover_expired_leases(store: object, clock: FakeClock) -> None:
    service = JobService(store, clock=clock, lease_s=30)  # type: ignore[arg-type]
    retry_job = submit(service, max_attempts=2)
    last_job = submit(service, max_attempts=1)
    cancel_job = submit(service)
    a, _b, c = service.claim("dead", ["default"], 3)
    service.cancel(c.id)
    clock.advance(10)
    assert service.recover_expired() == []  # leases still valid
    clock.advance(25)
    settled = {j.id: j for j in service.recover_expired()}
    assert settled[retry_job.id].status is JobStatus.PENDING  # type: ignore[attr-defined]
    assert settled[last_job.id].status is JobStatus.FAILED  # type: ignore[attr-defined]
    assert settled[last_job.id].error["type"] == "lease_expired"  # type: ignore[attr-defined, index]
    assert settled[cancel_job.id].status is JobStatus.CANCELLED  # type: ignore[attr-defined]
    # The dead worker's late writes are refused, and the job goes to a new worker.
    (again,) = service.claim("alive", ["default"], 1)
    assert again.id == a.id and again.attempts == 2
    assert service.complete_many([Completion(lease_of(a), "late")]) == []
    assert not service.set_progress(lease_of(a), "late", 1, None)
    assert service.heartbeat([lease_of(a)]) == {}
    assert service.complete_many([Completion(lease_of(again), "ok")]) == [a.id]
    assert service.get(a.id).result == "ok"


def test_requeue_failed_or_cancelled(service: JobService) -> None:
    job = submit(service)
    with pytest.raises(InvalidTransition):
        service.requeue(job.id)  # type: ignore[attr-defined]
    service.cancel(job.id)  # type: ignore[attr-defined]
    again = service.requeue(job.id)  # type: ignore[attr-defined]
    assert again.status is JobStatus.PENDING and again.attempts == 0 and again.finished_at is None
    assert service.queue_position(job.id) == 1  # type: ignore[attr-defined]


def test_event_sequence_has_no_gaps(service: JobService) -> None:
    job = submit(service, tenant="t", max_attempts=2)
    (running,) = service.claim("w", ["default"], 1)
    for pct in range(0, 100, 10):
        service.set_progress(lease_of(running), "work", pct, None)
    service.fail(running, lease_of(running), {"type": "E", "message": "m"})
    events = service.events(job.id)  # type: ignore[attr-defined]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].status is JobStatus.PENDING and events[-1].data == {
        "error": {"type": "E", "message": "m"}
    }
    assert service.get(job.id).event_seq == len(events)  # type: ignore[attr-defined]


def test_notifications_reach_other_stores(
    store_factory: StoreFactory, backend: str, clock: FakeClock
) -> None:
    if backend == "memory":
        pytest.skip("a memory store is private to its connection")
    listener_store = store_factory()
    received: list[Notification] = []
    got = threading.Event()

    def on_notification(n: Notification) -> None:
        received.append(n)
        if n.topic == "cancel":
            got.set()

    subscription = listener_store.notification_subscribe(on_notification)
    try:
        service = JobService(store_factory(), clock=clock)
        job = submit(service, queue="wake")
        service.claim("w", ["wake"], 1)
        pending = submit(service, queue="wake")
        service.cancel(pending.id)  # type: ignore[attr-defined]  (cancelled outright: no worker to tell)
        service.cancel(job.id)  # type: ignore[attr-defined]
        assert got.wait(5), received
    finally:
        subscription.close()
    assert Notification("new_job", queue="wake") in received
    assert [n.job_id for n in received if n.topic == "cancel"] == [job.id]  # type: ignore[attr-defined]
    assert Notification("cancel", job_id=job.id) in received  # type: ignore[attr-defined]


def test_concurrent_claims_never_share_a_job(store_factory: StoreFactory, backend: str) -> None:
    if backend == "memory":
        pytest.skip("a memory store is private to its connection")
    seed = JobService(store_factory())
    seed.submit_many([SubmitRequest(kind="k") for _ in range(300)])
    claimed: list[list[object]] = [[] for _ in range(4)]

    def claimer(slot: int) -> None:
        service = JobService(store_factory())
        while batch := service.claim(f"w{slot}", ["default"], 7):
            claimed[slot].extend(j.id for j in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [i for ids in claimed for i in ids]
    assert len(everything) == 300
    assert len(set(everything)) == 300


def test_admin_actions_are_audited_in_the_same_transaction(service: JobService) -> None:
    admin, user = Actor("key:admin", is_admin=True), Actor("key:user")
    mine = submit(service, tenant="t", principal="key:user")
    theirs = submit(service, tenant="t", principal="key:other")
    with pytest.raises(Forbidden):
        service.cancel(theirs.id, "t", user)  # type: ignore[attr-defined]
    assert service.cancel(mine.id, "t", user).status is JobStatus.CANCELLED  # type: ignore[attr-defined]
    assert service.audit_log("t") == []  # a user cancelling its own job is not an admin action
    _, position = service.reprioritize(theirs.id, 7, "t", admin)  # type: ignore[attr-defined]
    assert position == 1
    service.cancel(theirs.id, "t", admin)  # type: ignore[attr-defined]
    service.requeue(theirs.id, "t", admin)  # type: ignore[attr-defined]
    log = service.audit_log("t")
    assert [(r.action, r.actor, r.job_id) for r in log] == [
        ("job.retry", "key:admin", theirs.id),  # type: ignore[attr-defined]
        ("job.cancel", "key:admin", theirs.id),  # type: ignore[attr-defined]
        ("job.reprioritize", "key:admin", theirs.id),  # type: ignore[attr-defined]
    ]
    assert log[2].before == {"status": "pending", "priority": 0}
    assert log[2].after == {"status": "pending", "priority": 7}
    assert log[1].after == {"status": "cancelled", "priority": 7}
    assert service.audit_log("other-tenant") == []
    assert [r.id for r in service.audit_log("t", before_id=log[0].id)] == [log[1].id, log[2].id]
    # A failed CAS writes no audit row.
    with pytest.raises(InvalidTransition):
        service.reprioritize(mine.id, 3, "t", admin)  # type: ignore[attr-defined]
    assert len(service.audit_log("t")) == 3


def test_admin_cancel_endpoint_semantics(service: JobService) -> None:
    job = submit(service, tenant="t", principal="key:admin")
    with pytest.raises(Forbidden):
        service.cancel(job.id, "t", Actor("key:user"), admin_action=True)  # type: ignore[attr-defined]
    service.cancel(job.id, "t", Actor("key:admin", is_admin=True), admin_action=True)  # type: ignore[attr-defined]
    assert [r.action for r in service.audit_log("t")] == ["job.cancel"]


def test_api_keys(store: object, clock: FakeClock) -> None:
    from jobmill.domain.admin import ApiKeyRecord, AuditEntry
    from jobmill.store.base import ApiKeyInsertParams, ApiKeyListParams, ApiKeyRevokeParams

    s = store  # type: ignore[assignment]
    record = ApiKeyRecord("abc123", "t", "admin", "ci", "hash1", clock())
    assert s.api_key_insert(ApiKeyInsertParams(record, AuditEntry("cli", "key.create"))) == record  # type: ignore[attr-defined]
    s.api_key_insert(
        ApiKeyInsertParams(
            ApiKeyRecord("def456", "u", "user", None, "h2", clock()), AuditEntry("cli", "key.create")
        )
    )  # type: ignore[attr-defined]
    assert s.api_key_get("abc123") == record  # type: ignore[attr-defined]
    assert s.api_key_get("nope") is None  # type: ignore[attr-defined]
    assert [k.key_id for k in s.api_key_list(ApiKeyListParams("t"))] == ["abc123"]  # type: ignore[attr-defined]
    assert len(s.api_key_list(ApiKeyListParams())) == 2  # type: ignore[attr-defined]
    revoke = ApiKeyRevokeParams("abc123", "u", clock(), AuditEntry("cli", "key.revoke"))
    assert s.api_key_revoke(revoke) is None  # type: ignore[attr-defined]  # another tenant's key
    revoked = s.api_key_revoke(ApiKeyRevokeParams("abc123", "t", clock(), AuditEntry("cli", "key.revoke")))  # type: ignore[attr-defined]
    assert revoked is not None and revoked.revoked_at == clock() and not revoked.active
    assert (
        s.api_key_revoke(ApiKeyRevokeParams("abc123", None, clock(), AuditEntry("cli", "key.revoke"))) is None
    )  # type: ignore[attr-defined]
    service = JobService(store, clock=clock)  # type: ignore[arg-type]
    assert [r.action for r in service.audit_log("t")] == ["key.revoke", "key.create"]


def test_an_opened_store_lacks_no_migration(store: JobStore) -> None:
    assert store.pending_migrations() == []


def test_queue_stats(service: JobService, clock: FakeClock) -> None:
    submit(service, tenant="t", queue="a")
    oldest = submit(service, tenant="t", queue="a")
    submit(service, tenant="other", queue="a")
    submit(service, tenant="t", queue="b", max_attempts=1)
    service.cancel(service.list_jobs(JobListParams(tenant="t", queue="a", limit=5))[-1].id, "t")
    clock.advance(5)
    (running,) = service.claim("w", ["b"], 1)
    service.fail(running, lease_of(running), {"type": "E", "message": "x"})
    submit(service, tenant="t", queue="b")
    (done,) = service.claim("w", ["b"], 1)
    service.complete_many([Completion(lease_of(done), 1)])
    submit(service, tenant="t", queue="b")
    service.claim("w", ["b"], 1)
    stats = {q.queue: q for q in service.queue_stats("t")}
    assert (stats["a"].pending, stats["a"].running, stats["a"].oldest_pending_at) == (1, 0, oldest.created_at)  # type: ignore[attr-defined]
    assert (stats["b"].pending, stats["b"].running, stats["b"].completed_since, stats["b"].failed_since) == (
        0,
        1,
        1,
        1,
    )
    assert stats["b"].oldest_pending_at is None
    assert {q.queue: q.pending for q in service.queue_stats(None)} == {"a": 2, "b": 0}
    clock.advance(3601)
    late = {q.queue: q for q in service.queue_stats("t")}
    assert (late["b"].completed_since, late["b"].failed_since) == (0, 0)


def test_status_many_reads_current_statuses(service: JobService) -> None:
    a, b, c = (submit(service) for _ in range(3))
    service.claim("w", ["default"], 2)
    service.cancel(a.id)  # type: ignore[attr-defined]
    service.cancel(c.id)  # type: ignore[attr-defined]
    statuses = service.statuses([a.id, b.id, c.id, uuid4()])  # type: ignore[attr-defined]
    assert statuses == {
        a.id: JobStatus.CANCELLING,  # type: ignore[attr-defined]
        b.id: JobStatus.RUNNING,  # type: ignore[attr-defined]
        c.id: JobStatus.CANCELLED,  # type: ignore[attr-defined]
    }
    assert service.statuses([]) == {}
