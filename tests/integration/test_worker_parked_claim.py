"""An idle PostgreSQL worker parks a claim for its listener thread, which runs it on the next new_job
(see jobmill.worker.worker.ParkedClaim). Unused, the claim comes back to the loop: for the poll, and at
a stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobmill.domain.job import Job, JobStatus
from jobmill.handlers import HandlerRegistry, HandlerSpec
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store
from jobmill.worker.context import JobContext
from jobmill.worker.worker import Worker, WorkerConfig


async def noop(ctx: JobContext) -> str:
    return "ok"


def services(pg_url: str) -> tuple[JobService, JobService, HandlerRegistry]:
    """The worker's service and a submitter's, each with its own store (connections, listener)."""
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.noop", noop, queue="q"))
    return (
        JobService(open_store(pg_url), registry=registry),
        JobService(open_store(pg_url), registry=registry),
        registry,
    )


def record_claim_threads(service: JobService) -> list[tuple[str, int]]:
    """(thread name, jobs claimed) of every claim the worker makes."""
    calls: list[tuple[str, int]] = []
    real = service.claim

    def claim(*args: Any, **kwargs: Any) -> list[Job]:
        jobs = real(*args, **kwargs)
        calls.append((threading.current_thread().name, len(jobs)))
        return jobs

    service.claim = claim  # type: ignore[method-assign]
    return calls


async def until(predicate: Callable[[], bool], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_an_idle_worker_claims_a_new_job_on_its_listener_thread(pg_url: str, tmp_path: Path) -> None:
    service, submitter, registry = services(pg_url)
    calls = record_claim_threads(service)
    # A long poll interval: nothing but the notification can bring the job in time.
    config = WorkerConfig(queues=["q"], concurrency=2, poll_interval_s=30, workdir_root=tmp_path / "w")
    worker = Worker(service, registry, config)

    async def scenario() -> Job:
        running = asyncio.create_task(worker.run())
        await until(lambda: worker._parked is not None)
        job = await asyncio.to_thread(lambda: submitter.submit(SubmitRequest(kind="t.noop")).job)
        await until(lambda: service.get(job.id).status is JobStatus.COMPLETED)
        worker.request_stop()
        await asyncio.wait_for(running, 10)
        return job

    job = asyncio.run(scenario())
    assert service.get(job.id).result == "ok"
    (thread,) = [name for name, count in calls if count]
    assert not thread.startswith("jobmill-db"), calls  # run where the NOTIFY arrived
    service.store.close()
    submitter.store.close()


def test_a_parked_claim_comes_back_for_the_poll_and_for_a_stop(pg_url: str, tmp_path: Path) -> None:
    """A job that becomes runnable later sends no notification then: only the poll finds it, which
    takes the parked claim back. A stop takes it back too, and the worker ends without claiming."""
    service, submitter, registry = services(pg_url)
    calls = record_claim_threads(service)
    config = WorkerConfig(queues=["q"], concurrency=2, poll_interval_s=0.2, workdir_root=tmp_path / "w")
    worker = Worker(service, registry, config)

    async def scenario() -> tuple[Job, float]:
        running = asyncio.create_task(worker.run())
        await until(lambda: worker._parked is not None)
        later = datetime.now(UTC) + timedelta(seconds=0.3)
        job = await asyncio.to_thread(
            lambda: submitter.submit(SubmitRequest(kind="t.noop", run_after=later)).job
        )
        await until(lambda: service.get(job.id).status is JobStatus.COMPLETED, within_s=5)
        await until(lambda: worker._parked is not None)  # idle again: parked again
        claims_before_stop = len(calls)
        stopping = time.monotonic()
        worker.request_stop()
        await asyncio.wait_for(running, 5)
        assert len(calls) == claims_before_stop  # the parked claim went back unused
        return job, time.monotonic() - stopping

    job, stop_s = asyncio.run(scenario())
    assert service.get(job.id).result == "ok"
    assert stop_s < 1
    assert any(name.startswith("jobmill-db") and count for name, count in calls)  # the poll's claim
    service.store.close()
    submitter.store.close()
