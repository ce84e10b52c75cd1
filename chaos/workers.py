"""Worker faults: SIGKILLed workers, a PostgreSQL restart, and SIGTERM to every worker under load.

    python -m chaos.workers [--short] [postgres|sqlite|graceful ...]

Each scenario runs real `jobmill worker` processes (and one `jobmill serve --no-worker`, probed throughout)
on a database of its own, and returns a `Section` for docs/reliability.md. See chaos/analysis.py for how
duplicate executions are explained.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chaos import handlers as chaos_handlers
from chaos.analysis import Faults, check_outcome, judge
from chaos.report import Section
from chaos.support import (
    TERMINAL,
    ApiProbe,
    ApiServer,
    Fleet,
    Inspector,
    ProbeLog,
    ScratchPg,
    create_executions_table,
    kill_marked,
    leftover_workdirs,
    marked_processes,
    pg_available,
    pg_ctl,
    pg_ensure_running,
    wait_for,
    worker_env,
)
from jobmill.handlers import default_registry
from jobmill.service import JobService, SubmitRequest
from jobmill.store import open_store

# A killed worker's process trees must be gone from /proc this soon (parent-death signal, not a sweep).
ORPHAN_DEADLINE_S = 5.0
# After the database is back, /readyz must say 200 again within this.
READY_AGAIN_S = 15.0


@dataclass
class FaultPlan:
    backend: str  # "postgres" or "sqlite"
    jobs: int
    workers: int = 4
    concurrency: int = 4
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    min_kills: int = 3
    max_kills: int | None = None
    restart_pg: bool = False
    pg_down_s: float = 2.0
    lease_s: float = 4.0
    min_ms: float = 10.0
    max_ms: float = 2000.0
    tree_fraction: float = 0.3
    fail_fraction: float = 0.01
    deadline_s: float = 600.0
    seed: int = 1


def job_specs(plan: FaultPlan, rng: random.Random) -> list[SubmitRequest]:
    """Random lengths, log-uniform between min_ms and max_ms (many short jobs, some long ones)."""
    specs = []
    for _ in range(plan.jobs):
        ms = plan.min_ms * math.exp(rng.random() * math.log(plan.max_ms / plan.min_ms))
        params = {
            "ms": round(ms, 1),
            "tree": rng.random() < plan.tree_fraction,
            "fail_first": rng.random() < plan.fail_fraction,
        }
        specs.append(
            SubmitRequest(kind="chaos.work", params=params, max_attempts=chaos_handlers.MAX_ATTEMPTS)
        )
    return specs


@contextmanager
def scenario_db(backend: str, run_dir: Path) -> Iterator[tuple[str, str]]:
    """(database URL, executions URL) of a fresh, migrated database; dropped afterwards."""
    if backend == "sqlite":
        url, exec_url = f"sqlite:///{run_dir / 'jobs.db'}", f"sqlite:///{run_dir / 'executions.db'}"
        open_store(url).close()
        create_executions_table(exec_url)
        yield url, exec_url
        return
    pg_ensure_running()
    db = ScratchPg()
    db.create()
    try:
        open_store(db.url, migrate=True).close()
        exec_url = f"sqlite:///{run_dir / 'executions.db'}"
        create_executions_table(exec_url)
        yield db.url, exec_url
    finally:
        db.drop()


def submit(database_url: str, specs: list[SubmitRequest]) -> list[str]:
    store = open_store(database_url)
    try:
        service = JobService(store, registry=default_registry)
        ids: list[str] = []
        for i in range(0, len(specs), 500):
            ids += [str(r.job.id) for r in service.submit_many(specs[i : i + 500])]
        return ids
    finally:
        store.close()


@contextmanager
def run_directory(keep: bool, section: Section) -> Iterator[Path]:
    """A folder for the run's databases, workdirs and logs; kept when asked to or when a check failed."""
    path = Path(tempfile.mkdtemp(prefix="jobmill-chaos-"))
    try:
        yield path
    finally:
        if keep or not section.passed or not section.checks:
            section.notes.append(f"logs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _probe_figures(section: Section, probe: ProbeLog, outages: list[tuple[float, float]]) -> None:
    """Figures and checks of the API node: /readyz through the outage, 5xx answers to job reads."""
    t0 = probe.readyz[0][0] if probe.readyz else 0.0
    section.figures["readyz polls"] = probe.readyz_polls
    section.figures["readyz transitions"] = (
        " -> ".join(f"{code} (+{at - t0:.1f}s)" for at, code in probe.readyz) or "none"
    )
    section.figures["API job reads"] = sum(probe.requests.values())
    section.figures["API answers"] = ", ".join(f"{c} {n}" for c, n in sorted(probe.requests.items()))
    section.figures["API 5xx (incl. readyz)"] = len(probe.server_errors)

    def in_outage(at: float) -> bool:
        return any(start <= at <= end + 5.0 for start, end in outages)

    # 503 is the documented answer while the database is away; anything else 5xx, or 5xx outside an
    # outage, or no answer at all (a hung request), is a fault of the API.
    wrong = [e for e in probe.server_errors if e[2] != "503" or not in_outage(e[0])]
    section.check(
        "no API 5xx other than 503 during the outage, no hung request",
        not wrong,
        f"{len(wrong)} such answers" + (f", e.g. {wrong[0][1]} {wrong[0][2]}" if wrong else ""),
    )
    section.check(
        "/readyz ends 200",
        bool(probe.readyz) and probe.readyz[-1][1] == "200",
        probe.readyz[-1][1] if probe.readyz else "no polls",
    )
    for start, end in outages:
        # The first non-200 answer after the stop began, then the first 200 after that.
        down = next((at for at, code in probe.readyz if at >= start and code != "200"), None)
        up = next((at for at, code in probe.readyz if down is not None and at > down and code == "200"), None)
        section.check(
            "/readyz answered 503 while PostgreSQL was down",
            down is not None and down <= end and dict(probe.readyz).get(down) == "503",
            f"first non-200 answer: {dict(probe.readyz).get(down) if down else 'none'}",
        )
        section.figures["readyz 200 again after PostgreSQL accepted connections (s)"] = (
            round(max(0.0, up - end), 2) if up is not None else "never"
        )
        section.check(
            f"/readyz back to 200 within {READY_AGAIN_S:.0f}s of PostgreSQL accepting connections",
            up is not None and up - end <= READY_AGAIN_S,
        )


def run_faults(plan: FaultPlan, *, keep: bool = False, log: Callable[[str], None] = print) -> Section:
    """Kills (and, on PostgreSQL, one restart) while `plan.jobs` jobs drain; returns the judged run."""
    title = {
        "postgres": "Worker kills and a PostgreSQL restart",
        "sqlite": "Worker kills on SQLite",
    }[plan.backend]
    section = Section(title)
    rng = random.Random(plan.seed)
    began = time.monotonic()
    faults = Faults(lease_s=plan.lease_s)
    with run_directory(keep, section) as run_dir, scenario_db(plan.backend, run_dir) as (url, exec_url):
        run_id = run_dir.name
        env = worker_env(
            url,
            run_dir,
            run_id,
            exec_url,
            lease_s=str(plan.lease_s),
            retry_base_s="0.1",
            retry_max_s="1",
            shutdown_grace_s="10",
            cancel_grace_s="1",
        )
        ids = submit(url, job_specs(plan, rng))
        submitted = set(ids)
        inspector = Inspector(url, exec_url)
        fleet = Fleet(env, run_dir, plan.concurrency)
        api = ApiServer(env, run_dir)
        orphans_after_kill: list[int] = []
        worker_pids_before_outage: set[int] = set()
        try:
            api.wait_ready()
            with ApiProbe(api, lambda: ids) as probe:
                for _ in range(plan.workers):
                    fleet.start()
                # The first kill once jobs run; each kill hits a worker that holds running jobs.
                wait_for(lambda: inspector.status_counts()["running"] > 0, 60, "the first claims")
                next_kill = time.monotonic() + rng.uniform(*plan.kill_every_s)
                restarted = not plan.restart_pg
                deadline = time.monotonic() + plan.deadline_s
                done = 0
                while time.monotonic() < deadline:
                    counts = inspector.status_counts()
                    done = sum(counts[s] for s in TERMINAL)
                    if done >= len(ids):
                        break
                    fleet.replace_exited()
                    if not restarted and done >= len(ids) // 2:
                        restarted = True
                        worker_pids_before_outage = {w.pid for w in fleet.workers}
                        log(f"  {done}/{len(ids)} done: stopping PostgreSQL for {plan.pg_down_s}s")
                        start = time.time()
                        try:
                            pg_ctl("stop")
                            time.sleep(plan.pg_down_s)  # the outage itself: a fixed length on purpose
                        finally:
                            pg_ctl("start")
                            wait_for(pg_available, 60, "PostgreSQL to accept connections", 0.05)
                        faults.outages.append((start, time.time()))
                        continue
                    kills_left = plan.max_kills is None or len(fleet.kills) < plan.max_kills
                    if kills_left and time.monotonic() >= next_kill:
                        pid = fleet.kill_random(rng, inspector.running_owners())
                        fleet.start()
                        next_kill = time.monotonic() + rng.uniform(*plan.kill_every_s)
                        if pid is not None:
                            try:
                                wait_for(
                                    lambda pid=pid: not marked_processes(run_id, pid),  # type: ignore[misc]
                                    ORPHAN_DEADLINE_S,
                                    "the killed worker's processes to die",
                                )
                            except TimeoutError:
                                orphans_after_kill.append(pid)
                        log(f"  {done}/{len(ids)} done: killed worker {pid} ({len(fleet.kills)} kills)")
                    time.sleep(0.2)
                drained_s = time.monotonic() - began
                codes = fleet.terminate_all(timeout=30)
                faults.shutdown_at = time.time()
        finally:
            fleet.kill_all()
            api.stop()
        faults.kills = fleet.kills
        leftover = marked_processes(run_id)
        kill_marked(run_id)
        workdirs = leftover_workdirs(run_dir / "work")
        verdict = judge(inspector.status_events(), inspector.executions(), faults)
        jobs = inspector.jobs()

        section.figures["workers (at once) x concurrency"] = f"{plan.workers} x {plan.concurrency}"
        section.figures["job length"] = (
            f"{plan.min_ms:.0f} ms to {plan.max_ms / 1000:.1f} s, log-uniform; {plan.tree_fraction:.0%} run"
            f" `sh -c 'sleep 300 & sleep N'`; {plan.fail_fraction:.0%} fail their first attempt"
        )
        section.figures["lease (s)"] = plan.lease_s
        section.figures["workers SIGKILLed"] = len(fleet.kills)
        section.figures["workers started"] = fleet.started
        section.figures["PostgreSQL restarts"] = len(faults.outages)
        if faults.outages:
            start, end = faults.outages[0]
            section.figures["PostgreSQL outage (s)"] = round(end - start, 2)
        check_outcome(section, submitted, jobs, verdict)
        kills = len(fleet.kills)
        section.check(f"at least {plan.min_kills} workers SIGKILLed", kills >= plan.min_kills, str(kills))
        if plan.restart_pg:
            section.check("PostgreSQL restarted once mid-run", len(faults.outages) == 1)
            # Every worker alive when PostgreSQL stopped, and not killed within 5 s after it was back, must
            # have claimed again: its pooled connections and its LISTEN connection all broke.
            end = faults.outages[0][1] if faults.outages else 0.0
            survivors = worker_pids_before_outage - {pid for at, pid in faults.kills if at < end + 5}
            reclaimers = _claimers_after(inspector, faults, worker_pids_before_outage)
            section.figures["workers alive across the restart that claimed jobs after it"] = (
                f"{len(reclaimers & survivors)} of {len(survivors)}"
            )
            section.check(
                "workers reconnected by themselves (claimed jobs after the restart)",
                bool(survivors) and survivors <= reclaimers,
                f"{sorted(reclaimers & survivors)} of {sorted(survivors)}",
            )
        section.check(
            "no worker exited unless killed",
            not fleet.unexpected_exits,
            f"{fleet.unexpected_exits}" if fleet.unexpected_exits else "",
        )
        section.check(
            "workers exit 0 on SIGTERM at the end",
            all(code == 0 for code in codes.values()),
            str(sorted(codes.values(), key=str)),
        )
        section.check(
            f"a SIGKILLed worker's process trees gone within {ORPHAN_DEADLINE_S:.0f}s",
            not orphans_after_kill,
            f"{len(orphans_after_kill)} kills left processes",
        )
        section.check("no orphaned child process at the end", not leftover, f"{len(leftover)} left")
        section.check(
            "no workdir left on disk",
            not workdirs,
            f"{len(workdirs)} left" + (f": {workdirs[:3]}" if workdirs else ""),
        )
        _probe_figures(section, probe.log, faults.outages)
        section.figures["time to drain (s)"] = round(drained_s, 1)
        section.figures["scenario duration (s)"] = round(time.monotonic() - began, 1)
    return section


def _claimers_after(inspector: Inspector, faults: Faults, pids: set[int]) -> set[int]:
    """Of the worker pids in `pids`, those that claimed a job after the (first) outage began."""
    if not faults.outages:
        return set()
    end = faults.outages[0][0]
    found: set[int] = set()
    for events in inspector.status_events().values():
        for event in events:
            owner = (event.data or {}).get("attempt_by")
            if event.status == "running" and event.at > end and isinstance(owner, str):
                pid = int(owner.split(":")[-2])
                if pid in pids:
                    found.add(pid)
    return found


def postgres_plan(short: bool) -> FaultPlan:
    if short:
        return FaultPlan(
            "postgres", jobs=300, concurrency=3, kill_every_s=(1.0, 2.0), min_kills=2, max_kills=3,
            restart_pg=True, pg_down_s=1.5, lease_s=3.0, max_ms=1000, deadline_s=80,
        )  # fmt: skip
    return FaultPlan("postgres", jobs=5000, restart_pg=True, deadline_s=600)


def sqlite_plan(short: bool) -> FaultPlan:
    if short:
        return FaultPlan(
            "sqlite", jobs=200, concurrency=3, kill_every_s=(0.7, 1.5), min_kills=2, max_kills=3,
            lease_s=3.0, max_ms=1000, deadline_s=80, seed=2,
        )  # fmt: skip
    return FaultPlan("sqlite", jobs=1500, seed=2, deadline_s=400)


# -- graceful shutdown under load --------------------------------------------------------------------------


@dataclass
class ShutdownPlan:
    backend: str = "postgres"
    jobs: int = 120
    workers: int = 4
    concurrency: int = 4
    shutdown_grace_s: float = 1.0
    min_ms: float = 300.0
    max_ms: float = 4000.0
    # Long, so that a job not handed back would still be `running` when checked.
    lease_s: float = 60.0
    deadline_s: float = 120.0
    seed: int = 3


def run_graceful(plan: ShutdownPlan, *, keep: bool = False, log: Callable[[str], None] = print) -> Section:
    """SIGTERM every worker at once while their slots are full; then new workers finish everything."""
    section = Section(f"Graceful shutdown under load ({plan.backend})")
    rng = random.Random(plan.seed)
    began = time.monotonic()
    faults = Faults(lease_s=plan.lease_s)
    fault_plan = FaultPlan(
        plan.backend, plan.jobs, min_ms=plan.min_ms, max_ms=plan.max_ms, tree_fraction=0.5, fail_fraction=0
    )
    with run_directory(keep, section) as run_dir, scenario_db(plan.backend, run_dir) as (url, exec_url):
        run_id = run_dir.name
        env = worker_env(
            url,
            run_dir,
            run_id,
            exec_url,
            lease_s=str(plan.lease_s),
            shutdown_grace_s=str(plan.shutdown_grace_s),
            cancel_grace_s="1",
        )
        ids = submit(url, job_specs(fault_plan, rng))
        inspector = Inspector(url, exec_url)
        fleet = Fleet(env, run_dir, plan.concurrency)
        try:
            for _ in range(plan.workers):
                fleet.start()
            first = {w.pid for w in fleet.workers}
            slots = plan.workers * plan.concurrency
            wait_for(
                lambda: (
                    inspector.running_owners() >= first
                    and inspector.status_counts()["running"] >= min(slots, plan.jobs) * 3 // 4
                ),
                60,
                "every worker to run jobs",
            )
            running_at_sigterm = inspector.status_counts()["running"]
            faults.shutdown_at = time.time()
            t_term = time.monotonic()
            codes = fleet.terminate_all(timeout=plan.shutdown_grace_s + 20)
            stop_s = time.monotonic() - t_term
            counts = inspector.status_counts()
            leftover_now = [pid for pid in first if marked_processes(run_id, pid)]
            workdirs_now = leftover_workdirs(run_dir / "work")
            fleet.workers.clear()
            log(f"  SIGTERM: {running_at_sigterm} running, workers gone after {stop_s:.1f}s: {dict(counts)}")
            for _ in range(2):
                fleet.start()
            wait_for(
                lambda: sum(inspector.status_counts()[s] for s in TERMINAL) >= len(ids),
                plan.deadline_s,
                "the new workers to finish every job",
                interval=0.2,
            )
            fleet.terminate_all(timeout=30)
        finally:
            fleet.kill_all()
        leftover = marked_processes(run_id)
        kill_marked(run_id)
        workdirs = leftover_workdirs(run_dir / "work")
        verdict = judge(inspector.status_events(), inspector.executions(), faults)
        jobs = inspector.jobs()

        section.figures["workers x concurrency"] = f"{plan.workers} x {plan.concurrency}"
        section.figures["shutdown grace (s)"] = plan.shutdown_grace_s
        section.figures["jobs running at SIGTERM"] = running_at_sigterm
        section.figures["workers exited after (s)"] = round(stop_s, 2)
        section.figures["right after: statuses"] = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        section.figures["handed back (re-run by new workers)"] = verdict.explained["shutdown"]
        section.check(
            "every worker exited 0 within the grace period (+ a few s)",
            all(code == 0 for code in codes.values()) and stop_s <= plan.shutdown_grace_s + 10,
            f"codes {sorted(codes.values(), key=str)}",
        )
        section.check(
            "no job left running or cancelling after the workers exited",
            counts["running"] + counts["cancelling"] == 0,
            f"{counts['running']} running, {counts['cancelling']} cancelling",
        )
        section.check(
            "no job lost at shutdown (pending + terminal = submitted)",
            counts["pending"] + sum(counts[s] for s in TERMINAL) == len(ids),
        )
        section.check(
            "jobs past the grace period were handed back to pending",
            verdict.explained["shutdown"] > 0,
            f"{verdict.explained['shutdown']} handed back",
        )
        section.check("no process tree left after the shutdown", not leftover_now, str(leftover_now))
        section.check("no workdir left after the shutdown", not workdirs_now, f"{len(workdirs_now)} left")
        check_outcome(section, set(ids), jobs, verdict)
        section.check("no orphaned child process at the end", not leftover, f"{len(leftover)} left")
        section.check("no workdir left at the end", not workdirs, f"{len(workdirs)} left")
        section.figures["scenario duration (s)"] = round(time.monotonic() - began, 1)
    return section


def graceful_plan(short: bool) -> ShutdownPlan:
    if short:
        return ShutdownPlan(jobs=24, workers=3, concurrency=3, max_ms=3000)
    return ShutdownPlan(jobs=200)


SCENARIOS: dict[str, Callable[[bool, bool], Section]] = {
    "postgres": lambda short, keep: run_faults(postgres_plan(short), keep=keep),
    "sqlite": lambda short, keep: run_faults(sqlite_plan(short), keep=keep),
    "graceful": lambda short, keep: run_graceful(graceful_plan(short), keep=keep),
}


def run(short: bool, *, only: list[str] | None = None, keep: bool = False) -> list[Section]:
    """Every worker-fault scenario (PostgreSQL ones only when a server answers)."""
    sections = []
    for name in only or list(SCENARIOS):
        if name != "sqlite" and not pg_available():
            section = Section(f"Worker faults: {name}")
            section.check("PostgreSQL reachable", False, "no server at JOBMILL_TEST_DATABASE_URL")
            sections.append(section)
            continue
        print(f"chaos: {name} ({'short' if short else 'full'})", flush=True)
        try:
            sections.append(SCENARIOS[name](short, keep))
        finally:
            if name == "postgres":
                pg_ensure_running()
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (logs)")
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    from chaos.report import render

    sections = run(args.short, only=args.scenarios or None, keep=args.keep)
    print(render(sections, "python -m chaos.workers"))
    return 0 if all(s.passed for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
