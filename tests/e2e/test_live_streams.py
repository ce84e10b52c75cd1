"""Live streams across processes: a worker process writes, a separate `jobmill serve` streams (SSE, WS)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.processes import WorkerProcess, wait_until
from tests.support.service import ServeProcess, create_key, service_env

pytestmark = pytest.mark.slow

POLL_S = 0.2  # the SQLite API node's poll interval in these tests


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return service_env(database_url, tmp_path, JOBMILL_POLL_INTERVAL_S=str(POLL_S))


@pytest.fixture
def worker(database_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(database_url, tmp_path / "work", tmp_path / "worker.log").start()
    yield process
    process.stop()


def read_sse(response: httpx.Response) -> Iterator[tuple[dict[str, str], float]]:
    """Parsed SSE events (fields) with the time each arrived; comments are skipped."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                yield fields, time.time()
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def submit(client: httpx.Client, kind: str, params: dict[str, Any]) -> str:
    response = client.post("/api/v1/jobs", json={"kind": kind, "params": params})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_job_stream_replays_and_ends_after_the_terminal_event(
    api: ServeProcess, worker: WorkerProcess, env: dict[str, str], database_url: str
) -> None:
    key = create_key(env, "acme", "user")
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        job_id = submit(client, "e2e.ticker", {"ticks": 20, "interval_s": 0.1})
        latencies = []
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = []
            for fields, arrived in read_sse(response):
                data = json.loads(fields["data"])
                events.append((int(fields["id"]), fields["event"], data))
                if data["type"] == "progress":
                    latencies.append(arrived - datetime.fromisoformat(data["at"]).timestamp())
        # The stream ended by itself, after the terminal event, with every event in order.
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        assert events[-1][2]["status"] == "completed"
        progress = [d["progress"] for _, kind, d in events if kind == "progress" and d["progress"]]
        assert progress == sorted(progress) and progress[-1] == 100
        # A reconnect with Last-Event-ID replays only what came after, then ends too.
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "5"}) as again:
            replayed = [int(f["id"]) for f, _ in read_sse(again)]
        assert replayed == list(range(6, len(events) + 1))
    # A worker process wrote these; this separate API process relayed them within the bound.
    bound = 0.25 if database_url.startswith("postgresql") else POLL_S + 0.1
    median_ms, max_ms = statistics.median(latencies) * 1000, max(latencies) * 1000
    print(f"cross-process SSE latency: median {median_ms:.1f} ms, max {max_ms:.1f} ms")
    assert max(latencies) < bound, latencies


def test_streams_are_tenant_scoped(api: ServeProcess, worker: WorkerProcess, env: dict[str, str]) -> None:
    mine = {"Authorization": f"Bearer {create_key(env, 'acme', 'user')}"}
    other_key = create_key(env, "rival", "admin")
    other = {"Authorization": f"Bearer {other_key}"}
    with (
        httpx.Client(base_url=api.url, timeout=30) as client,
        httpx.Client(base_url=api.url, headers=mine, timeout=30) as mine_client,
        httpx.Client(base_url=api.url, headers=other, timeout=30) as rival_client,
    ):
        with client.stream("GET", "/api/v1/events", headers=other) as rival_stream:
            assert rival_stream.status_code == 200
            job_id = submit(mine_client, "e2e.ticker", {"ticks": 3})
            assert client.get(f"/api/v1/jobs/{job_id}/events", headers=other).status_code == 404
            # The rival's own job shows up on its stream; the first tenant's never does.
            rival_job = submit(rival_client, "e2e.ticker", {"ticks": 3})
            seen: list[str] = []
            events = read_sse(rival_stream)
            for fields, _ in events:
                data = json.loads(fields["data"])
                seen.append(data["job_id"])
                if data["status"] == "completed":
                    break
            events.close()  # leaves the half-read stream now, not at garbage collection
            assert set(seen) == {rival_job}
        wait_until(
            lambda: client.get(f"/api/v1/jobs/{job_id}", headers=mine).json()["status"] == "completed", 20
        )


def test_websocket_streams_the_tenant_events(
    api: ServeProcess, worker: WorkerProcess, env: dict[str, str]
) -> None:
    key = create_key(env, "acme", "user")
    other_key = create_key(env, "rival", "user")
    ws_url = api.url.replace("http://", "ws://") + "/api/v1/ws"
    with connect(ws_url) as refused:
        refused.send(json.dumps({"token": "jm_bogus_bogus"}))
        assert json.loads(refused.recv(10))["type"] == "error"
    with connect(ws_url) as rival, connect(ws_url) as ws:
        ws.send(json.dumps({"token": key}))  # the token as the first message, not in the URL
        assert json.loads(ws.recv(10)) == {"type": "ready", "tenant": "acme"}
        rival.send(json.dumps({"token": other_key}))
        assert json.loads(rival.recv(10))["type"] == "ready"
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            job_id = submit(client, "e2e.ticker", {"ticks": 3})
        statuses = []
        while not statuses or statuses[-1] != "completed":
            message = json.loads(ws.recv(20))
            if message["type"] == "event":
                assert message["event"]["job_id"] == job_id
                statuses.append(message["event"]["status"])
        assert statuses[0] == "pending" and "running" in statuses
        # Nothing of it reached the other tenant's socket (only keep-alives could, after 15 s).
        with pytest.raises(TimeoutError):
            rival.recv(0.5)
