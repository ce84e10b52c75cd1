"""jobmill engine benchmarks: drain throughput, pickup latency, cancel -> process tree dead.

    python -m bench.run [--quick] [--rounds N] [--backends sqlite,postgres]

Each scenario runs every backend in turn, `--rounds` times; the median and the min-max go to
bench/results/latest.json and latest.md, with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import bench.handlers  # noqa: F401  (registers the bench kinds)
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
        "PYTHONPATH": str(REPO),
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


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain(backend: str, jobs: int, workers: int, concurrency: int) -> dict[str, float]:
    with database(backend) as url, tempfile.TemporaryDirectory() as workdir:
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        for start in range(0, jobs, 1000):
            service.submit_many([SubmitRequest(kind="bench.noop") for _ in range(min(1000, jobs - start))])
        cpu_before = children_cpu_s()
        started = time.monotonic()
        procs = [
            start_worker(url, workdir, "--burst", "--concurrency", str(concurrency)) for _ in range(workers)
        ]
        for proc in procs:
            if proc.wait(600) != 0:
                raise RuntimeError("a benchmark worker failed")
        elapsed = time.monotonic() - started
        cpu = children_cpu_s() - cpu_before
        done = len(service.list_jobs(JobListParams(statuses=[JobStatus.COMPLETED], limit=jobs + 1)))
        store.close()
    if done != jobs:
        raise RuntimeError(f"only {done} of {jobs} jobs completed")
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed, "worker_cpu_s_per_1000": 1000 * cpu / jobs}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def pickup(backend: str, count: int) -> dict[str, float]:
    with database(backend) as url, tempfile.TemporaryDirectory() as workdir:
        store = open_store(url)
        service = JobService(store, registry=default_registry)
        proc = start_worker(url, workdir, "--concurrency", "4")
        try:
            warm = service.submit(SubmitRequest(kind="bench.stamp")).job
            wait_for(lambda: service.get(warm.id).status is JobStatus.COMPLETED, 60)
            latencies = []
            for _ in range(count):
                submitted = time.time()
                job = service.submit(SubmitRequest(kind="bench.stamp")).job
                wait_for(lambda j=job.id: service.get(j).status is JobStatus.COMPLETED, 30)  # type: ignore[misc]
                latencies.append((service.get(job.id).result["started"] - submitted) * 1000)
        finally:
            proc.terminate()
            proc.wait(30)
            store.close()
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99)}


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def cancel_once(service: JobService) -> float:
    """Cancel one running job whose `sh` has a background grandchild; ms until the whole group is gone."""
    job_id = service.submit(SubmitRequest(kind="bench.tree")).job.id
    wait_for(lambda: (service.get(job_id).message or "").startswith("pid="), 30)
    pgid = os.getpgid(int((service.get(job_id).message or "").removeprefix("pid=")))
    time.sleep(0.05)  # let `sleep 600 &` start too
    started = time.monotonic()
    service.cancel(job_id)
    wait_for(lambda: not group_alive(pgid), 10, interval=0.0005)
    elapsed_ms = (time.monotonic() - started) * 1000
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the scripts work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated; empty for none")
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    backends = args.backends.split(",")
    peers = [p for p in args.peers.split(",") if p] if PEER_PYTHON.exists() else []
    jobs, pickups, cancels, rounds = (300, 10, 3, 1) if args.quick else (args.jobs, 200, 30, args.rounds)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
        },
        "rounds": rounds,
        "scenarios": {},
    }
    peer_cancels = min(cancels, 5)  # a peer that never kills the tree waits 10 s per try
    scenarios: dict[str, tuple[Callable[[str], dict[str, Any]], Callable[[str], dict[str, Any]]]] = {
        f"drain {jobs} no-op jobs, total concurrency 4": (
            lambda b: drain(b, jobs, 2, 2),
            lambda p: peer(p, "drain", "--jobs", str(jobs), "--concurrency", "4"),
        ),
        f"pickup latency ({pickups} jobs, one at a time)": (
            lambda b: pickup(b, pickups),
            lambda p: peer(p, "pickup", "--count", str(pickups), "--concurrency", "4"),
        ),
        "cancel -> process tree dead (child with a grandchild)": (
            lambda b: cancel(b, cancels),
            lambda p: peer(p, "cancel", "--count", str(peer_cancels)),
        ),
    }
    for name, (ours, theirs) in scenarios.items():
        systems = [(f"jobmill-{b}", lambda b=b, ours=ours: ours(b)) for b in backends]  # type: ignore[misc]
        systems += [(p, lambda p=p, theirs=theirs: theirs(p)) for p in peers]  # type: ignore[misc]
        for system, run in systems:
            measured = [run() for _ in range(rounds)]
            results["scenarios"].setdefault(name, {})[system] = summarise(measured)
            print(f"{name} [{system}]: {json.dumps(results['scenarios'][name][system])}", flush=True)
    name = f"drain {jobs} no-op jobs, jobmill 2 workers x 50 (its own setting)"
    for backend in backends:
        measured = [drain(backend, jobs, 2, 50) for _ in range(rounds)]
        results["scenarios"].setdefault(name, {})[f"jobmill-{backend}"] = summarise(measured)
        print(
            f"{name} [{backend}]: {json.dumps(results['scenarios'][name][f'jobmill-{backend}'])}", flush=True
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    print(f"wrote {out / 'latest.md'}")


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"# jobmill engine benchmarks ({results['date']})",
        "",
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, Python {machine['python']}; "
        f"median of {results['rounds']} rounds (min-max).",
        "",
        "| scenario | system | figure | median | min-max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, by_backend in results["scenarios"].items():
        for backend, figures in by_backend.items():
            for figure, stats in figures.items():
                if isinstance(stats, dict):
                    spread = f"{stats['min']:.2f}-{stats['max']:.2f}"
                    lines.append(f"| {name} | {backend} | {figure} | {stats['median']:.2f} | {spread} |")
                else:
                    lines.append(f"| {name} | {backend} | {figure} | {stats} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
