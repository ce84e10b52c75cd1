"""`Client` and `AsyncClient` against a real `jobmill serve` (every test runs with both twins)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobmill.client import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Job,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
    WaitTimeout,
)
from jobmill.domain.job import JobStatus
from tests.client.conftest import MakeClient
from tests.client.live import Live
from tests.support.processes import wait_until
from tests.support.service import free_port

pytestmark = pytest.mark.slow


def parked() -> str:
    """A queue no worker serves: its jobs stay pending (for positions, priorities, cancels)."""
    return f"parked-{uuid.uuid4().hex[:8]}"


def test_submit_get_list_and_pages(client: Any) -> None:
    queue = parked()
    first = client.submit("cli.steps", {"steps": 1}, queue=queue, priority=1)
    assert isinstance(first, Job) and first.status is JobStatus.PENDING and first.queue == queue
    assert first.queue_position == 1 and first.params == {"steps": 1} and first.priority == 1
    second = client.submit("cli.steps", {"steps": 2}, queue=queue, idempotency_key=queue)
    assert second.queue_position == 2
    # The same idempotency key and body: the same job, not a new one.
    assert client.submit("cli.steps", {"steps": 2}, queue=queue, idempotency_key=queue).id == second.id
    with pytest.raises(Conflict) as reused:  # the same key with another body
        client.submit("cli.steps", {"steps": 3}, queue=queue, idempotency_key=queue)
    assert reused.value.code == "idempotency_conflict"
    assert client.get(str(first.id)).id == first.id

    page = client.list(queue=queue, status=["pending", JobStatus.RUNNING], limit=1)
    assert [j.id for j in page] == [second.id] and page.next_cursor is not None  # newest first
    older = client.list(queue=queue, limit=1, cursor=page.next_cursor)
    assert [j.id for j in older.jobs] == [first.id]
    assert [j.id for j in client.iter_jobs(queue=queue, page_size=1)] == [second.id, first.id]
    assert len(client.list(queue=queue, status="completed,failed")) == 0


def test_wait_follows_progress_to_the_result(client: Any) -> None:
    job = client.submit("cli.steps", {"steps": 5, "delay_s": 0.05, "echo": "hi"})
    seen: list[Job] = []
    done = client.wait(job.id, on_update=seen.append, timeout=30)
    assert done.status is JobStatus.COMPLETED and done.result == {"steps": 5, "echo": "hi"}
    assert seen[-1] == done
    work = [j.progress for j in seen if j.stage == "work" and j.status is JobStatus.RUNNING]
    assert work == sorted(work) and len(set(work)) >= 3, seen  # the bar really advances
    # It followed the live stream: polling every 0.5 s could not have seen 3 of 5 steps 50 ms apart.
    paths = [r.url.path for r in client.transport.requests]
    assert paths.count(f"/api/v1/jobs/{job.id}/events") >= 1
    assert paths.count(f"/api/v1/jobs/{job.id}") < len(seen)


def test_wait_falls_back_to_polling_without_a_stream(make_client: MakeClient) -> None:
    def no_stream(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/events"):  # as an older server answers
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found"}})
        return None

    client = make_client(intercept=no_stream)
    job = client.submit("cli.steps", {"steps": 4, "delay_s": 0.25})
    seen: list[Job] = []
    done = client.wait(job.id, on_update=seen.append, poll_interval=0.05, timeout=30)
    assert done.status is JobStatus.COMPLETED and seen[-1] == done
    assert len({j.progress for j in seen if j.stage == "work"}) >= 3, seen
    paths = [r.url.path for r in client.transport.requests]
    assert paths.count(f"/api/v1/jobs/{job.id}/events") == 1  # tried once, then polled
    assert paths.count(f"/api/v1/jobs/{job.id}") >= 5


def test_events_replay_and_resume(client: Any) -> None:
    job = client.submit("cli.steps", {"steps": 3, "delay_s": 0.01})
    client.wait(job.id, timeout=30)
    events = list(client.events(job.id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].status is JobStatus.PENDING and events[-1].is_terminal
    assert events[-1].status is JobStatus.COMPLETED and all(e.job_id == job.id for e in events)
    assert [e.progress for e in events if e.type == "progress"][-1] == 100
    resumed = list(client.events(job.id, last_event_id=events[-3].seq))
    assert [e.seq for e in resumed] == [e.seq for e in events[-2:]]


def test_upload_and_download(client: Any, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"shout this\n" * 1000)
    for given in (source, str(source), b"shout this\n" * 1000, io.BytesIO(b"shout this\n" * 1000)):
        job = client.submit("cli.upper", files={"source": given})
        assert [(f.name, f.size) for f in job.inputs] == [("source", 11000)]
    done = client.wait(job.id, timeout=30)
    assert done.status is JobStatus.COMPLETED and done.result == {"bytes": 11000}
    output = done.output("upper.txt")
    assert output is not None and output.size == 11000 and output.download_url.startswith("http")

    saved = client.download(job.id, "upper.txt", tmp_path / "out" / "copy.txt")
    assert saved == tmp_path / "out" / "copy.txt" and saved.read_bytes() == b"SHOUT THIS\n" * 1000
    (tmp_path / "folder").mkdir()
    into_folder = client.download(job.id, "upper.txt", tmp_path / "folder")
    assert into_folder == tmp_path / "folder" / "upper.txt" and into_folder.stat().st_size == 11000
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["upper.txt"]  # no partial file
    new_folder = client.download(job.id, "upper.txt", f"{tmp_path}/new/")
    assert new_folder == tmp_path / "new" / "upper.txt" and new_folder.read_bytes() == b"SHOUT THIS\n" * 1000
    with pytest.raises(NotFound) as missing:
        client.download(job.id, "nope.txt", tmp_path / "nope.txt")
    assert missing.value.status == 404 and not (tmp_path / "nope.txt").exists()


def test_cancel_pending_and_running(client: Any) -> None:
    pending = client.submit("cli.steps", queue=parked())
    assert client.cancel(pending.id).status is JobStatus.CANCELLED
    running = client.submit("cli.sleep", {"seconds": 30})
    wait_until(lambda: client.get(running.id).status is JobStatus.RUNNING, 10, "the job to start", 0.05)
    assert client.cancel(running.id).status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    assert client.wait(running.id, timeout=30).status is JobStatus.CANCELLED
    with pytest.raises(Conflict) as finished:
        client.cancel(running.id)
    assert finished.value.code == "invalid_state" and finished.value.details == {"status": "cancelled"}


def test_admin_priority_and_retry(client: Any, make_client: MakeClient, live: Live) -> None:
    queue = parked()
    first = client.submit("cli.steps", queue=queue)
    second = client.submit("cli.steps", queue=queue)
    job, position = client.set_priority(second.id, 10)
    assert job.id == second.id and job.priority == 10 and position == 1
    assert client.get(first.id).queue_position == 2
    user = make_client(live.user_key)
    with pytest.raises(Forbidden) as forbidden:
        user.set_priority(first.id, 5)
    assert forbidden.value.status == 403 and forbidden.value.request_id
    client.cancel(first.id)
    again = client.retry(first.id)
    assert again.status is JobStatus.PENDING and again.queue_position == 2
    with pytest.raises(Conflict):
        client.retry(second.id)  # pending: nothing to retry


def test_typed_errors(client: Any, make_client: MakeClient, live: Live) -> None:
    with pytest.raises(NotFound) as unknown:
        client.get(uuid.uuid4())
    assert (unknown.value.status, unknown.value.code) == (404, "not_found") and unknown.value.request_id
    with pytest.raises(BadRequest):
        client.get("not-a-uuid")
    with pytest.raises(Unprocessable) as invalid:
        client.submit("no.such.kind")
    assert invalid.value.details == {"kind": "no.such.kind"}
    with pytest.raises(PayloadTooLarge):  # JOBMILL_MAX_JSON_BYTES, refused before parsing
        client.submit("cli.steps", {"padding": "x" * 1_100_000})
    with pytest.raises(Unauthorized):
        make_client("jm_000000000000_" + "x" * 43).list()
    with pytest.raises(NotFound):  # another tenant's job does not exist for this one
        make_client(live.new_key("user", tenant="other")).get(client.submit("cli.steps", queue=parked()).id)
    with pytest.raises(ConnectionFailed) as unreachable:
        make_client(url=f"http://127.0.0.1:{free_port()}").get(uuid.uuid4())
    assert "cannot reach jobmill" in str(unreachable.value)


def test_wait_timeout(client: Any) -> None:
    job = client.submit("cli.steps", queue=parked())
    with pytest.raises(WaitTimeout) as timed_out:
        client.wait(job.id, timeout=0.3, poll_interval=0.05)
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.job.status is JobStatus.PENDING
    assert timed_out.value.job.queue_position == 1
