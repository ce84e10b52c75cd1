"""How an in-process worker records what its handlers returned, batch by batch."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobmill.domain.job import JobStatus
from jobmill.errors import StoreUnavailable
from jobmill.handlers import HandlerRegistry, HandlerSpec
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store
from jobmill.worker.context import JobContext
from jobmill.worker.worker import Worker, WorkerConfig, workdir_name


async def returns_params_value(ctx: JobContext) -> Any:
    value = ctx.params["value"]
    return {"not json": {1, 2}} if value == "set" else (math.nan if value == "nan" else value)


@pytest.mark.parametrize("bad", ["set", "nan"])
def test_a_result_that_is_not_json_fails_its_own_job_only(tmp_path: Path, bad: str) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.echo", returns_params_value, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    good = [service.submit(SubmitRequest(kind="t.echo", params={"value": i})).job for i in range(20)]
    broken = service.submit(SubmitRequest(kind="t.echo", params={"value": bad})).job
    # One worker, every job in one claim and so in one completion batch.
    worker = Worker(
        service,
        registry,
        WorkerConfig(queues=["q"], concurrency=50, burst=True, workdir_root=tmp_path / "work"),
    )
    stats = asyncio.run(worker.run())
    assert stats.completed == 20 and stats.failed == 1
    for job in good:
        done = service.get(job.id)
        assert done.status is JobStatus.COMPLETED and done.result == job.params["value"]
    failed = service.get(broken.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "bad_result"
    store.close()


async def returns_one(ctx: JobContext) -> int:
    return 1


def test_a_batch_write_is_retried_while_the_database_is_briefly_away(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.one", returns_one, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    jobs = [service.submit(SubmitRequest(kind="t.one")).job for _ in range(5)]
    real = service.complete_many
    failures = iter([StoreUnavailable("the database restarts"), StoreUnavailable("still restarting")])

    def flaky(completions: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(completions)

    service.complete_many = flaky  # type: ignore[method-assign]
    worker = Worker(
        service,
        registry,
        WorkerConfig(queues=["q"], concurrency=10, burst=True, workdir_root=tmp_path / "work"),
    )
    stats = asyncio.run(worker.run())
    assert stats.completed == 5
    assert all(service.get(job.id).status is JobStatus.COMPLETED for job in jobs)
    store.close()


def test_a_starting_worker_removes_workdirs_no_live_attempt_owns(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.one", returns_one, queue="q"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store, registry=registry)
    finished = service.submit(SubmitRequest(kind="t.one")).job
    running = service.submit(SubmitRequest(kind="t.one", queue="elsewhere")).job
    (claimed,) = service.claim("another-worker", ["elsewhere"], 1)
    assert claimed.id == running.id
    root = tmp_path / "work"
    leftovers = [root / workdir_name(finished.id, 1), root / workdir_name(uuid.uuid4(), 3)]
    stale_attempt = root / workdir_name(running.id, 7)  # not the attempt that runs now
    live = root / workdir_name(running.id, claimed.attempts)  # another worker's, on this host
    unrelated = root / "notes"
    for folder in (*leftovers, stale_attempt, live, unrelated):
        (folder / "sub").mkdir(parents=True)
    worker = Worker(service, registry, WorkerConfig(queues=["q"], burst=True, workdir_root=root))
    asyncio.run(worker.run())
    assert service.get(finished.id).status is JobStatus.COMPLETED
    assert not any(p.exists() for p in (*leftovers, stale_attempt))
    assert live.is_dir() and unrelated.is_dir()
    store.close()
