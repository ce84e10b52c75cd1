"""Worker memory: RSS of the whole worker process tree idle after start, and after 50,000 and 100,000
no-op jobs (by default), with the growth between the two marks, which should be nothing.

    python -m bench.memory [--backend sqlite|postgres] [--jobs 100000] [--concurrency 50]

RSS is read from /proc (VmRSS of the worker and of every process below it, summed). "Idle" is taken once
the worker has run one job (so that the modules a job needs are loaded) and has had a second to settle.
The jobs are submitted in bulk while the worker runs, in two halves; each mark is read once the store
shows every job of the half completed and the worker has settled again. The peak over the run is sampled
every 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import bench.handlers  # noqa: F401  (registers the bench kinds)
from jobmill.handlers import default_registry
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store

REPO = Path(__file__).resolve().parents[1]
# The processes the bench starts run the jobmill of this tree (src/), whatever the venv has installed.
PYTHONPATH = os.pathsep.join([str(REPO / "src"), str(REPO)])
SETTLE_S = 1.0


def tree_rss_mb(root: int) -> float:
    """VmRSS of `root` and of every live process below it, in MB (10^6 bytes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total_kib = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib * 1024 / 1e6


class PeakSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, tree_rss_mb(self.pid))


def completed(service: JobService) -> int:
    return sum(
        q.completed_since for q in service.queue_stats(None, window_s=timedelta(days=1).total_seconds())
    )


def wait_completed(service: JobService, proc: subprocess.Popen[bytes], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while completed(service) < count:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} jobs completed within {timeout:.0f} s")
        time.sleep(0.2)


def run(database_url: str, jobs: int = 100_000, concurrency: int = 50) -> dict[str, float]:
    """RSS in MB: idle, after half the jobs, after all of them; growth between the two; peak."""
    half = jobs // 2
    store = open_store(database_url)
    service = JobService(store, registry=default_registry)
    with tempfile.TemporaryDirectory() as workdir:
        env = {
            **os.environ,
            "JOBMILL_DATABASE_URL": database_url,
            "JOBMILL_WORKDIR_ROOT": workdir,
            "PYTHONPATH": PYTHONPATH,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobmill.cli.main", "worker", "--app", "bench.handlers",
             "--concurrency", str(concurrency), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        sampler = PeakSampler(proc.pid)
        try:
            service.submit(SubmitRequest(kind="bench.noop"))
            wait_completed(service, proc, 1, 60)
            time.sleep(SETTLE_S)
            idle = tree_rss_mb(proc.pid)
            sampler.start()
            marks = []
            for goal in (half, jobs):
                for first in range(0, half, 1000):
                    service.submit_many(
                        [SubmitRequest(kind="bench.noop") for _ in range(min(1000, half - first))]
                    )
                wait_completed(service, proc, 1 + goal, 60 + goal / 50)
                time.sleep(SETTLE_S)
                marks.append(tree_rss_mb(proc.pid))
        finally:
            sampler.done.set()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # a worker stuck (say, after a database restart)
                proc.kill()
                proc.wait(10)
            store.close()
    return {
        "idle_rss_mb": idle,
        "rss_after_half_mb": marks[0],
        "rss_after_all_mb": marks[1],
        "growth_second_half_mb": marks[1] - marks[0],
        "peak_rss_mb": max(sampler.peak, *marks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    from bench.run import database

    with database(args.backend) as url:
        print(json.dumps(run(url, args.jobs, args.concurrency)))


if __name__ == "__main__":
    main()
