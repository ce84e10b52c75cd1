"""jobmill benchmarks: drain throughput, pickup latency, cancel -> process tree dead (jobmill and its
peers), the HTTP API against a bare FastAPI endpoint, worker memory, and queue position at a deep queue.

    python -m bench.run [--quick] [--rounds N] [--backends sqlite,postgres] [--peers celery,rq,...]
        [--scenarios drain,pickup,cancel,http,memory,deep] [--jobs 20000] [--deep-pending 1000000]

Each scenario runs every system in turn, `--rounds` times; the median and the min-max go to
bench/results/latest.json and latest.md, with the machine and the date, and bench/charts.py draws the
PNG charts beside them.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import redis

import bench.handlers  # registers the bench kinds; REDIS_URL
from bench import charts, http_load, memory
from bench.http_load import PYTHONPATH
from jobmill.domain.job import JobStatus
from jobmill.handlers import default_registry
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store
from jobmill.store.base import JobListParams

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PG_ADMIN = os.environ.get("JOBMILL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh database of `backend` for one round."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    name = f"jobmill_bench_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    open_store(url, migrate=True).close()
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_worker(url: str, workdir: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "JOBMILL_DATABASE_URL": url,
        "JOBMILL_WORKDIR_ROOT": workdir,
        "PYTHONPATH": PYTHONPATH,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobmill.cli.main",
            "worker",
            "--app",
            "bench.handlers",
            "--log-level",
            "warning",
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(interval)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_s(command: str) -> float:
    """CPU time so far of every process whose command name is `command` ("redis-server"): user +
    system, plus what each has reaped. Server-wide: anything else using that server counts too."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if raw[raw.index("(") + 1 : raw.rindex(")")] != command:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


class BackendCpu(threading.Thread):
    """CPU of the PostgreSQL backends that serve databases whose name starts with `prefix`, from /proc.

    A backend's CPU is read every `interval` (so one that exits loses at most that much), and /proc is
    scanned for new backends every `rescan`; backends of other databases (other users of a shared
    server) and the server's own background processes are left out. Use as a context manager; `seconds`
    is the total afterwards."""

    def __init__(self, prefix: str, interval: float = 0.02, rescan: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.prefix = prefix
        self.interval = interval
        self.rescan = rescan
        self.ignored: set[int] = set()
        self.tracked: dict[int, tuple[str, int, int]] = {}  # pid -> (start time, first CPU, last CPU)
        self.stopping = threading.Event()
        self.first_scan = True
        self.seconds = 0.0

    @staticmethod
    def _stat(pid: int) -> tuple[str, int] | None:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rindex(")") + 2 :].split()
        return fields[19], int(fields[11]) + int(fields[12])

    def _scan(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self.ignored or int(entry) in self.tracked:
                continue
            pid = int(entry)
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split()
            except OSError:
                continue
            # A backend's title: "postgres: 15/main: USER DATABASE HOST(PORT) STATE"
            if title[:1] == ["postgres:"] and any(t.startswith(self.prefix) for t in title[1:5]):
                if (stat := self._stat(pid)) is not None:
                    self.tracked[pid] = (stat[0], stat[1] if self.first_scan else 0, stat[1])
            else:
                self.ignored.add(pid)
        self.first_scan = False

    def _sample(self) -> None:
        for pid, (start, first, _) in list(self.tracked.items()):
            stat = self._stat(pid)
            if stat is not None and stat[0] == start:
                self.tracked[pid] = (start, first, stat[1])

    def run(self) -> None:
        next_scan = 0.0
        while True:
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + self.rescan
            self._sample()
            if self.stopping.wait(self.interval):
                break
        self._scan()
        self._sample()

    def __enter__(self) -> BackendCpu:
        self._scan()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()
        ticks = sum(last - first for _, first, last in self.tracked.values())
        self.seconds = ticks / CLOCK_TICKS


def wait_workers(procs: list[subprocess.Popen[bytes]], timeout: float) -> float:
    """Wait for every worker to exit; the CPU seconds of their whole process trees.

    os.wait4 gives one child's rusage: its own and that of every descendant it reaped, which is the
    whole tree (jobmill's workers reap what they start; a no-op job starts nothing anyway)."""
    deadline = time.monotonic() + timeout
    cpu = 0.0
    left = list(procs)
    try:
        while left:
            for proc in list(left):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                left.remove(proc)
                if proc.returncode != 0:
                    raise RuntimeError(f"a benchmark worker failed ({proc.returncode})")
                cpu += usage.ru_utime + usage.ru_stime
            if left and time.monotonic() > deadline:
                raise TimeoutError("the benchmark workers did not finish")
            time.sleep(0.001)
    finally:
        for proc in left:  # on an error: no worker outlives the round
            proc.kill()
            proc.wait()
    return cpu


def drain(backend: str, jobs: int, workers: int, concurrency: int) -> dict[str, float]:
    with (
        BackendCpu("jobmill_bench_") as db_cpu,
        database(backend) as url,
        tempfile.TemporaryDirectory() as workdir,
    ):
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        for start in range(0, jobs, 1000):
            service.submit_many([SubmitRequest(kind="bench.noop") for _ in range(min(1000, jobs - start))])
        started = time.monotonic()
        procs = [
            start_worker(url, workdir, "--burst", "--concurrency", str(concurrency)) for _ in range(workers)
        ]
        cpu = wait_workers(procs, 600)
        elapsed = time.monotonic() - started
        done = len(service.list_jobs(JobListParams(statuses=[JobStatus.COMPLETED], limit=jobs + 1)))
        store.close()
    if done != jobs:
        raise RuntimeError(f"only {done} of {jobs} jobs completed")
    figures = {"jobs_per_s": jobs / elapsed, "seconds": elapsed, "worker_cpu_s_per_1000": 1000 * cpu / jobs}
    if backend == "postgres":
        figures["pg_cpu_s_per_1000"] = 1000 * db_cpu.seconds / jobs
    return figures


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def stamp_latencies(
    service: JobService, submit: Callable[[str], UUID], count: int, prefix: str
) -> list[float]:
    """ms from each submit to its handler's start, one job at a time, for `count` jobs after one that
    warms the worker (and the submit path's connection).

    The harness learns of the start as it does for the peers: the handler pushes its start time to a Redis
    list and the harness waits in BLPOP (polling the database every ms while the worker claims would load
    the very server being measured), then waits until the store shows the job done."""
    redis_client = redis.Redis.from_url(bench.handlers.REDIS_URL)
    latencies = []
    try:
        for index in range(count + 1):
            key = f"{prefix}:{os.getpid()}:{index}"
            submitted = time.time()
            job_id = submit(key)
            popped = redis_client.blpop([key], timeout=30)
            if popped is None:
                raise TimeoutError(f"job {job_id} did not start within 30 s")
            if index:
                latencies.append((float(popped[1]) - submitted) * 1000)
            wait_for(lambda: service.get(job_id).status is JobStatus.COMPLETED, 30)  # noqa: B023
    finally:
        redis_client.close()
    return latencies


def pickup(backend: str, count: int) -> dict[str, float]:
    """Pickup through the Python submit path: JobService.submit, then the worker's claim and start."""
    with database(backend) as url, tempfile.TemporaryDirectory() as workdir:
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        proc = start_worker(url, workdir, "--concurrency", "4")

        def submit(key: str) -> UUID:
            return service.submit(SubmitRequest(kind="bench.stamp", params={"key": key})).job.id

        try:
            latencies = stamp_latencies(service, submit, count, "jobmill:bench:stamp")
        finally:
            proc.terminate()
            proc.wait(30)
            store.close()
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99)}


def pickup_http(backend: str, count: int) -> dict[str, float]:
    """Pickup with the HTTP submit path: POST /api/v1/jobs to `jobmill serve --no-worker` (one keep-alive
    connection), then the same worker, handler stamp and BLPOP as `pickup`."""
    import httpx

    with (
        database(backend) as url,
        tempfile.TemporaryDirectory() as folder,
    ):
        env = http_load.serve_env(url, Path(folder))
        key = http_load.jobmill("keys", env, "create", "--tenant", http_load.TENANT, "--role", "user")
        headers = {"Authorization": f"Bearer {key.strip().splitlines()[-1]}"}
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        proc = start_worker(url, folder, "--concurrency", "4")
        try:
            with (
                http_load.running(http_load.SERVE, env, Path(folder) / "serve.log") as server,
                httpx.Client(
                    base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=30
                ) as client,
            ):

                def submit(key: str) -> UUID:
                    answer = client.post("/api/v1/jobs", json={"kind": "bench.stamp", "params": {"key": key}})
                    answer.raise_for_status()
                    return UUID(answer.json()["id"])

                latencies = stamp_latencies(service, submit, count, "jobmill:bench:stamp-http")
        finally:
            proc.terminate()
            proc.wait(30)
            store.close()
    return {"http_p50_ms": statistics.median(latencies), "http_p99_ms": percentile(latencies, 99)}


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of group `pgid`: one scan of /proc (a few ms)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and process_state(int(entry), pgid) not in (None, "Z"):
            members.append(int(entry))
    return members


def process_state(pid: int, pgid: int | None = None) -> str | None:
    """The state letter of `pid` (None once it is gone, or if it left group `pgid`)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if pgid is not None and int(fields[2]) != pgid:
        return None
    return fields[0]


def cancel_once(service: JobService) -> float:
    """Cancel one running job whose `sh` has a background grandchild; ms until the whole group is gone.

    The group's members are listed before the cancel and then watched one by one, as the peers' harness
    watches its trees (bench/peers/run_peer.py): a whole /proc scan takes a few ms, which would be
    measured as kill latency. A full scan afterwards checks that the group has no member left."""
    job_id = service.submit(SubmitRequest(kind="bench.tree")).job.id
    wait_for(lambda: (service.get(job_id).message or "").startswith("pid="), 30)
    pgid = os.getpgid(int((service.get(job_id).message or "").removeprefix("pid=")))
    wait_for(lambda: len(group_members(pgid)) >= 3, 10)  # sh, `sleep 600 &` and the foreground sleep
    tree = group_members(pgid)
    started = time.monotonic()
    service.cancel(job_id)
    wait_for(lambda: all(process_state(pid, pgid) in (None, "Z") for pid in tree), 10, interval=0.0005)
    elapsed_ms = (time.monotonic() - started) * 1000
    if survivors := group_members(pgid):
        raise RuntimeError(f"cancel left processes {survivors} of group {pgid} alive")
    wait_for(lambda: service.get(job_id).status is JobStatus.CANCELLED, 10)
    return elapsed_ms


def cancel(backend: str, count: int) -> dict[str, float]:
    with database(backend) as url, tempfile.TemporaryDirectory() as workdir:
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        proc = start_worker(url, workdir, "--concurrency", "2")
        try:
            latencies = [cancel_once(service) for _ in range(count)]
        finally:
            proc.terminate()
            proc.wait(30)
            store.close()
    # A try whose tree survived would have raised TimeoutError above: every counted try killed it all.
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99), "tries": count}


PEERS = ("celery", "rq", "procrastinate", "dramatiq", "arq")
PEER_PYTHON = REPO / "bench" / ".peers-venv" / "bin" / "python"


def peer(system: str, scenario: str, *args: str) -> dict[str, Any]:
    """One peer scenario, run by bench/peers/run_peer.py in the peers' own virtualenv."""
    result = subprocess.run(
        [str(PEER_PYTHON), str(REPO / "bench" / "peers" / "run_peer.py"), "--system", system,
         "--scenario", scenario, *args],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        return {"error": (result.stderr or result.stdout).strip().splitlines()[-1:]}
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def peer_drain(system: str, jobs: int, concurrency: int) -> dict[str, Any]:
    """A peer's drain, charged with the CPU of its queue's server as jobmill is with PostgreSQL's:
    procrastinate's database backends; for the Redis-based peers, the whole Redis server (one process,
    shared with whatever else uses it)."""
    if system == "procrastinate":
        with BackendCpu("peers_procrastinate_") as backends:
            figures = peer(system, "drain", "--jobs", str(jobs), "--concurrency", str(concurrency))
        if "error" not in figures:
            figures["pg_cpu_s_per_1000"] = 1000 * backends.seconds / jobs
        return figures
    before = server_cpu_s("redis-server")
    figures = peer(system, "drain", "--jobs", str(jobs), "--concurrency", str(concurrency))
    if "error" not in figures:
        figures["redis_cpu_s_per_1000"] = 1000 * (server_cpu_s("redis-server") - before) / jobs
    return figures


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min-max of each numeric figure; other values (a peer's "cannot", an error) as they are."""
    summary: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r.get(key) for r in rounds]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            summary[key] = {"median": statistics.median(numbers), "min": min(numbers), "max": max(numbers)}
        else:
            summary[key] = values[0]
    return summary


def deep_queue(backend: str, pending: int, samples: int) -> dict[str, Any]:
    """bench/deep_queue.py's figures on a fresh PostgreSQL database (queue position at a deep queue)."""
    from bench import deep_queue as module  # type: ignore[attr-defined,unused-ignore]

    with database(backend) as url:
        figures: dict[str, Any] = module.run(url, pending=pending, samples=samples)
    return figures


def deep_queue_missing() -> str | None:
    """Why the deep-queue scenario cannot run, or None."""
    try:
        from bench import deep_queue as module  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return "deep queue: skipped, bench/deep_queue.py is not there yet"
    if not callable(getattr(module, "run", None)):
        return "deep queue: skipped, bench/deep_queue.py has no run(database_url, pending, samples)"
    return None


def http_round(backends: list[str], load: http_load.Load, ids: int, bulk: int) -> dict[str, dict[str, Any]]:
    """One round of the HTTP scenario: the bare endpoint first, then jobmill on each backend; the ratio
    GET / bare is taken within the round."""
    by_system: dict[str, dict[str, Any]] = {}

    def ours(backend: str) -> dict[str, Any]:
        with database(backend) as url, tempfile.TemporaryDirectory() as folder:
            return http_load.jobmill_api(url, load, Path(folder), ids=ids, bulk_jobs=bulk)

    with tempfile.TemporaryDirectory() as tmp:
        ceiling = attempt(lambda: http_load.bare(load, Path(tmp)))
    by_system["bare FastAPI (ceiling)"] = ceiling
    for backend in backends:
        figures = attempt(lambda b=backend: ours(b))  # type: ignore[misc]
        if "get_rps" in figures and "get_rps" in ceiling:
            figures["get_vs_bare_pct"] = 100 * figures["get_rps"] / ceiling["get_rps"]
        by_system[f"jobmill-{backend}"] = figures
    return by_system


def attempt(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One round of one system; a round that fails is recorded as its error, and the run goes on (on a
    shared machine, someone may restart the database under it)."""
    try:
        return measure()
    except Exception as exc:
        print(f"  round failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {str(exc)[-300:]}"}


def code_version() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it (read-only git; outside a clone, the
    JOBMILL_BENCH_COMMIT environment variable names it)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("JOBMILL_BENCH_COMMIT", "unknown"), "src_modified": None}
    return {"commit": commit, "src_modified": bool(changed)}


SCENARIOS = ("drain", "pickup", "cancel", "http", "memory", "deep")


def compile_sources() -> None:
    """Bytecode for jobmill's and the bench's own modules, as pip wrote it for the peers' installed
    packages: where PYTHONDONTWRITEBYTECODE is set (this machine), each worker start would otherwise
    compile them again (~35 ms of CPU per jobmill worker, counted in its drain)."""
    for folder in ("src", "bench"):
        compileall.compile_dir(REPO / folder, quiet=1, rx=re.compile(r"/\.peers-venv/"), workers=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the scripts work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated; empty for none")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--jobs", type=int, default=20_000, help="drain: no-op jobs (20000)")
    parser.add_argument("--http-duration", type=float, default=20, help="seconds of load per HTTP figure")
    parser.add_argument("--http-clients", type=int, default=64)
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="memory: no-op jobs (100000)")
    parser.add_argument("--deep-pending", type=int, default=1_000_000, help="deep queue: pending jobs")
    parser.add_argument("--deep-samples", type=int, default=500, help="deep queue: positions sampled")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing latest.json: replace only the (scenario, system) figures measured now,"
        " e.g. to redo the ones a round failed on",
    )
    args = parser.parse_args(argv)
    compile_sources()
    backends = [b for b in args.backends.split(",") if b]
    chosen = [s for s in args.scenarios.split(",") if s]
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    peers = [p for p in args.peers.split(",") if p] if PEER_PYTHON.exists() else []
    if args.quick:
        jobs, pickups, cancels, rounds = 300, 10, 3, 1
        load = http_load.Load(clients=4, duration=0.5, warmup=0.1)
        http_ids, bulk_jobs, memory_jobs, deep_pending, deep_samples = 20, 300, 200, 2_000, 20
    else:
        jobs, pickups, cancels, rounds = args.jobs, 500, 30, args.rounds
        load = http_load.Load(clients=args.http_clients, duration=args.http_duration, warmup=2.0)
        http_ids, bulk_jobs, memory_jobs = 1000, 20_000, args.memory_jobs
        deep_pending, deep_samples = args.deep_pending, args.deep_samples
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
        },
        "code": code_version(),
        "rounds": rounds,
        "quick": args.quick,
        "ids": {},
        "scenarios": {},
        "notes": [],
    }

    def record(key: str, name: str, system: str, measured: list[dict[str, Any]]) -> None:
        results["ids"][key] = name
        results["scenarios"].setdefault(name, {})[system] = summarise(measured)
        print(f"{name} [{system}]: {json.dumps(results['scenarios'][name][system])}", flush=True)

    peer_cancels = min(cancels, 5)  # a peer that never kills the tree waits 10 s per try
    Run = Callable[[str], dict[str, Any]]
    scenarios: dict[str, tuple[str, Run, Run]] = {
        "drain": (
            f"drain {jobs} no-op jobs, total concurrency 4",
            lambda b: drain(b, jobs, 2, 2),
            lambda p: peer_drain(p, jobs, 4),
        ),
        "pickup": (
            f"pickup latency ({pickups} jobs, one at a time)",
            lambda b: pickup(b, pickups) | pickup_http(b, pickups),
            lambda p: peer(p, "pickup", "--count", str(pickups), "--concurrency", "4"),
        ),
        "cancel": (
            "cancel -> process tree dead (child with a grandchild)",
            lambda b: cancel(b, cancels),
            lambda p: peer(p, "cancel", "--count", str(peer_cancels)),
        ),
    }
    for key, (name, ours, theirs) in scenarios.items():
        if key not in chosen:
            continue
        systems: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (f"jobmill-{b}", partial(ours, b)) for b in backends
        ]
        systems += [(p, partial(theirs, p)) for p in peers]
        for system, run in systems:
            record(key, name, system, [attempt(run) for _ in range(rounds)])
    if "drain" in chosen:
        results["notes"].append(
            "drain: worker_cpu_s_per_1000 is the CPU of the worker processes and everything below them"
            " (jobmill: os.wait4 of each burst worker; peers: their process trees). pg_cpu_s_per_1000 is"
            " the CPU of the PostgreSQL backends serving the round's own database, redis_cpu_s_per_1000"
            " that of the whole Redis server (shared with anything else using it), both over the whole"
            " round (make the store, enqueue, drain, drop), per 1,000 jobs."
        )
        name = f"drain {jobs} no-op jobs, jobmill 2 workers x 50 (its own setting)"
        for backend in backends:
            record(
                "drain_own",
                name,
                f"jobmill-{backend}",
                [attempt(partial(drain, backend, jobs, 2, 50)) for _ in range(rounds)],
            )
    if "http" in chosen and backends:
        name = (
            f"HTTP API, {load.clients} clients x {load.duration:g} s: GET /jobs/{{id}} (completed; pending),"
            " POST /jobs, bulk submit"
        )
        measured_rounds = [http_round(backends, load, http_ids, bulk_jobs) for _ in range(rounds)]
        for system in measured_rounds[0]:
            record("http", name, system, [r[system] for r in measured_rounds])
        results["notes"].append(
            "HTTP: `jobmill serve --no-worker` with the rate limit raised out of the way; the bare"
            " endpoint is FastAPI returning a constant job-sized JSON under the same uvicorn settings."
            " The load generator is bench/http_load.py in its own process (one keep-alive connection per"
            " client) and shares the cores with the server. The API has no bulk endpoint (DESIGN §4):"
            f" bulk_jobs_per_s is JobService.submit_many, 1000 jobs a call, {bulk_jobs} jobs, in-process."
        )
    if "memory" in chosen:
        name = (
            f"worker RSS (MB), idle and after {memory_jobs // 2} / {memory_jobs} no-op jobs, concurrency 50"
        )
        for backend in backends:
            measured = []
            for _ in range(rounds):

                def one(backend: str = backend) -> dict[str, Any]:
                    with database(backend) as url:
                        return memory.run(url, memory_jobs, 50)

                measured.append(attempt(one))
            record("memory", name, f"jobmill-{backend}", measured)
    if "deep" in chosen:
        name = f"deep queue: {deep_pending} pending jobs, {deep_samples} samples"
        if "postgres" not in backends:
            results["notes"].append("deep queue: skipped, it runs on PostgreSQL (not in --backends)")
        elif why := deep_queue_missing():
            results["notes"].append(why)
        else:
            measured = [
                attempt(lambda: deep_queue("postgres", deep_pending, deep_samples)) for _ in range(rounds)
            ]
            record("deep", name, "jobmill-postgres", measured)
    for note in results["notes"]:
        print(note, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update and (out / "latest.json").exists():
        results = merged(json.loads((out / "latest.json").read_text()), results)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    print(f"wrote {out / 'latest.md'}")
    if not args.no_charts:
        for path in charts.draw(results, out):
            print(f"wrote {path}")


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with the figures of `new` put over it, system by system. The date and commit stay those of
    the run that measured the rest; `updated` says which scenarios were measured again, when and at
    which commit."""
    result = dict(old)
    result["ids"] = {**old.get("ids", {}), **new["ids"]}
    scenarios = {name: dict(systems) for name, systems in old.get("scenarios", {}).items()}
    for name, systems in new["scenarios"].items():
        scenarios.setdefault(name, {}).update(systems)
    result["scenarios"] = scenarios
    result["notes"] = list(dict.fromkeys([*old.get("notes", []), *new["notes"]]))
    update = {"date": new["date"], "code": new["code"], "scenarios": list(new["scenarios"])}
    result["updated"] = [*old.get("updated", []), update]
    return result


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"# jobmill benchmarks ({results['date']})",
        "",
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, Python {machine['python']}; "
        f"jobmill {results['code']['commit']}"
        + (" with uncommitted changes in src/" if results["code"]["src_modified"] else "")
        + f"; median of {results['rounds']} rounds (min-max)"
        + (", quick mode (tiny sizes)." if results.get("quick") else "."),
        "",
        "| scenario | system | figure | median | min-max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, by_backend in results["scenarios"].items():
        for backend, figures in by_backend.items():
            for figure, stats in figures.items():
                if isinstance(stats, dict) and "median" in stats:
                    spread = f"{stats['min']:.2f}-{stats['max']:.2f}"
                    lines.append(f"| {name} | {backend} | {figure} | {stats['median']:.2f} | {spread} |")
                else:
                    lines.append(f"| {name} | {backend} | {figure} | {stats} | |")
    if results.get("updated"):
        lines += ["", "Measured again and merged in (--update):"]
        for update in results["updated"]:
            if isinstance(update, str):  # results written before updates named their scenarios
                lines.append(f"- {update}")
                continue
            modified = " with uncommitted changes in src/" if update["code"]["src_modified"] else ""
            names = "; ".join(update["scenarios"])
            lines.append(f"- {update['date']}, jobmill {update['code']['commit']}{modified}: {names}")
    if results.get("notes"):
        lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
