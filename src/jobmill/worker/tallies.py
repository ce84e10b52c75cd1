"""What a worker counts per job (finished attempts, pickup latency, run time), as plain numbers.

Kept apart from jobmill.metrics so that a worker process does not import prometheus_client: only a process
that serves /metrics (jobmill serve) exports these, by reading them when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
import threading
import weakref

PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RUN_TIME_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Histogram:
    """Bucket counts (not cumulative) plus the sum: what one label set of a histogram needs."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last slot is +Inf
        self.total = 0.0

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


class WorkerTallies:
    """What one worker counts per job, as plain dict and list increments.

    prometheus_client takes a lock and walks its buckets on every observe; a worker observing three
    metrics per job paid about a tenth of its CPU for them. A worker bumps these on its event loop's
    thread only; the collector below reads them when Prometheus scrapes (a copy made under the GIL).
    """

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str], int] = {}
        self.pickup: dict[tuple[str, ...], Histogram] = {}
        self.run_time: dict[tuple[str, ...], Histogram] = {}

    def job_finished(self, queue: str, kind: str, outcome: str, run_s: float) -> None:
        key = (queue, outcome)
        self.finished[key] = self.finished.get(key, 0) + 1
        _observe(self.run_time, (queue, kind), RUN_TIME_BUCKETS, run_s)

    def picked_up(self, queue: str, latency_s: float) -> None:
        _observe(self.pickup, (queue,), PICKUP_BUCKETS, latency_s)


def _observe(
    table: dict[tuple[str, ...], Histogram], key: tuple[str, ...], buckets: tuple[float, ...], value: float
) -> None:
    hist = table.get(key)
    if hist is None:
        hist = table[key] = Histogram(len(buckets))
    hist.counts[bisect.bisect_left(buckets, value)] += 1
    hist.total += value


class TallyBook:
    """The tallies of every worker of this process: live ones, plus what stopped ones counted."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[WorkerTallies] = weakref.WeakSet()
        self._retired = WorkerTallies()
        self._lock = threading.Lock()

    def track(self, tallies: WorkerTallies) -> None:
        with self._lock:
            self._live.add(tallies)

    def retire(self, tallies: WorkerTallies) -> None:
        """Fold a stopped worker's counts into the process total, so counters never go backwards."""
        with self._lock:
            self._live.discard(tallies)
            _fold(self._retired, tallies)

    def snapshot(self) -> WorkerTallies:
        total = WorkerTallies()
        with self._lock:
            _fold(total, self._retired)
            for tallies in list(self._live):
                _fold(total, tallies)
        return total


def _fold(into: WorkerTallies, source: WorkerTallies) -> None:
    for labels, count in list(source.finished.items()):
        into.finished[labels] = into.finished.get(labels, 0) + count
    for mine, theirs in ((into.pickup, source.pickup), (into.run_time, source.run_time)):
        for key, hist in list(theirs.items()):
            target = mine.get(key)
            if target is None:
                target = mine[key] = Histogram(len(hist.counts) - 1)
            target.merge(hist)


WORKER_TALLIES = TallyBook()
