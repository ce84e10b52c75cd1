"""Load: one real `jobmill serve` holding many live event streams while it is polled hard.

The server is `jobmill serve` on SQLite with its embedded worker running slow `demo.sleep` jobs that
report progress every second. Load generators in their own processes (asyncio, speaking HTTP/1.1
themselves: `plan.stream_processes` hold the subscribers, one more polls) then:

1. opens the subscribers: most follow one job (`GET /api/v1/jobs/{id}/events`), the rest the tenant
   (`GET /api/v1/events`), and waits until every one has its 200;
2. holds them for the run while polling `GET /api/v1/jobs/{id}` at a fixed rate (open loop: a request
   is sent on schedule whether or not the previous ones have answered, so a slow server shows up as
   latency, not as a quietly lower rate);
3. cancels the jobs (this process does): every per-job stream must then deliver the terminal event and
   end by itself.

Meanwhile this process samples the server's resident memory. Figures: errors by kind, 5xx, GET
latency, events delivered, subscribers held, RSS at start, peak and end, and its growth over the
steady part (it must level off, not keep growing with time).

`python -m chaos.load [--short]` runs it alone and prints the section; `python -m chaos.load generate
streams|poll [index/count]` is a generator (a plan as JSON on stdin, its tally as JSON on stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from chaos.report import Section

REPO = Path(__file__).resolve().parents[1]
TENANT = "load"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    subscribers: int
    tenant_subscribers: int  # of `subscribers`, how many follow the whole tenant
    poll_rate: float  # GET /jobs/{id} per second
    duration_s: float  # the steady part: all subscribers held, polling on
    jobs: int  # slow jobs running meanwhile, one progress event per second each
    keys: int = 5  # principals the load is spread over (each has its own rate-limit bucket)
    poll_connections: int = 64
    stream_processes: int = 2  # generator processes holding the subscribers (one more polls)

    @property
    def job_subscribers(self) -> int:
        return self.subscribers - self.tenant_subscribers


# Most subscribers follow one job (a client waiting for its result); a tenth follow the whole tenant
# (dashboards), each of which receives every job's events.
FULL = Plan(subscribers=1000, tenant_subscribers=100, poll_rate=200, duration_s=60, jobs=10)
SHORT = Plan(subscribers=200, tenant_subscribers=20, poll_rate=100, duration_s=12, jobs=5)


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (a thousand sockets need more than 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# ------------------------------------------------------------------------------------------ generator
#
# The generators speak HTTP/1.1 themselves over asyncio, with no client library: httpx spent most of a
# generator's CPU on its own bookkeeping (its pool scans every connection for every request; each SSE
# line passes through several layers), so on a shared machine the generator, not the server, set the
# latencies it reported. A subscriber is an asyncio.Protocol that parses the chunked answer as it arrives;
# a poll connection is a keep-alive stream that sends a GET and reads its Content-Length answer.


@dataclass
class Tally:
    """What a generator saw; JSON-able, sent back to the orchestrating process."""

    stream_open: int = 0
    stream_open_max: int = 0
    streams_opened: int = 0
    stream_status: dict[str, int] = field(default_factory=dict)  # answers to the stream requests
    stream_errors: dict[str, int] = field(default_factory=dict)  # exceptions while streaming
    streams_dropped: int = 0  # ended (or broke) before they should have
    job_streams_finished: int = 0  # per-job streams that ended after the terminal event
    events_job: int = 0
    events_tenant: int = 0
    resyncs: int = 0
    sequence_gaps: int = 0  # per-job streams whose ids were not 1, 2, 3, ...
    poll_status: dict[str, int] = field(default_factory=dict)
    poll_errors: dict[str, int] = field(default_factory=dict)
    poll_latencies_ms: list[float] = field(default_factory=list)
    held_samples: list[int] = field(default_factory=list)  # open streams, once a second while steady
    ramp_s: float = 0.0
    steady_started: float = 0.0  # wall-clock times, to line up with the memory samples
    steady_ended: float = 0.0
    polls_sent: int = 0
    poll_send_s: float = 0.0  # how long sending them took (the planned duration, unless the loop lagged)
    cancelled_jobs: int = 0
    cancel_status: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # the first few, to explain a failure

    def sample(self, where: str, exc: BaseException) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{where}: {type(exc).__name__}: {exc!r}"[:200])


def bump(counts: dict[str, int], key: object) -> None:
    counts[str(key)] = counts.get(str(key), 0) + 1


def merge_tallies(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The tallies of the stream generators as one. Open streams are sampled by each process at the same
    moments (they start on the same "go"), so the samples are added position by position."""
    merged: dict[str, Any] = asdict(Tally())
    for part in parts:
        for name, value in part.items():
            if name == "held_samples":
                continue
            if isinstance(value, dict):
                for key, n in value.items():
                    merged[name][key] = merged[name].get(key, 0) + n
            elif isinstance(value, list):
                merged[name] = merged[name] + value
            elif name in ("ramp_s", "steady_started", "steady_ended", "poll_send_s"):
                merged[name] = max(merged[name], value)
            else:
                merged[name] += value
    samples = [part["held_samples"] for part in parts]
    length = min((len(s) for s in samples), default=0)
    merged["held_samples"] = [sum(s[k] for s in samples) for k in range(length)]
    merged["error_samples"] = merged["error_samples"][:10]
    return merged


class HttpError(Exception):
    """An answer the generator could not read as HTTP/1.1."""


def _head(raw: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (names lower-cased) of a response head, without its blank line."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _request(host: str, path: str, key: str, accept: str = "application/json") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nAccept: {accept}\r\n\r\n"
    ).encode()


class EventStream(asyncio.Protocol):
    """One subscriber's connection: sends its request, then parses the chunked answer as it arrives and
    hands every complete event (the text between blank lines) to `on_event`.

    `status` resolves with the answer's status; `ended` with None when the server ended the body (the
    zero-size chunk), or with the error when the connection broke first."""

    def __init__(self, request: bytes, on_event: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.on_event = on_event
        self.status: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body = bytearray()  # the body's bytes not yet cut into events
        self._in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except (HttpError, ValueError) as exc:
            self._finish(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost settles the futures

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionResetError("the server closed the connection before the end of the body")
        if not self.status.done():
            self.status.set_exception(error)
        if not self.ended.done():
            self.ended.set_exception(error)
        # Retrieved either way, so an unawaited failure is not logged as "never retrieved".
        for future in (self.status, self.ended):
            if not future.cancelled():
                future.exception()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _finish(self, error: Exception | None) -> None:
        if not self.ended.done():
            if error is None:
                self.ended.set_result(None)
            else:
                self.ended.set_exception(error)
        self.close()

    def _parse(self) -> None:
        buffer = self._buffer
        if not self._in_body:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status, headers = _head(bytes(buffer[:end]))
            del buffer[: end + 4]
            self._in_body = True
            if not self.status.done():
                self.status.set_result(status)
            if status != 200:
                self._finish(None)  # only the status counts
                return
            if headers.get("transfer-encoding", "").lower() != "chunked":
                raise HttpError("an event stream must be chunked")
        position = 0
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size = int(buffer[position:line_end].split(b";", 1)[0], 16)
            if size == 0:
                self._cut_events()
                self._finish(None)
                return
            chunk_end = line_end + 2 + size
            if len(buffer) < chunk_end + 2:
                break
            self._body += buffer[line_end + 2 : chunk_end]
            position = chunk_end + 2
        del buffer[:position]
        self._cut_events()

    def _cut_events(self) -> None:
        body = self._body
        start = 0
        while (cut := body.find(b"\n\n", start)) >= 0:
            self.on_event(bytes(body[start:cut]))
            start = cut + 2
        del body[:start]


class PollConnection:
    """One keep-alive connection for the GETs: a request, then its whole answer (Content-Length)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def get(self, request: bytes) -> int:
        """The answer's status. A reused connection that the server closed before answering (its
        keep-alive timeout) is replaced once, as any HTTP client does for a GET."""
        for attempt in range(2):
            reused = self._writer is not None
            if self._reader is None or self._writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout_s
                )
                self._reader, self._writer = reader, writer
            else:
                reader, writer = self._reader, self._writer
            try:
                writer.write(request)
                async with asyncio.timeout(self.timeout_s):
                    status, headers = _head((await reader.readuntil(b"\r\n\r\n"))[:-4])
                    length = headers.get("content-length")
                    if length is None or not length.isdigit():
                        raise HttpError("an answer without Content-Length")
                    await reader.readexactly(int(length))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.close()
                unanswered = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if reused and unanswered and attempt == 0:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status
        raise AssertionError("unreachable")


class Generator:
    def __init__(
        self,
        plan: Plan,
        url: str,
        keys: list[str],
        admin_key: str,
        job_ids: list[str],
        part: tuple[int, int] = (0, 1),
    ) -> None:
        self.plan = plan
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host_header = host_port
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.keys = keys
        self.admin_key = admin_key
        self.job_ids = job_ids
        # This process's subscribers: every `count`-th, from `index` (each process gets both kinds).
        index, count = part
        self.mine = range(index, plan.subscribers, count)
        self.tally = Tally()
        self.stopping = False  # set before the generator closes the tenant streams itself

    def _key(self, i: int) -> str:
        return self.keys[i % len(self.keys)]

    def _on_event(self, per_job: bool) -> tuple[Callable[[bytes], None], Callable[[], bool]]:
        """The handler of one stream's events, and whether it has seen its job's terminal event."""
        tally = self.tally
        expected_seq = 1
        terminal = False

        def on_event(block: bytes) -> None:
            nonlocal expected_seq, terminal
            event_type = data = None
            for line in block.split(b"\n"):
                if line.startswith(b"id: ") and per_job:
                    seq = int(line[4:])
                    if seq != expected_seq:
                        tally.sequence_gaps += 1
                    expected_seq = seq + 1
                elif line.startswith(b"event: "):
                    event_type = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if data is None:
                return  # a keep-alive comment
            if event_type == b"resync":
                tally.resyncs += 1
            elif per_job:
                tally.events_job += 1
                if event_type == b"status":
                    body = json.loads(data)
                    if body["type"] == "status" and body["status"] in TERMINAL:
                        terminal = True
            else:
                tally.events_tenant += 1

        return on_event, lambda: terminal

    async def subscriber(self, i: int, answered: asyncio.Future[None] | None = None) -> None:
        tally = self.tally
        loop = asyncio.get_running_loop()
        per_job = i >= self.plan.tenant_subscribers
        path = f"/api/v1/jobs/{self.job_ids[i % len(self.job_ids)]}/events" if per_job else "/api/v1/events"
        on_event, saw_terminal = self._on_event(per_job)
        stream = EventStream(_request(self.host_header, path, self._key(i), "text/event-stream"), on_event)
        opened = False
        try:
            try:
                await asyncio.wait_for(loop.create_connection(lambda: stream, self.host, self.port), 30)
                status = await stream.status
            finally:
                if answered is not None:
                    answered.set_result(None)
            bump(tally.stream_status, status)
            if status != 200:
                return
            opened = True
            tally.streams_opened += 1
            tally.stream_open += 1
            tally.stream_open_max = max(tally.stream_open_max, tally.stream_open)
            await stream.ended
            # The server ended the stream: right for a per-job stream after its terminal event only.
            if per_job and saw_terminal():
                tally.job_streams_finished += 1
            else:
                tally.streams_dropped += 1
        except asyncio.CancelledError:
            if opened and not self.stopping:
                tally.streams_dropped += 1
            raise
        except (HttpError, OSError, ValueError, TimeoutError) as exc:
            bump(tally.stream_errors, type(exc).__name__)
            tally.sample(f"stream {i} ({'opened' if opened else 'opening'})", exc)
            if opened:
                tally.streams_dropped += 1
        finally:
            stream.close()
            if opened:
                tally.stream_open -= 1

    async def watch_held(self) -> None:
        while True:
            self.tally.held_samples.append(self.tally.stream_open)
            await asyncio.sleep(1.0)

    async def hold_streams(self, commands: asyncio.StreamReader) -> Tally:
        """Open this process's subscribers and say "ready" on stdout; count the open ones once a second
        from "go" on stdin until "stop", then wait for the per-job streams to end by themselves (the
        orchestrator cancels the jobs)."""
        loop = asyncio.get_running_loop()
        ramp_started = loop.time()
        subscribers: list[asyncio.Task[None]] = []
        answers: list[asyncio.Future[None]] = []
        for n, i in enumerate(self.mine):
            answers.append(loop.create_future())
            subscribers.append(asyncio.create_task(self.subscriber(i, answers[-1])))
            if n % 50 == 49:
                await asyncio.sleep(0)  # let the batch connect before creating more
        if answers:
            await asyncio.wait_for(asyncio.gather(*answers), 120)
        self.tally.ramp_s = loop.time() - ramp_started
        print(json.dumps({"ready": True}), flush=True)
        await commands.readline()  # "go"
        watcher = asyncio.create_task(self.watch_held())
        await commands.readline()  # "stop", or the end of stdin
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        # The end: every per-job stream must see its job's terminal event and be ended by the server.
        tenant = self.plan.tenant_subscribers
        job_streams = [task for i, task in zip(self.mine, subscribers, strict=True) if i >= tenant]
        if job_streams:
            await asyncio.wait(job_streams, timeout=60)
        self.stopping = True
        for task in subscribers:
            task.cancel()
        await asyncio.gather(*subscribers, return_exceptions=True)
        return self.tally

    async def poll_for(self, duration_s: float) -> Tally:
        """GET /jobs/{id} at `poll_rate` for `duration_s`, open loop, over `poll_connections` keep-alive
        connections. A request's latency counts from when it was due by the schedule, so time spent
        waiting for a free connection, or for this process, is part of it: nothing hides behind a queue."""
        plan, tally = self.plan, self.tally
        due: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        interval = 1 / plan.poll_rate
        pending = 0  # requests due and not yet answered (or failed)
        all_done = asyncio.Event()
        sending = True

        async def connection() -> None:
            nonlocal pending
            conn = PollConnection(self.host, self.port, timeout_s=10)
            try:
                while True:
                    n, due_at = await due.get()
                    job_id = self.job_ids[n % len(self.job_ids)]
                    request = _request(self.host_header, f"/api/v1/jobs/{job_id}", self._key(n))
                    try:
                        status = await conn.get(request)
                    except (HttpError, OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                        bump(tally.poll_errors, type(exc).__name__)
                        tally.sample(f"GET {n}", exc)
                    else:
                        tally.poll_latencies_ms.append((time.perf_counter() - due_at) * 1000)
                        bump(tally.poll_status, status)
                    pending -= 1
                    if not sending and pending == 0:
                        all_done.set()
            finally:
                conn.close()

        workers = [asyncio.create_task(connection()) for _ in range(plan.poll_connections)]
        tally.steady_started = time.time()
        started = time.perf_counter()
        count = round(plan.poll_rate * duration_s)
        n = 0
        while n < count:
            now = time.perf_counter()
            # Everything due by now is queued with the time it was due (a late wake-up sends a burst).
            while n < count and started + n * interval <= now:
                pending += 1
                due.put_nowait((n, started + n * interval))
                n += 1
            if n < count:
                await asyncio.sleep(max(0.0, started + n * interval - time.perf_counter()))
        tally.polls_sent = n
        tally.poll_send_s = time.perf_counter() - started
        sending = False
        if pending:
            # A server that fell far behind is not waited for without end: what is still unanswered
            # 30 s after the last request was due counts as an error.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await all_done.wait()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if pending:
            tally.poll_errors["unanswered 30 s after the run"] = pending
        tally.steady_ended = time.time()
        return tally


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def generate_main(role: str, part: str = "0/1") -> None:
    """One generator process: `streams` (its share `index/count` of the subscribers) or `poll` (the GETs),
    so that parsing a thousand event streams never delays a GET that is due, nor its measurement."""
    raise_open_files_limit()
    request = json.loads(sys.stdin.readline())
    plan = Plan(**request["plan"])
    index, count = (int(x) for x in part.split("/"))
    generator = Generator(
        plan, request["url"], request["keys"], request["admin_key"], request["job_ids"], (index, count)
    )

    async def main() -> Tally:
        if role == "streams":
            return await generator.hold_streams(await _stdin_reader())
        return await generator.poll_for(plan.duration_s)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        tally = asyncio.run(main())
    else:
        tally = uvloop.run(main())
    print(json.dumps(asdict(tally)), flush=True)


# ---------------------------------------------------------------------------------------- orchestration


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class MemorySampler:
    """The server's RSS every `interval_s`, with wall-clock times, in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.time(), rss))
            self._stop.wait(self.interval_s)

    def at(self, when: float) -> int:
        """The sample nearest to the wall-clock time `when`."""
        return min(self.samples, key=lambda s: abs(s[0] - when))[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def _submit_jobs(url: str, key: str, plan: Plan) -> list[str]:
    # Longer than the whole run: the jobs are cancelled at its end, which ends the per-job streams.
    seconds = plan.duration_s + 120
    spec = {"kind": "demo.sleep", "params": {"seconds": seconds, "steps": int(seconds)}}
    ids = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(plan.jobs):
            response = client.post("/api/v1/jobs", json=spec)
            response.raise_for_status()
            ids.append(response.json()["id"])

        def all_running() -> bool:
            return all(client.get(f"/api/v1/jobs/{i}").json()["status"] == "running" for i in ids)

        deadline = time.monotonic() + 30
        while not all_running():
            if time.monotonic() > deadline:
                raise RuntimeError("the load jobs did not all start within 30 s")
            time.sleep(0.1)
    return ids


def _generator(role: str, part: str = "0/1") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chaos.load", "generate", role, part],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _cancel_jobs(url: str, admin_key: str, job_ids: list[str]) -> tuple[int, dict[str, int]]:
    """Cancel the load's jobs, which must end every per-job stream: (jobs cancelled, answers)."""
    answers: dict[str, int] = {}
    cancelled = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30) as client:
        for job_id in job_ids:
            try:
                response = client.post(f"/api/v1/jobs/{job_id}/cancel")
            except httpx.HTTPError as exc:
                bump(answers, type(exc).__name__)
                continue
            bump(answers, response.status_code)
            cancelled += response.status_code in (200, 202)
    return cancelled, answers


def _drive(request: dict[str, Any], plan: Plan) -> dict[str, Any] | str:
    """Run the generator processes (`plan.stream_processes` holding the subscribers, one polling);
    their merged tally, or what went wrong."""
    count = plan.stream_processes
    streams = [_generator("streams", f"{index}/{count}") for index in range(count)]
    try:
        for proc in streams:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        for proc in streams:
            assert proc.stdout is not None
            if not proc.stdout.readline():  # blocks until each of its subscribers has its answer
                return "a stream generator failed: " + proc.communicate(timeout=30)[1][-500:]
        for proc in streams:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        poller = _generator("poll")
        try:
            out, err = poller.communicate(json.dumps(request) + "\n", timeout=plan.duration_s + 300)
        except subprocess.TimeoutExpired:
            poller.kill()
            poller.communicate()
            return "the poll generator did not finish"
        if poller.returncode != 0:
            return "the poll generator failed: " + err[-500:]
        polled = json.loads(out)
        for proc in streams:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        # The end: every per-job stream must now see its job's terminal event and be ended by the server.
        cancelled, cancel_status = _cancel_jobs(request["url"], request["admin_key"], request["job_ids"])
        parts = []
        for proc in streams:
            out, err = proc.communicate(timeout=180)
            if proc.returncode != 0:
                return "a stream generator failed: " + err[-500:]
            parts.append(json.loads(out))
    finally:
        for proc in streams:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    held = merge_tallies(parts)
    held["cancelled_jobs"], held["cancel_status"] = cancelled, cancel_status
    poll_fields = ("poll_status", "poll_errors", "poll_latencies_ms", "polls_sent", "poll_send_s")
    held.update({name: polled[name] for name in (*poll_fields, "steady_started", "steady_ended")})
    held["error_samples"] += polled["error_samples"]
    return dict(held)


def _jwt(secret: str, subject: str, role: str, lifetime_s: float) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": subject, "tenant": TENANT, "role": role, "iat": now, "exp": int(now + lifetime_s)}
    return jwt.encode(claims, secret, algorithm="HS256")


def run(short: bool) -> Section:
    from tests.support.service import ServeProcess, service_env

    plan = SHORT if short else FULL
    section = Section(
        f"Load: {plan.subscribers:,} live subscribers and {plan.poll_rate:.0f} GET/s "
        f"for {plan.duration_s:.0f} s"
    )
    raise_open_files_limit()  # inherited by the server and the generator
    with tempfile.TemporaryDirectory(prefix="jobmill-load-") as tmp:
        folder = Path(tmp)
        env = service_env(
            f"sqlite:///{folder / 'jobs.db'}",
            folder,
            # The load is spread over `plan.keys` principals, each well within its bucket: what is
            # measured is the server, not the rate limiter refusing the generator.
            JOBMILL_RATE_LIMIT_PER_S=str(max(50.0, 4 * (plan.poll_rate + plan.subscribers) / plan.keys)),
            JOBMILL_RATE_LIMIT_BURST=str(max(100, 2 * plan.subscribers)),
            JOBMILL_JWT_HS256_SECRET=secrets.token_hex(32),
        )
        # Principals as JWTs (each its own rate-limit bucket): no `jobmill keys create` per principal.
        lifetime = plan.duration_s + 600
        secret = env["JOBMILL_JWT_HS256_SECRET"]
        keys = [_jwt(secret, f"load-user-{i}", "user", lifetime) for i in range(plan.keys)]
        admin_key = _jwt(secret, "load-admin", "admin", lifetime)
        server = ServeProcess(
            env,
            folder / "serve.log",
            "--app",
            "jobmill.demo.handlers",
            "--concurrency",
            str(plan.jobs + 4),
        )
        try:
            server.wait_ready()
            job_ids = _submit_jobs(server.url, admin_key, plan)
            request = {
                "plan": asdict(plan),
                "url": server.url,
                "keys": keys,
                "admin_key": admin_key,
                "job_ids": job_ids,
            }
            with MemorySampler(server.proc.pid) as memory:
                rss_start = rss_bytes(server.proc.pid) or 0
                tally = _drive(request, plan)
                rss_end = rss_bytes(server.proc.pid) or 0
            alive = server.proc.poll() is None
        finally:
            server.stop()
        log_tail = (folder / "serve.log").read_text(errors="replace")[-3000:]
    if isinstance(tally, str):
        section.check("load generator ran", False, tally)
        return section
    _judge(section, plan, tally, memory, rss_start, rss_end, alive, log_tail)
    return section


def _judge(
    section: Section,
    plan: Plan,
    tally: dict[str, Any],
    memory: MemorySampler,
    rss_start: int,
    rss_end: int,
    alive: bool,
    log_tail: str,
) -> None:
    fig = section.figures
    latencies: list[float] = tally["poll_latencies_ms"]
    poll_status = Counter(tally["poll_status"])
    stream_status = Counter(tally["stream_status"])
    ok_polls = sum(n for status, n in poll_status.items() if status.startswith("2"))
    non_2xx = sum(n for status, n in (poll_status + stream_status).items() if not status.startswith("2"))
    server_errors = sum(n for status, n in (poll_status + stream_status).items() if status.startswith("5"))
    exceptions = sum(Counter(tally["poll_errors"]).values()) + sum(Counter(tally["stream_errors"]).values())
    steady = [s for s in memory.samples if tally["steady_started"] <= s[0] <= tally["steady_ended"]]
    third = tally["steady_started"] + plan.duration_s / 3
    rss_third = memory.at(third)
    rss_steady_end = memory.at(tally["steady_ended"])
    rss_peak = max((rss for _, rss in memory.samples), default=0)
    growth = rss_steady_end - rss_third
    allowed_growth = max(16 * MIB, rss_third // 10)
    held = tally["held_samples"] or [0]

    fig["subscribers (per job / tenant)"] = (
        f"{plan.subscribers:,} ({plan.job_subscribers:,} / {plan.tenant_subscribers:,})"
    )
    fig["subscribers opened"] = tally["streams_opened"]
    fig["subscribers held (min over the run)"] = min(held)
    fig["time to open all subscribers, s"] = round(tally["ramp_s"], 2)
    fig["jobs running (1 progress event/s each)"] = plan.jobs
    fig["GET /jobs/{id} sent"] = tally["polls_sent"]
    fig["GET /jobs/{id} sending rate achieved, req/s"] = (
        round(tally["polls_sent"] / tally["poll_send_s"], 1) if tally["poll_send_s"] else 0.0
    )
    fig["GET p50, ms"] = round(percentile(latencies, 0.5), 2)
    fig["GET p99, ms"] = round(percentile(latencies, 0.99), 2)
    fig["GET max, ms"] = round(max(latencies, default=float("nan")), 2)
    fig["events delivered (per-job streams)"] = tally["events_job"]
    fig["events delivered (tenant streams)"] = tally["events_tenant"]
    fig["resync notices (tenant streams fell behind)"] = tally["resyncs"]
    fig["per-job streams ended by their terminal event"] = tally["job_streams_finished"]
    fig["non-2xx answers"] = non_2xx
    fig["5xx answers"] = server_errors
    fig["transport errors"] = exceptions
    fig["dropped streams"] = tally["streams_dropped"]
    fig["server RSS at start, MiB"] = round(rss_start / MIB, 1)
    fig["server RSS peak, MiB"] = round(rss_peak / MIB, 1)
    fig[f"server RSS at {plan.duration_s / 3:.0f} s / {plan.duration_s:.0f} s of the steady part, MiB"] = (
        f"{rss_third / MIB:.1f} / {rss_steady_end / MIB:.1f}"
    )
    fig["server RSS at the end (streams closed), MiB"] = round(rss_end / MIB, 1)
    fig["machine load average (1 min) at the end"] = round(os.getloadavg()[0], 2)

    refused = {s: n for s, n in (poll_status + stream_status).items() if not s.startswith("2")}
    section.check("server stayed up", alive, "" if alive else log_tail[-300:])
    section.check(
        "every subscriber opened",
        tally["streams_opened"] == plan.subscribers,
        f"{tally['streams_opened']} of {plan.subscribers}; answers {dict(stream_status)}",
    )
    section.check(
        "every subscriber held for the whole run",
        min(held) == plan.subscribers,
        f"min {min(held)}, max {max(held)} open, sampled {len(held)} times",
    )
    section.check("no 5xx", server_errors == 0, f"{server_errors}")
    section.check(
        "no errors (non-2xx, transport errors, dropped streams)",
        non_2xx == 0 and exceptions == 0 and tally["streams_dropped"] == 0,
        f"non-2xx {refused}, GET errors {tally['poll_errors']}, stream errors {tally['stream_errors']}, "
        f"dropped {tally['streams_dropped']}; {'; '.join(tally['error_samples'])}",
    )
    section.check(
        "the polling rate was held",
        tally["polls_sent"] >= 0.98 * plan.poll_rate * plan.duration_s and ok_polls == tally["polls_sent"],
        f"{ok_polls} answered of {tally['polls_sent']} sent, planned {plan.poll_rate * plan.duration_s:.0f}",
    )
    section.check(
        "events delivered to every kind of stream",
        tally["events_job"] > 0 and (plan.tenant_subscribers == 0 or tally["events_tenant"] > 0),
        f"{tally['events_job']} per-job, {tally['events_tenant']} tenant",
    )
    section.check(
        "per-job streams exact (ids 1, 2, 3, ... with no gap)",
        tally["sequence_gaps"] == 0,
        f"{tally['sequence_gaps']} gaps",
    )
    section.check(
        "every per-job stream delivered the terminal event and ended",
        tally["job_streams_finished"] == plan.job_subscribers,
        f"{tally['job_streams_finished']} of {plan.job_subscribers} "
        f"(jobs cancelled: {tally['cancelled_jobs']})",
    )
    section.check(
        "bounded memory: RSS levels off during the steady part",
        growth <= allowed_growth,
        f"{growth / MIB:+.1f} MiB from {plan.duration_s / 3:.0f} s to {plan.duration_s:.0f} s "
        f"(allowed {allowed_growth / MIB:.0f} MiB); {len(steady)} samples",
    )
    section.notes.append(
        "One `jobmill serve` (SQLite, embedded worker running `demo.sleep` jobs) and the load generators "
        f"({plan.stream_processes} processes holding the subscribers, one polling; asyncio with a minimal "
        "HTTP/1.1 client) share the machine's cores; latencies include that contention, and count from "
        "when each GET was due."
    )
    section.notes.append(
        f"Rate limits were set per principal for the run; the load is spread over {plan.keys} user keys."
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["generate"]:
        generate_main(argv[1], *argv[2:3])
        return 0
    section = run(short="--short" in argv)
    from chaos.report import render

    print(render([section], "python -m chaos.load" + (" --short" if "--short" in argv else "")))
    return 0 if section.passed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
