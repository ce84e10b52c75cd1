"""SQLite-only behaviour: what a claim costs must not grow with the number of jobs waiting."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jobmill.domain.transitions import Transition, edge
from jobmill.service import JobService, SubmitRequest
from jobmill.store.base import JobClaimParams
from jobmill.store.sqlite import SqliteJobStore


def claim_cost(store: SqliteJobStore, queues: list[str], limit: int) -> int:
    """SQLite virtual-machine steps (in units of 100) of one claim: a measure of work, not of time, so
    the comparison below is exact on a busy machine too."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # 0: go on

    now = datetime.now(UTC)
    store._conn.set_progress_handler(count, 100)
    try:
        claimed = store.job_claim(JobClaimParams(queues, limit, "w", now, now, edge(Transition.CLAIM)))
    finally:
        store._conn.set_progress_handler(None, 0)
    assert len(claimed) == limit
    return steps


def test_a_claim_walks_only_the_jobs_it_takes(tmp_path: Path) -> None:
    """Regression: with `run_after <= ?` in the claim, SQLite planned it through the delayed-jobs index and
    sorted every pending job of the queues, so a claim at 20,000 pending jobs cost 13 ms, and more with
    every job waiting. One walk of the claim index per queue costs the same at any depth."""
    store = SqliteJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobService(store)
    for queue in ("a", "b"):
        service.submit_many([SubmitRequest(kind="k", queue=queue) for _ in range(200)])
    shallow = {"one queue": claim_cost(store, ["a"], 20), "two queues": claim_cost(store, ["a", "b"], 20)}
    for _ in range(10):
        for queue in ("a", "b"):
            service.submit_many([SubmitRequest(kind="k", queue=queue) for _ in range(1000)])
    deep = {"one queue": claim_cost(store, ["a"], 20), "two queues": claim_cost(store, ["a", "b"], 20)}
    for case, steps in deep.items():
        # 50 times the jobs waiting; the old plan cost about that much more too.
        assert steps < 2 * shallow[case], (case, shallow[case], steps)
    store.close()
