"""Prometheus metrics. Counters and histograms are observed where things happen (API, worker) in this
process; job counts by status come from the store at scrape time, so every API node reports the same."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobmill.store.base import QueueStats

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter(
    "jobmill_jobs_submitted_total", "Jobs created by submissions", ["queue", "kind"], registry=REGISTRY
)
JOBS_FINISHED = Counter(
    "jobmill_jobs_finished_total",
    "Attempts ended by this process's workers",
    ["queue", "outcome"],
    registry=REGISTRY,
)
PICKUP_LATENCY = Histogram(
    "jobmill_pickup_latency_seconds",
    "From runnable (submitted or retry due) to claimed",
    ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
RUN_TIME = Histogram(
    "jobmill_run_seconds",
    "Handler run time of an attempt",
    ["queue", "kind"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
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
