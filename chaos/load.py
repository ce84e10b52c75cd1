"""Load: one real `jobmill serve` holding many live event streams while it is polled hard.

The server is `jobmill serve` on SQLite with its embedded worker running slow `demo.sleep` jobs that
report progress every second. A load generator in its own process (asyncio + httpx) then:

1. opens the subscribers: most follow one job (`GET /api/v1/jobs/{id}/events`), the rest the tenant
   (`GET /api/v1/events`), and waits until every one has its 200;
2. holds them for the run while polling `GET /api/v1/jobs/{id}` at a fixed rate (open loop: a request
   is sent on schedule whether or not the previous ones have answered, so a slow server shows up as
   latency, not as a quietly lower rate);
3. cancels the jobs: every per-job stream must then deliver the terminal event and end by itself.

Meanwhile this process samples the server's resident memory. Figures: errors by kind, 5xx, GET
latency, events delivered, subscribers held, RSS at start, peak and end, and its growth over the
steady part (it must level off, not keep growing with time).

`python -m chaos.load [--short]` runs it alone and prints the section; `python -m chaos.load generate`
is the generator (a plan as JSON on stdin, its result as JSON on stdout).
"""

from __future__ import annotations

import asyncio
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class Tally:
    """What the generator saw; JSON-able, sent back to the orchestrating process."""

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


class Generator:
    def __init__(self, plan: Plan, url: str, keys: list[str], admin_key: str, job_ids: list[str]) -> None:
        self.plan = plan
        self.url = url
        self.keys = keys
        self.admin_key = admin_key
        self.job_ids = job_ids
        self.tally = Tally()
        self.stopping = False  # set before the generator closes the tenant streams itself
        self._opened = asyncio.Event()
        self._answered = 0  # stream requests answered (200 or not, or failed)

    def _headers(self, i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[i % len(self.keys)]}"}

    def _answer(self) -> None:
        self._answered += 1
        if self._answered >= self.plan.subscribers:
            self._opened.set()

    async def subscriber(self, client: httpx.AsyncClient, i: int) -> None:
        tally = self.tally
        per_job = i >= self.plan.tenant_subscribers
        path = f"/api/v1/jobs/{self.job_ids[i % len(self.job_ids)]}/events" if per_job else "/api/v1/events"
        answered = opened = terminal = False
        expected_seq = 1
        event_type = ""
        try:
            async with client.stream("GET", path, headers=self._headers(i)) as response:
                bump(tally.stream_status, str(response.status_code))
                answered = True
                self._answer()
                if response.status_code != 200:
                    return
                opened = True
                tally.streams_opened += 1
                tally.stream_open += 1
                tally.stream_open_max = max(tally.stream_open_max, tally.stream_open)
                async for line in response.aiter_lines():
                    if line.startswith("id: ") and per_job:
                        if int(line[4:]) != expected_seq:
                            tally.sequence_gaps += 1
                        expected_seq = int(line[4:]) + 1
                    elif line.startswith("event: "):
                        event_type = line[7:]
                    elif line.startswith("data: "):
                        if event_type == "resync":
                            tally.resyncs += 1
                            continue
                        if per_job:
                            tally.events_job += 1
                            data = json.loads(line[6:])
                            if data["type"] == "status" and data["status"] in TERMINAL:
                                terminal = True
                        else:
                            tally.events_tenant += 1
            # The server ended the stream: right for a per-job stream after its terminal event only.
            if per_job and terminal:
                tally.job_streams_finished += 1
            else:
                tally.streams_dropped += 1
        except asyncio.CancelledError:
            if not self.stopping:
                tally.streams_dropped += 1
            raise
        except (httpx.HTTPError, OSError, ValueError) as exc:
            bump(tally.stream_errors, type(exc).__name__)
            tally.sample(f"stream {i} ({'opened' if opened else 'opening'})", exc)
            if opened:
                tally.streams_dropped += 1
            if not answered:
                self._answer()
        finally:
            if opened:
                tally.stream_open -= 1

    async def poll_once(self, client: httpx.AsyncClient, n: int, slots: asyncio.Semaphore) -> None:
        job_id = self.job_ids[n % len(self.job_ids)]
        # Latency counts from when the request was due, so time spent waiting for a free connection
        # (because earlier requests are slow) is part of it: a slow server cannot hide behind a queue.
        due = time.perf_counter()
        async with slots:
            try:
                response = await client.get(f"/api/v1/jobs/{job_id}", headers=self._headers(n))
            except httpx.HTTPError as exc:
                bump(self.tally.poll_errors, type(exc).__name__)
                self.tally.sample(f"GET {n}", exc)
                return
        self.tally.poll_latencies_ms.append((time.perf_counter() - due) * 1000)
        bump(self.tally.poll_status, str(response.status_code))

    async def poll(self, client: httpx.AsyncClient, until: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.plan.poll_rate
        # Requests wait here, not in httpx's pool, whose queue costs O(waiting requests) per request.
        slots = asyncio.Semaphore(self.plan.poll_connections)
        due = loop.time()
        requests: set[asyncio.Task[None]] = set()
        n = 0
        while due < until:
            task = asyncio.create_task(self.poll_once(client, n, slots))
            requests.add(task)
            task.add_done_callback(requests.discard)
            n += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
        self.tally.polls_sent = n
        self.tally.poll_send_s = loop.time() - (until - self.plan.duration_s)
        if requests:
            # A server that fell far behind is not waited for without end: what is still unanswered
            # 30 s after the last request was due counts as an error.
            _, late = await asyncio.wait(requests, timeout=30)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                self.tally.poll_errors["unanswered 30 s after the run"] = len(late)

    async def watch_held(self) -> None:
        while True:
            self.tally.held_samples.append(self.tally.stream_open)
            await asyncio.sleep(1.0)

    async def cancel_jobs(self, client: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {self.admin_key}"}

        async def cancel(job_id: str) -> None:
            try:
                response = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers)
            except httpx.HTTPError as exc:
                bump(self.tally.cancel_status, type(exc).__name__)
                return
            bump(self.tally.cancel_status, str(response.status_code))
            if response.status_code in (200, 202):
                self.tally.cancelled_jobs += 1

        await asyncio.gather(*(cancel(job_id) for job_id in self.job_ids))

    async def hold_streams(self, commands: asyncio.StreamReader) -> Tally:
        """Open every subscriber, say "ready" on stdout, hold them until "stop" arrives on stdin, then
        cancel the jobs and wait for the per-job streams to end by themselves."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        streams = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(connect=30, read=None, write=30, pool=None),
            limits=httpx.Limits(max_connections=plan.subscribers + 10, max_keepalive_connections=0),
        )
        control = httpx.AsyncClient(base_url=self.url, timeout=30)
        async with streams, control:
            ramp_started = loop.time()
            subscribers: list[asyncio.Task[None]] = []
            for i in range(plan.subscribers):
                subscribers.append(asyncio.create_task(self.subscriber(streams, i)))
                if i % 50 == 49:
                    await asyncio.sleep(0)  # let the batch connect before creating more
            await asyncio.wait_for(self._opened.wait(), 120)
            self.tally.ramp_s = loop.time() - ramp_started
            print(json.dumps({"ready": True}), flush=True)
            watcher = asyncio.create_task(self.watch_held())
            await commands.readline()  # "stop", or the end of stdin
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            # The end: every per-job stream must see its job's terminal event and be ended by the server.
            await self.cancel_jobs(control)
            job_streams = subscribers[plan.tenant_subscribers :]
            if job_streams:
                await asyncio.wait(job_streams, timeout=60)
            self.stopping = True
            for task in subscribers:
                task.cancel()
            await asyncio.gather(*subscribers, return_exceptions=True)
        return self.tally

    async def poll_for(self, duration_s: float) -> Tally:
        plan = self.plan
        # Pooled connections expire before the server's keep-alive timeout (uvicorn: 5 s), so a request is
        # never sent on a connection the server is closing at that moment.
        polls = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(10, pool=30),
            limits=httpx.Limits(
                max_connections=plan.poll_connections,
                max_keepalive_connections=plan.poll_connections,
                keepalive_expiry=2.0,
            ),
        )
        async with polls:
            loop = asyncio.get_running_loop()
            self.tally.steady_started = time.time()
            await self.poll(polls, loop.time() + duration_s)
            self.tally.steady_ended = time.time()
        return self.tally


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def generate_main(role: str) -> None:
    """One generator process: `streams` (the subscribers) or `poll` (the GETs), so that parsing a
    thousand event streams never delays a GET that is due, nor its latency measurement."""
    raise_open_files_limit()
    request = json.loads(sys.stdin.readline())
    plan = Plan(**request["plan"])
    generator = Generator(plan, request["url"], request["keys"], request["admin_key"], request["job_ids"])

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


def _generator(role: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chaos.load", "generate", role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _drive(request: dict[str, Any], plan: Plan) -> dict[str, Any] | str:
    """Run the two generator processes; their merged tally, or what went wrong."""
    streams = _generator("streams")
    assert streams.stdin is not None and streams.stdout is not None
    try:
        streams.stdin.write(json.dumps(request) + "\n")
        streams.stdin.flush()
        ready = streams.stdout.readline()  # blocks until every subscriber has its answer
        if not ready:
            return "the stream generator failed: " + streams.communicate(timeout=30)[1][-500:]
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
        out, err = streams.communicate("stop\n", timeout=180)
        if streams.returncode != 0:
            return "the stream generator failed: " + err[-500:]
    finally:
        if streams.poll() is None:
            streams.kill()
            streams.wait()
    held = json.loads(out)
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
        "One `jobmill serve` (SQLite, embedded worker running `demo.sleep` jobs) and the load generator "
        "(asyncio + httpx, its own process) share the machine's cores; latencies include that contention."
    )
    section.notes.append(
        f"Rate limits were set per principal for the run; the load is spread over {plan.keys} user keys."
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["generate"]:
        generate_main(argv[1])
        return 0
    section = run(short="--short" in argv)
    from chaos.report import render

    print(render([section], "python -m chaos.load" + (" --short" if "--short" in argv else "")))
    return 0 if section.passed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
