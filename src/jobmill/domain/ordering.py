"""The claim order, defined once: higher priority first, then submission order (FIFO).

`queue_position` is the rank of a runnable pending job in exactly this order among the runnable pending
jobs of its queue; the stores implement the same order in SQL (ORDER BY priority DESC, seq ASC) and the
conformance tests check both against `claim_sort_key`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from jobmill.domain.job import Job

PRIORITY_MIN = -1000
PRIORITY_MAX = 1000


def claim_sort_key(job: Job) -> tuple[int, int]:
    return (-job.priority, job.seq)


def oracle_position(job: Job, queue_jobs: Iterable[Job], now: datetime) -> int | None:
    """Brute-force queue position, for tests: 1 + runnable pending jobs of the queue ordered before `job`."""
    if not job.is_runnable(now):
        return None
    key = claim_sort_key(job)
    return 1 + sum(
        1
        for other in queue_jobs
        if other.queue == job.queue and other.is_runnable(now) and claim_sort_key(other) < key
    )
