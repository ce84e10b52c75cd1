"""Queues summary, health, readiness and metrics."""

from __future__ import annotations

import pytest

from jobmill.api.app import API_PREFIX
from jobmill.errors import StoreUnavailable
from tests.api.harness import Api


def test_queues(api: Api) -> None:
    assert api.get(f"{API_PREFIX}/queues", token=api.user).json() == {"queues": []}
    for _ in range(2):
        api.submit(api.user)
    api.submit(api.user, "t.other")
    running = api.submit(api.user, queue="work")
    api.start(running["id"])
    done = api.submit(api.user, queue="work")
    api.complete(api.start(done["id"]), 1)
    failed = api.submit(api.user, queue="work")
    api.fail(api.start(failed["id"]))
    api.submit(api.other_user, queue="work")  # another tenant's: not counted

    queues = {q["queue"]: q for q in api.get(f"{API_PREFIX}/queues", token=api.user).json()["queues"]}
    assert set(queues) == {"default", "other", "work"}
    assert (queues["default"]["pending"], queues["default"]["running"]) == (2, 0)
    assert (
        queues["default"]["oldest_pending_age_s"] is not None
        and queues["default"]["oldest_pending_age_s"] >= 0
    )
    assert queues["other"]["pending"] == 1
    work = queues["work"]
    assert (work["pending"], work["running"], work["completed_last_hour"], work["failed_last_hour"]) == (
        0,
        1,
        1,
        1,
    )
    assert work["oldest_pending_age_s"] is None


def test_health_and_readiness(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.get(f"{API_PREFIX}/healthz").json() == {"status": "ok"}
    assert api.get(f"{API_PREFIX}/readyz").json() == {"status": "ok"}

    def down() -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(api.services.jobs.store, "ping", down)
    response = api.get(f"{API_PREFIX}/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert "refused" not in response.text
    # Liveness does not depend on the store.
    assert api.get(f"{API_PREFIX}/healthz").status_code == 200


def _scrape(api: Api) -> str:
    response = api.get(f"{API_PREFIX}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics(api: Api) -> None:
    api.submit(api.user, "t.other")
    api.submit(api.other_user, "t.other")
    running = api.submit(api.user, queue="mq")
    api.start(running["id"])

    # Jobs by status per queue are read from the store of the serving app (the harness runs its lifespan).
    text = _scrape(api)
    assert "# TYPE jobmill_jobs gauge" in text
    assert 'jobmill_jobs{queue="other",status="pending"} 2.0' in text  # all tenants
    assert 'jobmill_jobs{queue="mq",status="running"} 1.0' in text
    assert "# TYPE jobmill_jobs_submitted_total counter" in text
    assert 'jobmill_jobs_submitted_total{kind="t.other",queue="other"}' in text
    assert "jobmill_http_requests_total" in text
    assert "jobmill_pickup_latency_seconds" in text and "jobmill_run_seconds" in text
    # The counter counts submissions.
    before = _counter(text, 'jobmill_jobs_submitted_total{kind="t.other",queue="other"}')
    api.submit(api.user, "t.other")
    assert _counter(_scrape(api), 'jobmill_jobs_submitted_total{kind="t.other",queue="other"}') == before + 1


def _counter(text: str, name: str) -> float:
    [value] = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)
