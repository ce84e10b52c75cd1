"""The part of the client that does no I/O, shared by `Client` and `AsyncClient`.

Each operation is a *flow*: a generator that yields the HTTP calls it needs (`Call`), receives their
responses and returns its result. `Client` drives flows with blocking httpx calls, `AsyncClient` with
awaited ones, so request building, response parsing and multi-step logic (two-step cancels, download
redirects) exist once. `Watch` does the same for `watch()`/`wait()`: a state machine that says what to do
next (fetch the job, sleep, follow the live stream) and digests what came back.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.metadata
import json
import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote, urljoin
from uuid import UUID

import httpx

from jobmill.client._errors import (
    ERRORS_BY_STATUS,
    ApiError,
    ConfirmationRequired,
    ConnectionFailed,
    RateLimited,
    RequestTimeout,
    ServerError,
    UnexpectedResponse,
    WaitTimeout,
)
from jobmill.client._models import Job, JobEvent, JobPage
from jobmill.domain.job import JobStatus

T = TypeVar("T")
API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT_S = 30.0
# The server sends a keep-alive comment every 15 s; a stream silent for longer than this is dead.
STREAM_READ_TIMEOUT_S = 45.0
# Consecutive broken streams after which watch() stops trying the stream and polls.
STREAM_FAILURES_BEFORE_POLLING = 3
REDIRECTS = (301, 302, 303, 307, 308)
OCTET_STREAM = "application/octet-stream"

JobId = UUID | str
FileSource = str | os.PathLike[str] | bytes | IO[bytes]
FilePart = tuple[str, IO[bytes] | bytes, str]


@dataclass(slots=True)
class Call:
    """One HTTP request of a flow. `url` is relative to the API base (`.../api/v1/`) or absolute."""

    method: str
    url: str
    params: httpx.QueryParams | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: list[tuple[str, FilePart]] | None = None
    headers: dict[str, str] | None = None
    save_to: Path | None = None  # stream a successful body into this file (atomically)


Flow = Generator[Call, httpx.Response, T]


# -- connection ---------------------------------------------------------------------------------------


def service_root(url: str) -> str:
    """The service's root URL: `host:8000`, `http://host:8000/` and `http://host:8000/api/v1` all work."""
    root = url.strip().rstrip("/")
    if not root:
        raise ValueError("the jobmill URL is empty")
    if "://" not in root:
        root = "http://" + root
    if root.endswith(API_PREFIX):
        root = root[: -len(API_PREFIX)]
    return root


class BearerAuth(httpx.Auth):
    """Sends the key to the jobmill service only, never to another host a redirect leads to (S3)."""

    def __init__(self, token: str, root: str) -> None:
        self._token = token
        origin = httpx.URL(root)
        self._origin = (origin.scheme, origin.host, origin.port)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if (request.url.scheme, request.url.host, request.url.port) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def client_options(url: str, api_key: str, timeout: float | httpx.Timeout) -> dict[str, Any]:
    root = service_root(url)
    return {
        "base_url": root + API_PREFIX + "/",
        "auth": BearerAuth(api_key, root),
        "timeout": timeout,
        "follow_redirects": False,
        "headers": {"User-Agent": f"jobmill-client/{_version()}", "Accept": "application/json"},
    }


def _version() -> str:
    try:
        return importlib.metadata.version("jobmill")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def transport_error(url: str, exc: httpx.TransportError) -> ConnectionFailed:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(url, f"timed out ({type(exc).__name__})")
    return ConnectionFailed(url, reason)


# -- responses ----------------------------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed exception for an error answer; the envelope when there is one, else the status line."""
    status = response.status_code
    code, message, details = "http_error", f"HTTP {status} {response.reason_phrase}".strip(), None
    request_id = response.headers.get("x-request-id")
    try:
        body = response.json()
    except ValueError:
        body = None
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict) and "code" in envelope:
        code = str(envelope.get("code"))
        message = str(envelope.get("message") or message)
        details = envelope.get("details")
        request_id = envelope.get("request_id") or request_id
    cls = ERRORS_BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    if cls is RateLimited:
        return RateLimited(
            status, code, message, details, request_id, retry_after=_retry_after(response, details)
        )
    return cls(status, code, message, details, request_id)


def _retry_after(response: httpx.Response, details: Any) -> float:
    header = response.headers.get("retry-after")
    with contextlib.suppress(TypeError, ValueError):
        if header is not None:
            return max(0.0, float(header))
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        return max(0.0, float(details["retry_after_s"]))
    return 1.0


def check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise error_from_response(response)
    return response


def body_of(response: httpx.Response) -> Any:
    check(response)
    try:
        return response.json()
    except ValueError:
        snippet = response.text[:80].replace("\n", " ")
        raise UnexpectedResponse(
            f"expected JSON from {response.request.url}, got {snippet!r}", response.status_code
        ) from None


def job_path(job_id: JobId, *rest: str) -> str:
    parts = [quote(str(job_id), safe=""), *(quote(p, safe="") for p in rest)]
    return "jobs/" + "/".join(parts)


# -- flows --------------------------------------------------------------------------------------------


def _file_part(name: str, source: FileSource, stack: contextlib.ExitStack) -> FilePart:
    if isinstance(source, bytes | bytearray | memoryview):
        return name, bytes(source), OCTET_STREAM
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.name, stack.enter_context(path.open("rb")), OCTET_STREAM
    label = getattr(source, "name", None)
    return (Path(label).name if isinstance(label, str) and label else name), source, OCTET_STREAM


def submit_flow(
    kind: str,
    params: Mapping[str, Any] | None,
    files: Mapping[str, FileSource] | None,
    queue: str | None,
    priority: int,
    max_attempts: int | None,
    timeout_s: float | None,
    idempotency_key: str | None,
) -> Flow[Job]:
    spec: dict[str, Any] = {"kind": kind, "params": dict(params or {}), "priority": priority}
    optional = {
        "queue": queue,
        "max_attempts": max_attempts,
        "timeout_s": timeout_s,
        "idempotency_key": idempotency_key,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if not files:
        response = yield Call("POST", "jobs", json=spec)
        return Job.from_api(body_of(response))
    with contextlib.ExitStack() as stack:  # files opened here are closed however the flow ends
        parts = [(name, _file_part(name, source, stack)) for name, source in files.items()]
        response = yield Call("POST", "jobs", data={"spec": json.dumps(spec)}, files=parts)
    return Job.from_api(body_of(response))


def get_flow(job_id: JobId) -> Flow[Job]:
    response = yield Call("GET", job_path(job_id))
    return Job.from_api(body_of(response))


def _statuses(status: str | JobStatus | Iterable[str | JobStatus] | None) -> list[str]:
    if status is None:
        return []
    if isinstance(status, str):  # JobStatus is a str too
        return [s.strip() for s in str(status).split(",") if s.strip()]
    return [str(s) for s in status]


def list_flow(
    status: str | JobStatus | Iterable[str | JobStatus] | None,
    kind: str | None,
    queue: str | None,
    limit: int | None,
    cursor: str | None,
) -> Flow[JobPage]:
    params: list[tuple[str, str | int | float | bool | None]] = [("status", s) for s in _statuses(status)]
    for name, value in (("kind", kind), ("queue", queue), ("limit", limit), ("cursor", cursor)):
        if value is not None:
            params.append((name, str(value)))
    response = yield Call("GET", "jobs", params=httpx.QueryParams(params))
    return JobPage.from_api(body_of(response))


def cancel_flow(job_id: JobId, confirm: bool, confirm_token: str | None) -> Flow[Job]:
    body = {"confirm_token": confirm_token} if confirm_token else None
    response = yield Call("POST", job_path(job_id, "cancel"), json=body)
    data = body_of(response)
    if response.status_code == 202 and isinstance(data, dict) and "confirm_token" in data:
        # Two-step cancel (JOBMILL_CANCEL_CONFIRM): the first answer is a token to send back.
        token = str(data["confirm_token"])
        if not confirm:
            raise ConfirmationRequired(
                Job.from_api(data.get("job")), token, int(data.get("expires_in_s", 60))
            )
        response = yield Call("POST", job_path(job_id, "cancel"), json={"confirm_token": token})
        data = body_of(response)
    return Job.from_api(data)


def set_priority_flow(job_id: JobId, priority: int) -> Flow[tuple[Job, int | None]]:
    response = yield Call("PATCH", job_path(job_id, "priority"), json={"priority": priority})
    data = body_of(response)
    if not isinstance(data, dict):
        raise UnexpectedResponse("expected {job, new_position}")
    position = data.get("new_position")
    return Job.from_api(data.get("job")), None if position is None else int(position)


def retry_flow(job_id: JobId) -> Flow[Job]:
    response = yield Call("POST", job_path(job_id, "retry"))
    return Job.from_api(body_of(response))


def download_flow(job_id: JobId, name: str, path: str | os.PathLike[str]) -> Flow[Path]:
    response = yield Call("GET", job_path(job_id, "outputs", name))
    if response.status_code not in REDIRECTS:
        check(response)
        raise UnexpectedResponse(f"expected a redirect to the download, got HTTP {response.status_code}")
    location = response.headers.get("location")
    if not location:
        raise UnexpectedResponse("the download redirect has no Location")
    target = Path(path)
    if target.is_dir() or os.fspath(path).endswith(("/", os.sep)):  # a folder: keep the output's name
        target = target / (Path(name).name or "output")
    response = yield Call("GET", urljoin(str(response.request.url), location), save_to=target)
    check(response)
    return target


class AtomicFile:
    """A download lands under a temporary name next to its target and is renamed when complete."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        self.target = target
        self._temp = Path(temp)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self) -> None:
        self._file.close()
        os.replace(self._temp, self.target)

    def abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


# -- server-sent events -------------------------------------------------------------------------------


def events_call(job_id: JobId, last_event_id: int | None) -> Call:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return Call("GET", job_path(job_id, "events"), headers=headers)


def check_event_stream(response: httpx.Response) -> None:
    """After the error check of an opened stream: refuse an answer that is not an event stream."""
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise UnexpectedResponse(f"expected text/event-stream, got {content_type or 'no content type'!r}")


class SseDecoder:
    """Server-Sent Events, line by line (the WHATWG rules that matter here): `id`, `event`, multi-line
    `data`; comments (`: keep-alive`) ignored; a blank line dispatches. Yields each job event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> JobEvent | None:
        if line == "":
            data, event = "\n".join(self._data), self._event
            self._data, self._event = [], ""
            if not data:
                return None
            try:
                payload = json.loads(data)
            except ValueError:
                raise UnexpectedResponse(f"an event ({event or 'message'}) whose data is not JSON") from None
            if isinstance(payload, dict) and "seq" in payload and "job_id" in payload:
                return JobEvent.from_api(payload)
            return None  # an event kind this client does not know
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


# -- watching a job -----------------------------------------------------------------------------------


class Step(enum.Enum):
    FETCH = "fetch"  # GET the job
    SLEEP = "sleep"  # wait `Watch.delay` seconds
    STREAM = "stream"  # follow the live stream from `Watch.last_seq`
    DONE = "done"


def _shown(job: Job) -> tuple[Any, ...]:
    return (job.status, job.stage, job.progress, job.message, job.queue_position, job.attempts)


class Watch:
    """Follows one job until it is terminal, yielding a `Job` each time what it shows changes.

    While the job is pending it polls (the queue position is not an event); otherwise it follows the
    live stream, resuming after the last event seen; when the server has no stream (404) or the stream
    keeps breaking, it polls every `poll_interval` seconds. The last `Job` it yields is the terminal one,
    fetched again so that it carries the result, error and outputs.
    """

    def __init__(
        self,
        job_id: JobId,
        *,
        poll_interval: float = 0.5,
        timeout: float | None = None,
        use_stream: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.poll_interval = max(0.01, poll_interval)
        self.timeout = timeout
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self.job: Job | None = None
        self.last_seq: int | None = None
        self.use_stream = use_stream
        self.delay = 0.0
        self._fetch_now = True
        self._slept = False
        self._stream_failures = 0
        self._shown: tuple[Any, ...] | None = None

    def remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._clock()

    def stream_read_timeout(self) -> float:
        remaining = self.remaining()
        return (
            STREAM_READ_TIMEOUT_S if remaining is None else max(0.05, min(STREAM_READ_TIMEOUT_S, remaining))
        )

    def next_step(self) -> Step:
        job = self.job
        if job is not None and job.is_terminal and not self._fetch_now:
            return Step.DONE
        remaining = self.remaining()
        if job is not None and remaining is not None and remaining <= 0:
            assert self.timeout is not None
            raise WaitTimeout(job, self.timeout)
        if self.delay > 0:  # asked for by a rate limit
            self._slept = True
            return Step.SLEEP
        if self._fetch_now or job is None:
            return Step.FETCH
        if self.use_stream and job.status is not JobStatus.PENDING:
            return Step.STREAM
        if not self._slept:
            self._slept = True
            self.delay = (
                self.poll_interval if remaining is None else max(0.0, min(self.poll_interval, remaining))
            )
            return Step.SLEEP
        return Step.FETCH

    def slept(self) -> None:
        self.delay = 0.0

    def _report(self, job: Job) -> Job | None:
        self.job = job
        shown = _shown(job)
        if shown == self._shown:
            return None
        self._shown = shown
        return job

    def on_job(self, job: Job) -> Job | None:
        """A fetched job; returns it when it should be reported."""
        self._fetch_now = False
        self._slept = False
        return self._report(job)

    def on_rate_limited(self, exc: RateLimited) -> None:
        self.delay = max(self.poll_interval, exc.retry_after)

    def on_event(self, event: JobEvent) -> tuple[Job | None, bool]:
        """A streamed event: (a job to report or None, whether to stop following the stream)."""
        assert self.job is not None
        if self.last_seq is not None and event.seq <= self.last_seq:
            return None, False
        self.last_seq = event.seq
        self._stream_failures = 0
        current = self.job.updated_at
        if current is not None and event.at < current and not event.is_terminal:
            return None, False  # replayed history from before the state we already hold
        if event.is_terminal:
            self._fetch_now = True  # reported after a fetch: the final view has the result and outputs
            return None, True
        if event.status is JobStatus.PENDING:
            self._fetch_now = True  # back in the queue (a retry): poll for the position
            return None, True
        return self._report(self.job.with_event(event)), False

    def on_stream_end(self) -> None:
        """The stream closed before a terminal event (a restarting server): refresh, then resume."""
        self._fetch_now = True
        self._stream_failures += 1
        if self._stream_failures >= STREAM_FAILURES_BEFORE_POLLING:
            self.use_stream = False

    def on_stream_unavailable(self) -> None:
        """No stream for this job on this server (an older server answers 404): poll from now on."""
        self.use_stream = False
        self._fetch_now = True
