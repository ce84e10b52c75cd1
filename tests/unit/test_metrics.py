"""The worker's plain tallies come out of /metrics as the counters and histograms they replaced."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from jobmill.metrics import _WorkerMetrics
from jobmill.worker.tallies import TallyBook, WorkerTallies


def scrape(book: TallyBook) -> str:
    registry = CollectorRegistry()
    registry.register(_WorkerMetrics(book))
    return generate_latest(registry).decode()


def test_tallies_become_counters_and_cumulative_histograms() -> None:
    metrics = TallyBook()
    a, b = WorkerTallies(), WorkerTallies()
    metrics.track(a)
    metrics.track(b)
    a.job_finished("q", "k", "ok", 0.007)
    a.job_finished("q", "k", "ok", 2.0)
    b.job_finished("q", "k", "failed", 0.007)
    a.picked_up("q", 0.0005)
    text = scrape(metrics)
    assert 'jobmill_jobs_finished_total{outcome="ok",queue="q"} 2.0' in text
    assert 'jobmill_jobs_finished_total{outcome="failed",queue="q"} 1.0' in text
    # 0.007 s twice (le 0.01 and above), 2.0 s once (le 5.0 and above); the sum is exact.
    assert 'jobmill_run_seconds_bucket{kind="k",le="0.005",queue="q"} 0.0' in text
    assert 'jobmill_run_seconds_bucket{kind="k",le="0.01",queue="q"} 2.0' in text
    assert 'jobmill_run_seconds_bucket{kind="k",le="1.0",queue="q"} 2.0' in text
    assert 'jobmill_run_seconds_bucket{kind="k",le="5.0",queue="q"} 3.0' in text
    assert 'jobmill_run_seconds_bucket{kind="k",le="+Inf",queue="q"} 3.0' in text
    assert 'jobmill_run_seconds_count{kind="k",queue="q"} 3.0' in text
    assert 'jobmill_run_seconds_sum{kind="k",queue="q"} 2.014' in text
    assert 'jobmill_pickup_latency_seconds_bucket{le="0.001",queue="q"} 1.0' in text


def test_a_stopped_worker_keeps_its_counts() -> None:
    metrics = TallyBook()
    tallies = WorkerTallies()
    metrics.track(tallies)
    tallies.job_finished("q", "k", "ok", 0.1)
    metrics.retire(tallies)
    tallies.job_finished("q", "k", "ok", 0.1)  # after retiring: no longer counted twice
    assert 'jobmill_jobs_finished_total{outcome="ok",queue="q"} 1.0' in scrape(metrics)


def test_families_are_declared_before_any_job() -> None:
    text = scrape(TallyBook())
    for name in ("jobmill_jobs_finished", "jobmill_pickup_latency_seconds", "jobmill_run_seconds"):
        assert f"# TYPE {name}" in text
