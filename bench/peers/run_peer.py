"""One peer of jobmill, one scenario: the same three scenarios as bench/run.py, run on another system.

    bench/.peers-venv/bin/python bench/peers/run_peer.py --system {celery,rq,procrastinate,dramatiq,arq}
        --scenario {drain,pickup,cancel} [--jobs N] [--concurrency C] [--count K] [--timeout S]

It makes a fresh store, starts the system's own workers as real processes, runs the scenario, stops
everything it started, and prints the figures as ONE JSON object on its last stdout line:
  drain  -> {"jobs_per_s", "seconds", "worker_cpu_s_per_1000"}
  pickup -> {"p50_ms", "p99_ms"}
  cancel -> {"p50_ms", "p99_ms", "child_p50_ms", "tries", "tree_killed_pct", "child_killed_pct",
             "job_ended_pct"}: p50/p99 until the shell and all below it were dead, over the tries where
             they died within 10 s (null when none did); child_p50_ms likewise for the shell alone;
             job_ended_pct, the tries whose job the system's store showed ended within those 10 s,
             whatever became of its processes. Or {"cannot": true, "why": "..."}.
On an error it says what went wrong on stderr and exits 1. Runs are serialised by a lock file: they
share the dedicated Redis db.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_common import REDIS_URL, Peer, redis_client  # noqa: E402  (needs HERE on sys.path)

SYSTEMS = {
    "celery": "peer_celery",
    "rq": "peer_rq",
    "procrastinate": "peer_procrastinate",
    "dramatiq": "peer_dramatiq",
    "arq": "peer_arq",
}
LOCK = Path(tempfile.gettempdir()) / "jobmill-bench-peers.lock"
STALL_S = 60.0  # a drain that finishes no job for this long has failed (the slowest peer does ~3 a s)
CANCEL_WATCH_S = 10.0  # a process still alive this long after the cancel call counts as not killed
Figures = dict[str, Any]


class BenchError(RuntimeError):
    """A run that cannot give figures: the message says why."""


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.001,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll `predicate` until true; `check` (the workers' health) runs on every turn too."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], pct: float) -> float:
    """The same nearest-rank percentile as bench/run.py, so both sides are read alike."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# --- processes, as /proc shows them ------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, int(stat[19]))

    def alive(self) -> bool:
        """A zombie counts as dead: it has exited, only its parent (or init) has yet to reap it."""
        stat = _stat(self.pid)
        return stat is not None and stat[0] not in "ZX" and int(stat[19]) == self.start

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def all_stats() -> Iterator[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            yield int(entry), stat


def descendants(root: int) -> list[Proc]:
    """Every live process below `root`, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for pid, stat in all_stats():
        if stat[0] not in "ZX":
            children.setdefault(int(stat[1]), []).append(pid)
    found: list[Proc] = []
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if (proc := Proc.of(pid)) is not None:
                found.append(proc)
                todo.append(pid)
    return found


# --- the peer's workers --------------------------------------------------------------------------------


class Workers:
    """The worker processes of one run, each the leader of a session of its own.

    Whatever they start stays in those sessions (RQ's work horses take a process group of their own,
    not a session), so stop() can find and kill every leftover, orphans included, by session id; the
    run's marker in the environment makes sure nothing else is ever taken for one.
    """

    def __init__(self, peer: Peer, logdir: Path) -> None:
        self.peer = peer
        self.logdir = logdir
        self.marker = uuid.uuid4().hex
        self.procs: list[psutil.Popen] = []

    def start(self) -> None:
        env = {**os.environ, **self.peer.worker_env(), "PYTHONPATH": str(HERE), "PEERS_RUN": self.marker}
        for index, command in enumerate(self.peer.worker_commands()):
            log = (self.logdir / f"worker-{index}.log").open("wb")
            self.procs.append(
                psutil.Popen(
                    command,
                    cwd=HERE,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
            log.close()

    def check(self) -> None:
        """Raise, with the end of its log, if a worker has exited."""
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise BenchError(f"worker {index} exited with {proc.returncode}:\n{self.log_tail(index)}")

    def log_tail(self, index: int, lines: int = 25) -> str:
        text = (self.logdir / f"worker-{index}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """CPU used so far by the workers and everything below them, reaped children included."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                for each in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = each.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total

    def stop(self) -> None:
        """Ask each worker to shut down (SIGTERM: their documented warm stop), then kill what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except psutil.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        sessions = {str(proc.pid) for proc in self.procs}
        for pid, stat in all_stats():
            if stat[3] in sessions and stat[0] not in "ZX" and self._marked(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _marked(self, pid: int) -> bool:
        try:
            return f"PEERS_RUN={self.marker}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False


@contextlib.contextmanager
def running(peer: Peer, logdir: Path) -> Iterator[Workers]:
    workers = Workers(peer, logdir)
    try:
        yield workers
    finally:
        workers.stop()


def warm_up(peer: Peer, workers: Workers) -> None:
    """Wait until the workers listen and have run one job: start-up is not what pickup measures."""
    wait_for(peer.workers_ready, 60, "the workers to register", interval=0.01, check=workers.check)
    stamp_and_wait(peer, workers, "peers:stamp:warm-up", 60)


def stamp_and_wait(peer: Peer, workers: Workers, key: str, timeout: int) -> float:
    """Submit one stamp job; its handler's start time (epoch s), once the store shows it done."""
    submitted = time.time()
    peer.submit_stamp(key)
    popped = redis_client().blpop([key], timeout=int(timeout))
    if popped is None:
        workers.check()
        raise BenchError(f"no job started within {timeout:.0f} s of its submission")
    wait_for(lambda: peer.pending() == 0, timeout, "the job to be recorded as done", check=workers.check)
    return float(popped[1]) - submitted


# --- scenarios -----------------------------------------------------------------------------------------


def drain(peer: Peer, logdir: Path, jobs: int, timeout: float) -> Figures:
    peer.enqueue_noops(jobs)
    if (queued := peer.pending()) != jobs:
        raise BenchError(f"{queued} jobs pending after enqueuing {jobs}")
    with running(peer, logdir) as workers:
        started = time.monotonic()
        workers.start()
        finished, cpu = wait_drained(peer, workers, jobs, started + timeout)
    elapsed = finished - started
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed, "worker_cpu_s_per_1000": 1000 * cpu / jobs}


class Stall:
    """Fails a drain whose pending count has not gone down for STALL_S, instead of waiting out its timeout."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.fewest: int | None = None
        self.since = time.monotonic()

    def check(self, remaining: int) -> None:
        now = time.monotonic()
        if self.fewest is None or remaining < self.fewest:
            self.fewest, self.since = remaining, now
        elif now - self.since > STALL_S:
            raise BenchError(
                f"no progress for {STALL_S:.0f} s with {remaining} jobs pending (did something flush the"
                f" peers' Redis db or drop their database?); worker log:\n{self.workers.log_tail(0)}"
            )


def wait_drained(peer: Peer, workers: Workers, jobs: int, deadline: float) -> tuple[float, float]:
    """When the store first showed all `jobs` done, and the workers' CPU then.

    Polled fast only near the end: the interval shrinks with the number of jobs left, so the poll
    neither loads the store while thousands remain nor lags by more than a millisecond or so at the end.
    """
    short_since = None
    stall = Stall(workers)
    while True:
        remaining = peer.pending()
        stall.check(remaining)
        if remaining == 0:
            finished, cpu = time.monotonic(), workers.cpu_seconds()
            if (ok := peer.succeeded()) >= jobs:
                return finished, cpu
            # Nothing pending, yet not all succeeded: for a moment, a message between two of the
            # broker's structures; for longer, jobs that failed.
            short_since = short_since or finished
            if finished - short_since > 5:
                raise BenchError(f"only {ok} of {jobs} jobs succeeded; worker log:\n{workers.log_tail(0)}")
            remaining = jobs - ok
        workers.check()
        if time.monotonic() > deadline:
            raise BenchError(f"drain timed out: {remaining} of {jobs} jobs not done ({peer.succeeded()} ok)")
        time.sleep(min(0.5, max(0.001, remaining * 0.0002)))


def pickup(peer: Peer, logdir: Path, count: int) -> Figures:
    latencies = []
    with running(peer, logdir) as workers:
        workers.start()
        warm_up(peer, workers)
        for index in range(count):
            latencies.append(1000 * stamp_and_wait(peer, workers, f"peers:stamp:{index}", 30))
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99)}


@dataclass
class CancelTry:
    child_ms: float | None  # from the cancel call until the shell was dead; None: it lived 10 s
    tree_ms: float | None  # ... until the shell and every process below it were
    ended: bool  # the system's store showed the job ended within the 10 s (whatever its processes did)


def cancel(peer: Peer, logdir: Path, count: int) -> Figures:
    if peer.cannot_cancel is not None:
        return {"cannot": True, "why": peer.cannot_cancel}
    tries = []
    with running(peer, logdir) as workers:
        workers.start()
        warm_up(peer, workers)
        for index in range(count):
            tries.append(cancel_once(peer, workers, logdir / f"tree-{index}.pid"))
    return cancel_figures(tries)


def cancel_once(peer: Peer, workers: Workers, pidfile: Path) -> CancelTry:
    """Cancel one running `sh` that has children of its own; watch /proc every ms for up to 10 s."""
    handle = peer.submit_tree(str(pidfile))
    wait_for(lambda: read_pid(pidfile) is not None, 30, "the job to start its shell", check=workers.check)
    child = Proc.of(read_pid(pidfile) or 0)
    if child is None:
        raise BenchError("the job's shell exited by itself")
    tree = [child, *wait_tree_up(child)]
    try:
        started = time.monotonic()
        peer.cancel(handle)
        outcome = watch(peer, child, tree, started)
    finally:
        for proc in tree:  # whatever the system left alive, so that the worker's slot frees up
            proc.kill()
    wait_for(lambda: peer.pending() == 0, 30, "the cancelled job to end", check=workers.check)
    return outcome


def watch(peer: Peer, child: Proc, tree: list[Proc], started: float) -> CancelTry:
    """Poll /proc every ms until the tree is dead or 10 s are up; the store every 5 ms meanwhile."""
    deadline = started + CANCEL_WATCH_S
    child_ms = tree_ms = None
    ended = False
    next_store_poll = started
    while (now := time.monotonic()) < deadline and not (tree_ms is not None and ended):
        if tree_ms is None:
            if child_ms is None and not child.alive():
                child_ms = 1000 * (now - started)
            if child_ms is not None and not any(proc.alive() for proc in tree):
                tree_ms = 1000 * (now - started)
        if not ended and now >= next_store_poll:
            ended = peer.pending() == 0
            next_store_poll = now + 0.005
        time.sleep(0.001)
    return CancelTry(child_ms, tree_ms, ended)


def read_pid(pidfile: Path) -> int | None:
    """The shell's pid, once its `echo pid=$$ > FILE` has written it whole."""
    try:
        text = pidfile.read_text()
    except OSError:
        return None
    digits = text.removeprefix("pid=").strip()
    return int(digits) if text.startswith("pid=") and text.endswith("\n") and digits.isdigit() else None


def wait_tree_up(child: Proc) -> list[Proc]:
    """The shell's own children, once both are there: `sleep 600 &` and the foreground `sleep 600`."""
    found: list[Proc] = []

    def up() -> bool:
        nonlocal found
        found = descendants(child.pid)
        return len(found) >= 2

    wait_for(up, 10, "the shell's children to start")
    return found


def cancel_figures(tries: list[CancelTry]) -> Figures:
    tree = [t.tree_ms for t in tries if t.tree_ms is not None]
    child = [t.child_ms for t in tries if t.child_ms is not None]
    return {
        "p50_ms": statistics.median(tree) if tree else None,
        "p99_ms": percentile(tree, 99) if tree else None,
        "child_p50_ms": statistics.median(child) if child else None,
        "tries": len(tries),
        "tree_killed_pct": 100 * len(tree) / len(tries),
        "child_killed_pct": 100 * len(child) / len(tries),
        "job_ended_pct": 100 * sum(t.ended for t in tries) / len(tries),
    }


# --- entry point ---------------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"run_peer: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--scenario", required=True, choices=["drain", "pickup", "cancel"])
    parser.add_argument("--jobs", type=int, default=20_000, help="drain: no-op jobs (20000)")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once, all workers together (4)")
    parser.add_argument("--count", type=int, help="pickup: jobs (200); cancel: tries (10)")
    parser.add_argument("--timeout", type=float, help="drain: seconds before giving up (60 + jobs / 25)")
    args = parser.parse_args()
    if min(args.jobs, args.concurrency, args.count or 1) < 1:
        parser.error("--jobs, --concurrency and --count must be at least 1")
    return args


@contextlib.contextmanager
def exclusive(timeout: float = 1800) -> Iterator[None]:
    """One run at a time on this machine: every run flushes the same Redis db."""
    with LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BenchError(f"another run has held {LOCK} for {timeout:.0f} s") from None
                time.sleep(0.2)
        yield


def run(args: argparse.Namespace) -> Figures:
    try:
        redis_client().ping()
    except Exception as exc:
        raise BenchError(f"Redis is not reachable at {REDIS_URL} ({exc}): start it (make services)") from exc
    peer: Peer = importlib.import_module(SYSTEMS[args.system]).PEER(args.concurrency)
    print(f"# {peer.name} {peer.version()}: {args.scenario}, concurrency {args.concurrency}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        try:
            peer.open()
            if args.scenario == "drain":
                return drain(peer, Path(tmp), args.jobs, args.timeout or 60 + args.jobs / 25)
            if args.scenario == "pickup":
                return pickup(peer, Path(tmp), args.count or 200)
            return cancel(peer, Path(tmp), args.count or 10)
        finally:
            peer.close()


def on_sigterm(signum: int, frame: object) -> None:
    # Unwind through every `finally`: a SIGTERM from whoever runs the bench still stops the workers
    # and drops the store.
    print("run_peer: terminated; stopping the workers and dropping the store", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with exclusive():
            figures = run(args)
    except BenchError as exc:
        fail(f"{args.system} {args.scenario}: {exc}")
    except Exception:
        traceback.print_exc()
        fail(f"{args.system} {args.scenario}: unexpected error (traceback above)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
