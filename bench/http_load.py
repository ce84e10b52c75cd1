"""HTTP API benchmark: a real `jobmill serve` under load, next to a bare FastAPI endpoint (the ceiling).

    python -m bench.http_load bare --port P          # the ceiling: FastAPI + uvicorn, one constant JSON
    python -m bench.http_load load --port P --path /api/v1/jobs/ID [--path ...] [--method POST --body JSON]
        [--header 'Authorization: Bearer ...'] [--clients 64] [--duration 20] [--warmup 2]
    python -m bench.http_load profile [--backend sqlite|postgres] [--method GET|POST] [--duration 20]
        [--out FILE]

`load` is the load generator: its own process, asyncio (uvloop when installed) with one keep-alive
HTTP/1.1 connection per client, written against the socket so that the generator costs as little CPU as
it can (on two cores it shares the machine with the server). It prints ONE JSON line: requests per second
and latency percentiles over the `--duration` that follows a `--warmup`. Every figure is taken the same
way for the bare endpoint and for jobmill, whose server runs exactly as `jobmill serve` runs it (the bare
server copies its uvicorn settings: `asyncio.run(uvicorn.Server(Config(..., log_config=None,
access_log=False, lifespan="on")).serve())`).

`profile` runs the GET load (or `--method POST`, submissions) against a jobmill server under py-spy (a
dev dependency) and prints where the server's time goes (own and total samples per function).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

REPO = Path(__file__).resolve().parents[1]
# The processes the bench starts run the jobmill of this tree (src/), whatever the venv has installed.
PYTHONPATH = os.pathsep.join([str(REPO / "src"), str(REPO)])
TENANT = "bench"
SUBMIT_BODY = json.dumps({"kind": "bench.noop"})
UNLIMITED = str(10**9)  # the bench measures the API, not its rate limiter's refusals

# The ceiling's answer: a constant of the size and shape of a job view.
BARE_BODY: dict[str, Any] = {
    "id": "0b7e6c2e-4f0a-4a43-9d55-8a1f2f6f3c11",
    "kind": "bench.noop",
    "queue": "bench",
    "priority": 0,
    "status": "completed",
    "stage": None,
    "progress": None,
    "message": None,
    "queue_position": None,
    "attempts": 1,
    "max_attempts": 3,
    "timeout_s": None,
    "run_after": None,
    "params": {},
    "inputs": [],
    "result": None,
    "outputs": [],
    "error": None,
    "idempotency_key": None,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:00.010000Z",
    "finished_at": "2026-01-01T00:00:00.020000Z",
    "updated_at": "2026-01-01T00:00:00.020000Z",
}


# --- the bare endpoint --------------------------------------------------------------------------------


def serve_bare(host: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    async def get_job(job_id: UUID) -> dict[str, Any]:
        return BARE_BODY

    @app.get("/api/v1/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    )
    asyncio.run(server.serve())


# --- the load generator -------------------------------------------------------------------------------


@dataclass
class Tally:
    measure_from: float
    stop_at: float
    latencies: list[float]
    errors: Counter[int]


async def _one_client(
    host: str, port: int, requests: list[bytes], offset: int, tally: Tally, stall_s: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while (started := time.perf_counter()) < tally.stop_at:
            writer.write(requests[index % len(requests)])
            index += 1
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), stall_s)
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not supported by this generator")
            if length:
                await reader.readexactly(length)
            if started >= tally.measure_from:
                if 200 <= status < 300:
                    tally.latencies.append(time.perf_counter() - started)
                else:
                    tally.errors[status] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def build_requests(
    host: str, port: int, method: str, paths: list[str], headers: list[str], body: str | None
) -> list[bytes]:
    lines = [f"Host: {host}:{port}", "Connection: keep-alive", *headers]
    payload = (body or "").encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    head = "\r\n".join(lines)
    return [f"{method} {path} HTTP/1.1\r\n{head}\r\n\r\n".encode() + payload for path in paths]


async def generate(
    host: str, port: int, requests: list[bytes], clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    now = time.perf_counter()
    tally = Tally(now + warmup, now + warmup + duration, [], Counter())
    step = max(1, len(requests) // clients)
    await asyncio.gather(
        *(_one_client(host, port, requests, i * step, tally, stall_s=30) for i in range(clients))
    )
    latencies = sorted(tally.latencies)
    if not latencies:
        raise RuntimeError(f"no successful request; statuses: {dict(tally.errors)}")
    return {
        "rps": len(latencies) / duration,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "requests": len(latencies),
        "errors": sum(tally.errors.values()),
        "error_statuses": {str(k): v for k, v in tally.errors.items()},
    }


def run_generator(args: argparse.Namespace) -> None:
    paths: list[str] = list(args.path or [])
    if args.path_file:
        paths += Path(args.path_file).read_text().split()
    requests = build_requests(args.host, args.port, args.method, paths, args.header or [], args.body)
    coro = generate(args.host, args.port, requests, args.clients, args.duration, args.warmup)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


# --- servers and measurements, as run.py drives them ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process on a free port of 127.0.0.1, ready once GET /api/v1/readyz answers 200."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{self.port}/api/v1/readyz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not get ready: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    server = Server(command, env, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Load:
    clients: int = 64
    duration: float = 20.0
    warmup: float = 2.0


def measure(port: int, load: Load, paths: list[str], headers: list[str], method: str = "GET",
            body: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One load run by the generator in its own process; its figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".paths") as path_file:
        path_file.write("\n".join(paths))
        path_file.flush()
        command = [
            sys.executable, "-m", "bench.http_load", "load", "--port", str(port), "--method", method,
            "--path-file", path_file.name, "--clients", str(load.clients), "--duration", str(load.duration),
            "--warmup", str(load.warmup),
        ]  # fmt: skip
        for header in headers:
            command += ["--header", header]
        if body is not None:
            command += ["--body", body]
        result = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=load.warmup + load.duration + 120,
            env={**os.environ, "PYTHONPATH": PYTHONPATH},
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the load generator failed: {result.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def bare(load: Load, logdir: Path) -> dict[str, float]:
    """GET of the bare endpoint: the ceiling of FastAPI + uvicorn on this machine."""
    command = [sys.executable, "-m", "bench.http_load", "bare"]
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    with running(command, env, logdir / "bare.log") as server:
        paths = [f"/api/v1/jobs/{BARE_BODY['id']}"]
        got = measure(server.port, load, paths, [])
    return {"get_rps": got["rps"], "get_p99_ms": got["p99_ms"]}


def serve_env(database_url: str, folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "JOBMILL_DATABASE_URL": database_url,
        "JOBMILL_STORAGE_URL": f"file://{folder / 'blobs'}",
        "JOBMILL_WORKDIR_ROOT": str(folder / "work"),
        "JOBMILL_SECRET_KEY": "bench-secret-key-for-signing-urls-0123456789",
        "JOBMILL_RATE_LIMIT_PER_S": UNLIMITED,
        "JOBMILL_RATE_LIMIT_BURST": UNLIMITED,
    }


def jobmill(command: str, env: dict[str, str], *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "jobmill.cli.main", command, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"jobmill {command} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def prepare_jobs(database_url: str, env: dict[str, str], count: int) -> tuple[list[str], list[str]]:
    """`count` completed jobs (run by a burst worker) and `count` pending ones, of the bench tenant."""
    import bench.handlers  # noqa: F401  (registers the bench kinds)
    from jobmill.handlers import default_registry
    from jobmill.service import JobService, SubmitRequest
    from jobmill.store import open_store

    store = open_store(database_url)
    try:
        service = JobService(store, registry=default_registry)

        def submit() -> list[str]:
            results = service.submit_many(
                [SubmitRequest(kind="bench.noop", tenant=TENANT, principal="bench") for _ in range(count)]
            )
            return [str(r.job.id) for r in results]

        completed = submit()
        jobmill("worker", env, "--app", "bench.handlers", "--burst", "--log-level", "warning")
        pending = submit()
    finally:
        store.close()
    return completed, pending


def bulk_submit(database_url: str, jobs: int, batch: int = 1000) -> float:
    """Jobs per second through JobService.submit_many, `batch` jobs a call (the HTTP API has no bulk
    endpoint: this is the in-process bulk path, the one `jobmill`'s own drain set-up uses)."""
    import bench.handlers  # noqa: F401
    from jobmill.handlers import default_registry
    from jobmill.service import JobService, SubmitRequest
    from jobmill.store import open_store

    store = open_store(database_url)
    try:
        service = JobService(store, registry=default_registry)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            service.submit_many(
                [
                    SubmitRequest(kind="bench.noop", tenant=TENANT, principal="bench")
                    for _ in range(min(batch, jobs - first))
                ]
            )
        return jobs / (time.perf_counter() - started)
    finally:
        store.close()


SERVE = [sys.executable, "-m", "jobmill.cli.main", "serve", "--no-worker", "--app", "bench.handlers",
         "--log-level", "warning"]  # fmt: skip


def jobmill_api(database_url: str, load: Load, logdir: Path, ids: int = 1000, bulk_jobs: int = 20_000,
                post: bool = True) -> dict[str, float]:  # fmt: skip
    """GET of completed and of pending jobs, POST (64 clients), and the bulk path, against a fresh
    database (migrated) of the caller's."""
    env = serve_env(database_url, logdir)
    completed, pending = prepare_jobs(database_url, env, ids)
    key = jobmill("keys", env, "create", "--tenant", TENANT, "--role", "user").strip().splitlines()[-1]
    auth = [f"Authorization: Bearer {key}"]
    figures: dict[str, float] = {}
    with running(SERVE, env, logdir / "serve.log") as server:
        got = measure(server.port, load, [f"/api/v1/jobs/{i}" for i in completed], auth)
        figures |= {"get_rps": got["rps"], "get_p99_ms": got["p99_ms"], "get_errors": got["errors"]}
        got = measure(server.port, load, [f"/api/v1/jobs/{i}" for i in pending], auth)
        figures |= {"get_pending_rps": got["rps"], "get_pending_p99_ms": got["p99_ms"]}
        if post:
            got = measure(server.port, load, ["/api/v1/jobs"], auth, method="POST", body=SUBMIT_BODY)
            figures |= {"post_rps": got["rps"], "post_p99_ms": got["p99_ms"], "post_errors": got["errors"]}
    figures["bulk_jobs_per_s"] = bulk_submit(database_url, bulk_jobs)
    return figures


# --- profile ------------------------------------------------------------------------------------------


def profile(backend: str, load: Load, out: Path, top: int, method: str = "GET") -> None:
    """GET of completed jobs (or, with method POST, submissions) under py-spy: where the server's time
    goes. Only the samples of the thread that holds the GIL are taken (`--gil`): the server's Python
    work, wherever it runs (event loop or thread pool), without the threads that merely wait."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    from bench.run import database  # the same fresh databases as the benchmarks

    with database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = serve_env(url, folder)
        completed, _ = prepare_jobs(url, env, 1000)
        key = jobmill("keys", env, "create", "--tenant", TENANT, "--role", "user").strip().splitlines()[-1]
        with running(SERVE, env, folder / "serve.log") as server:
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(server.proc.pid), "--format", "raw", "--output", str(out),
                 "--rate", "200", "--gil", "--nonblocking", "--duration", str(int(load.duration))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1)
            got = measure(
                server.port,
                Load(load.clients, load.duration - 2, 0.5),
                [f"/api/v1/jobs/{i}" for i in completed] if method == "GET" else ["/api/v1/jobs"],
                [f"Authorization: Bearer {key}"],
                method=method,
                body=SUBMIT_BODY if method == "POST" else None,
            )
            spy.wait(60)
    print(
        f"{method} under py-spy: {got['rps']:.0f} req/s, p99 {got['p99_ms']:.1f} ms (slowed by the sampling)"
    )
    print(summarise_profile(out, top))


def _package(frame: str) -> str:
    """The top package of a py-spy frame "function (path/to/file.py:line)"."""
    location = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    if location.startswith("<frozen"):
        return location
    first = location.split("/")[0]
    return first.removesuffix(".py") or location


def summarise_profile(collapsed: Path, top: int) -> str:
    """Own and total share of the samples, per function and per package, from collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        samples += count
        if frames:
            own[frames[-1]] += count
            by_package[_package(frames[-1])] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples of the thread holding the GIL", "", "own time by package:"]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in by_package.most_common(15)]
    lines += ["", "own time by function:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total time (the function and what it calls):"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bare_cmd = sub.add_parser("bare", help="serve the bare endpoint")
    bare_cmd.add_argument("--host", default="127.0.0.1")
    bare_cmd.add_argument("--port", type=int, required=True)
    load_cmd = sub.add_parser("load", help="generate load, print figures as one JSON line")
    load_cmd.add_argument("--host", default="127.0.0.1")
    load_cmd.add_argument("--port", type=int, required=True)
    load_cmd.add_argument("--method", default="GET")
    load_cmd.add_argument("--path", action="append", help="a path to request; several are cycled")
    load_cmd.add_argument("--path-file", help="a file of paths, whitespace-separated")
    load_cmd.add_argument("--header", action="append", help="'Name: value'")
    load_cmd.add_argument("--body", help="a JSON body")
    load_cmd.add_argument("--clients", type=int, default=64)
    load_cmd.add_argument("--duration", type=float, default=20)
    load_cmd.add_argument("--warmup", type=float, default=2)
    profile_cmd = sub.add_parser(
        "profile", help="GET (or POST) load on jobmill under py-spy; where the time goes"
    )
    profile_cmd.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    profile_cmd.add_argument(
        "--method", default="GET", choices=["GET", "POST"], help="GET a job, or POST /jobs"
    )
    profile_cmd.add_argument("--clients", type=int, default=64)
    profile_cmd.add_argument("--duration", type=float, default=20)
    profile_cmd.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "jobmill-get.collapsed"))
    profile_cmd.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.command == "bare":
        serve_bare(args.host, args.port)
    elif args.command == "load":
        if not (args.path or args.path_file):
            parser.error("give --path or --path-file")
        run_generator(args)
    else:
        load = Load(args.clients, args.duration, 0)
        profile(args.backend, load, Path(args.out), args.top, args.method)


if __name__ == "__main__":
    main()
