"""Prometheus metrics. Counters and histograms are observed where things happen (API, worker) in this
process; job counts by status come from the store at scrape time, so every API node reports the same."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobmill.store.base import QueueStats
from jobmill.worker.tallies import (
    PICKUP_BUCKETS,
    RUN_TIME_BUCKETS,
    WORKER_TALLIES,
    Histogram,
    TallyBook,
)

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter(
    "jobmill_jobs_submitted_total", "Jobs created by submissions", ["queue", "kind"], registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "jobmill_http_requests_total", "HTTP requests answered", ["method", "status"], registry=REGISTRY
)


class QueueGauges(Collector):
    """Jobs by status per queue, read from the store when Prometheus scrapes."""

    def __init__(self, read: Callable[[], list[QueueStats]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "jobmill_jobs", "Jobs by status per queue (all tenants)", labels=["queue", "status"]
        )
        for stats in self._read():
            gauge.add_metric([stats.queue, "pending"], stats.pending)
            gauge.add_metric([stats.queue, "running"], stats.running)
        yield gauge


class _WorkerMetrics(Collector):
    """The job metrics of this process's workers, read from their tallies when Prometheus scrapes."""

    def __init__(self, book: TallyBook) -> None:
        self._book = book

    def collect(self) -> Iterable[Metric]:
        total = self._book.snapshot()
        finished = CounterMetricFamily(
            "jobmill_jobs_finished", "Attempts ended by this process's workers", labels=["queue", "outcome"]
        )
        for labels, count in sorted(total.finished.items()):
            finished.add_metric(list(labels), count)
        yield finished
        yield _histogram_family(
            "jobmill_pickup_latency_seconds",
            "From runnable (submitted or retry due) to claimed",
            ["queue"],
            PICKUP_BUCKETS,
            total.pickup,
        )
        yield _histogram_family(
            "jobmill_run_seconds", "Handler run time of an attempt", ["queue", "kind"], RUN_TIME_BUCKETS,
            total.run_time,
        )  # fmt: skip


def _histogram_family(
    name: str,
    doc: str,
    labels: list[str],
    buckets: tuple[float, ...],
    table: dict[tuple[str, ...], Histogram],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in sorted(table.items()):
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*[str(float(b)) for b in buckets], "+Inf"), hist.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        family.add_metric(list(key), cumulative, hist.total)
    return family


REGISTRY.register(_WorkerMetrics(WORKER_TALLIES))
