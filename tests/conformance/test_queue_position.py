"""queue_position is exact: it equals the brute-force rank, and the claim order agrees with it.

Random sequences of submissions (mixed priorities, queues, delays), claims, cancels, priority changes,
failures with backoff and clock moves; after every step each pending job's reported position is compared
with the oracle of domain/ordering.py, and at the end the jobs are claimed one by one to check that they
come out in exactly the order the positions promised.

The SQLite and PostgreSQL stores answer from per-block counts kept by triggers (see their queue-position
migrations); there the blocks are made tiny (2 or 4 seqs), so that a few jobs span many of them, and after
every step the counts are also compared with a recount from the jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobmill.domain.job import Job, JobStatus
from jobmill.domain.ordering import oracle_position
from jobmill.service import JobService, RetryPolicy, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.store.base import JobListParams, Lease
from tests.support.clock import FakeClock
from tests.support.positions import BlockCounts

QUEUES = ["a", "b"]
DEFAULT_BLOCK_WIDTH = 1024  # what the migrations set

Step = tuple[str, Any]


def step_lists(priorities: st.SearchStrategy[int], submit_weight: int = 1) -> st.SearchStrategy[list[Step]]:
    submit = st.tuples(
        st.just("submit"), st.tuples(st.sampled_from(QUEUES), priorities, st.sampled_from([0, 0, 0, 5]))
    )
    return st.lists(
        st.one_of(
            *[submit] * submit_weight,
            st.tuples(st.just("claim"), st.tuples(st.sampled_from(QUEUES), st.integers(1, 3))),
            st.tuples(st.just("cancel"), st.integers(0, 1000)),
            st.tuples(st.just("reprioritize"), st.tuples(st.integers(0, 1000), priorities)),
            st.tuples(st.just("fail"), st.integers(0, 1000)),
            st.tuples(st.just("advance"), st.sampled_from([1, 3, 10])),
        ),
        min_size=1,
        max_size=40,
    )


steps = step_lists(st.integers(-3, 3))
# For the stores that count by blocks: more jobs per bucket, so that buckets span several blocks.
dense_steps = step_lists(st.integers(-1, 1), submit_weight=4)


def all_jobs(service: JobService) -> list[Job]:
    return service.list_jobs(JobListParams(limit=10_000))


def check_positions(service: JobService, clock: FakeClock) -> None:
    jobs = all_jobs(service)
    for job in jobs:
        expected = oracle_position(job, jobs, clock())
        assert service.queue_position(job.id) == expected, (job, expected)


def run_sequence(
    service: JobService, clock: FakeClock, sequence: list[Step], counts: BlockCounts | None = None
) -> None:
    submitted: list[Job] = []
    running: dict[Any, Job] = {}
    for op, arg in sequence:
        if op == "submit":
            queue, priority, delay = arg
            request = SubmitRequest(
                kind="k",
                queue=queue,
                priority=priority,
                max_attempts=3,
                run_after=clock() + timedelta(seconds=delay),
            )
            submitted.append(service.submit(request).job)
        elif op == "claim":
            queue, limit = arg
            before = all_jobs(service)
            expected_order = sorted(
                (j for j in before if j.queue == queue and j.is_runnable(clock())),
                key=lambda j: oracle_position(j, before, clock()) or 0,
            )[:limit]
            claimed = service.claim("w", [queue], limit)
            assert [j.id for j in claimed] == [j.id for j in expected_order]
            running.update((j.id, j) for j in claimed)
        elif op in ("cancel", "reprioritize", "fail") and submitted:
            index = (arg[0] if op == "reprioritize" else arg) % len(submitted)
            job = service.get(submitted[index].id)
            if op == "cancel" and not job.status.is_terminal:
                service.cancel(job.id)
            elif op == "reprioritize" and job.status is JobStatus.PENDING:
                _, position = service.reprioritize(job.id, arg[1])
                assert position == oracle_position(service.get(job.id), all_jobs(service), clock())
            elif op == "fail" and job.status is JobStatus.RUNNING and job.id in running:
                held = running.pop(job.id)
                assert held.lease_token is not None
                service.fail(held, Lease(held.id, held.lease_token), {"type": "E", "message": "m"})
        elif op == "advance":
            clock.advance(arg)
        check_positions(service, clock)
        if counts is not None:
            counts.assert_consistent()
    # Finally drain every queue one job at a time: the order must be the order of the positions.
    for queue in QUEUES:
        jobs = all_jobs(service)
        promised = sorted(
            (j for j in jobs if j.queue == queue and j.is_runnable(clock())),
            key=lambda j: oracle_position(j, jobs, clock()) or 0,
        )
        drained = []
        while batch := service.claim("drain", [queue], 1):
            drained.append(batch[0].id)
        assert drained == [j.id for j in promised]
    if counts is not None:
        counts.assert_consistent()


def make_service(store: JobStore, clock: FakeClock) -> JobService:
    return JobService(store, clock=clock, retry=RetryPolicy(base_s=2, max_s=8))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=steps)
def test_positions_match_oracle_memory(sequence: list[Step], store_factory: Callable[[], JobStore]) -> None:
    clock = FakeClock()
    run_sequence(make_service(store_factory(), clock), clock, sequence)


BLOCK_WIDTHS = st.sampled_from([2, 4])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=dense_steps, width=BLOCK_WIDTHS)
def test_positions_match_oracle_sqlite(sequence: list[Step], width: int, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / uuid4().hex}.db"  # a fresh file per example
    store = open_store(url)
    counts = BlockCounts(url)
    try:
        counts.set_width(width)
        clock = FakeClock()
        run_sequence(make_service(store, clock), clock, sequence, counts)
    finally:
        counts.close()
        store.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=dense_steps, width=BLOCK_WIDTHS)
def test_positions_match_oracle_postgres(
    sequence: list[Step], width: int, store_factory: Callable[[], JobStore], pg_database: Any
) -> None:
    pg_database.truncate()  # each example starts from an empty database
    counts = BlockCounts(pg_database.url)
    try:
        counts.set_width(width)
        clock = FakeClock()
        run_sequence(make_service(store_factory(), clock), clock, sequence, counts)
    finally:
        counts.set_width(DEFAULT_BLOCK_WIDTH)  # the database is shared by the whole session
        counts.close()
