"""The client's protocol handling without a server: SSE framing, error envelopes, stream resumption."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import jobmill
import jobmill.client
from jobmill.client import (
    ApiError,
    AsyncClient,
    Client,
    Forbidden,
    Job,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    UnexpectedResponse,
    UnsupportedMediaType,
)
from jobmill.client._core import SseDecoder, error_from_response, service_root
from jobmill.domain.job import JobStatus
from jobmill.errors import JobmillError

JOB_ID = uuid.uuid4()
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def job_body(status: str, progress: float | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(JOB_ID),
        "kind": "x.y",
        "queue": "default",
        "priority": 0,
        "status": status,
        "stage": "work",
        "progress": progress,
        "message": None,
        "queue_position": None,
        "attempts": 1,
        "max_attempts": 1,
        "params": {},
        "inputs": [],
        "outputs": [],
        "updated_at": T0.isoformat(),
        **extra,
    }


def event(seq: int, status: str, progress: float | None, kind: str = "progress") -> str:
    data = {
        "id": 1000 + seq,
        "job_id": str(JOB_ID),
        "seq": seq,
        "at": (T0 + timedelta(seconds=seq)).isoformat(),
        "type": kind,
        "status": status,
        "stage": "work",
        "progress": progress,
        "message": None,
        "data": None,
    }
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


def test_sse_decoder_framing() -> None:
    decoder = SseDecoder()
    lines = [": keep-alive", "", *event(1, "running", 5).splitlines(), "", "event: unknown", "data: {}", ""]
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert [(e.seq, e.status, e.progress) for e in events] == [(1, JobStatus.RUNNING, 5.0)]
    split = SseDecoder()  # data split over several lines is joined with newlines (JSON allows it)
    payload = json.dumps(json.loads(event(2, "completed", 100, "status").split("data: ")[1]), indent=1)
    payload = payload.splitlines()
    for line in ["event: status", *(f"data: {p}" for p in payload)]:
        assert split.feed(line) is None
    done = split.feed("")
    assert done is not None and done.is_terminal
    bad = SseDecoder()
    bad.feed("data: {oops")
    with pytest.raises(UnexpectedResponse):
        bad.feed("")


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (403, {}, {"error": {"code": "forbidden", "message": "admins only", "request_id": "r1"}}, Forbidden),
        (
            413,
            {},
            {"error": {"code": "too_large", "message": "big", "details": {"limit": 5}}},
            PayloadTooLarge,
        ),
        (415, {}, {"error": {"code": "unsupported_media_type", "message": "no"}}, UnsupportedMediaType),
        (503, {}, {"error": {"code": "unavailable", "message": "later"}}, ServiceUnavailable),
        (502, {}, "<html>bad gateway</html>", ServerError),
        (418, {}, {"error": {"code": "teapot", "message": "short and stout"}}, ApiError),
    ],
)
def test_error_envelopes_become_typed_errors(
    status: int, headers: dict[str, str], body: Any, expected: type[ApiError]
) -> None:
    content = {"json": body} if isinstance(body, dict) else {"text": body}
    error = error_from_response(httpx.Response(status, headers=headers, **content))
    assert type(error) is expected and error.status == status and isinstance(error, JobmillError)
    if isinstance(body, dict):
        assert error.code == body["error"]["code"] and error.message == body["error"]["message"]
        assert error.details == body["error"].get("details")
        assert error.request_id == body["error"].get("request_id")
    else:
        assert error.code == "http_error" and "502" in error.message


def test_rate_limited_reads_retry_after() -> None:
    envelope = {"error": {"code": "rate_limited", "message": "slow down", "details": {"retry_after_s": 7}}}
    from_header = error_from_response(httpx.Response(429, headers={"Retry-After": "3"}, json=envelope))
    from_details = error_from_response(httpx.Response(429, json=envelope))
    assert isinstance(from_header, RateLimited) and from_header.retry_after == 3
    assert isinstance(from_details, RateLimited) and from_details.retry_after == 7


def test_service_root_accepts_the_usual_spellings() -> None:
    for url in ("127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/api/v1/"):
        assert service_root(url) == "http://127.0.0.1:8000"


def resuming_server() -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """The first stream breaks off after three events; the client must resume after seq 3, then fetch
    the final job. The key goes to this host only."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["authorization"] == "Bearer k"
        if request.url.path.endswith("/events"):
            sse = {"content-type": "text/event-stream"}
            if "last-event-id" not in request.headers:
                # The first two are history from before the state the client fetched: not reported again.
                early = event(1, "running", 10).replace((T0 + timedelta(seconds=1)).isoformat(), "2029-01-01")
                return httpx.Response(
                    200, headers=sse, text=early + event(2, "running", 10) + event(3, "running", 30)
                )
            assert request.headers["last-event-id"] == "3"
            return httpx.Response(
                200, headers=sse, text=event(4, "running", 60) + event(5, "completed", 100, "status")
            )
        resumed = any("last-event-id" in r.headers for r in seen)
        if not resumed:  # the job as it is before (10%) and after (30%) the first stream
            streamed = any(r.url.path.endswith("/events") for r in seen)
            return httpx.Response(200, json=job_body("running", 30 if streamed else 10))
        return httpx.Response(200, json=job_body("completed", 100, result={"ok": True}))

    return handle, seen


def test_watch_resumes_a_broken_stream_sync() -> None:
    handle, seen = resuming_server()
    with Client("http://jobs.test", "k", transport=httpx.MockTransport(handle)) as client:
        updates: list[Job] = []
        done = client.wait(JOB_ID, on_update=updates.append)
    assert [u.progress for u in updates] == [10, 30, 60, 100]
    assert done.status is JobStatus.COMPLETED and done.result == {"ok": True}
    assert [r.url.path.rsplit("/", 1)[-1] for r in seen] == [
        str(JOB_ID),
        "events",
        str(JOB_ID),
        "events",
        str(JOB_ID),
    ]


def test_watch_resumes_a_broken_stream_async() -> None:
    handle, seen = resuming_server()

    async def main() -> tuple[Job, list[Job]]:
        async with AsyncClient("http://jobs.test", "k", transport=httpx.MockTransport(handle)) as client:
            updates: list[Job] = []

            async def record(job: Job) -> None:
                updates.append(job)

            return await client.wait(JOB_ID, on_update=record), updates

    done, updates = asyncio.run(main())
    assert [u.progress for u in updates] == [10, 30, 60, 100] and done.result == {"ok": True}
    assert len(seen) == 5


def test_download_follows_the_redirect_without_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "jobs.test":
            return httpx.Response(307, headers={"location": "https://bucket.s3.test/out?sig=1"})
        return httpx.Response(200, content=b"bytes")

    with Client("http://jobs.test", "secret", transport=httpx.MockTransport(handle)) as client:
        saved = client.download(JOB_ID, "out.bin", tmp_path)
    assert saved == tmp_path / "out.bin" and saved.read_bytes() == b"bytes"
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert seen[1].url.host == "bucket.s3.test" and "authorization" not in seen[1].headers


def test_public_names() -> None:
    for name in jobmill.client.__all__:
        assert getattr(jobmill.client, name) is not None
    assert len(jobmill.__all__) == len(set(jobmill.__all__))
    assert jobmill.Forbidden is jobmill.client.Forbidden and jobmill.Client is Client
    for name in ("ApiError", "NotFound", "Conflict", "RateLimited", "ConnectionFailed", "WaitTimeout"):
        assert issubclass(getattr(jobmill, name), JobmillError)
