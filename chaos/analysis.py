"""What a worker-fault run left behind, judged: lost jobs, double completions, and why each job ran more
than once.

Each claim of a job is a *run*: a `running` status event whose data names the worker (`attempt_by`,
"host:pid:suffix"); the next status event says how the run ended. Each execution the handler recorded is
matched to the run of its worker's pid and attempt number. An execution beyond the first of a job is a
duplicate unless it is the retry of a planned failure, and a duplicate is explained only if the run before
it ended for a reason the scenario caused:

    lease_expired, and the run's worker was SIGKILLed before that      -> "kill"
    lease_expired, and the run overlapped the database outage (+lease) -> "outage"
    handed back (pending, no error) after SIGTERM to the workers         -> "shutdown"

Anything else (a lease that expired under a live worker with the database up, two executions under one
claim, an execution no claim accounts for) is unexplained, and fails the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from chaos.report import Section
from chaos.support import TERMINAL, Execution, StatusEvent


@dataclass
class Run:
    job_id: str
    pid: int | None
    attempt: int
    began: float
    ended: float | None = None
    ending: str = "open"  # completed, lease_expired, released, error:<type>, failed, open
    executions: list[Execution] = field(default_factory=list)


@dataclass
class Faults:
    """What the driver did: kills (time, pid), outages (start, end), whether SIGTERM hand-backs happened."""

    kills: list[tuple[float, int]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    shutdown_at: float | None = None
    lease_s: float = 4.0


def _pid_of(data: dict[str, object] | None) -> int | None:
    owner = (data or {}).get("attempt_by")
    if not isinstance(owner, str):
        return None
    parts = owner.split(":")
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def _ending(event: StatusEvent) -> str:
    error = (event.data or {}).get("error")
    if event.status == "completed":
        return "completed"
    if isinstance(error, dict):
        kind = str(error.get("type"))
        return "lease_expired" if kind == "lease_expired" else f"error:{kind}"
    if event.status == "pending":
        return "released"
    return event.status


def runs_of(events: list[StatusEvent]) -> list[Run]:
    runs: list[Run] = []
    attempt = 0  # the job's attempt counter, as the store keeps it: +1 per claim, -1 per hand-back
    for i, event in enumerate(events):
        if event.status != "running":
            continue
        attempt += 1
        run = Run(event.job_id, _pid_of(event.data), attempt, event.at)
        if i + 1 < len(events):
            run.ended, run.ending = events[i + 1].at, _ending(events[i + 1])
            if run.ending == "released":
                attempt -= 1
        runs.append(run)
    return runs


@dataclass
class Verdict:
    duplicates: int = 0
    explained: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)
    planned_retries: int = 0
    expiries: Counter[str] = field(default_factory=Counter)  # lease expiries by cause
    double_completions: list[str] = field(default_factory=list)
    completions_without_execution: list[str] = field(default_factory=list)
    executions: int = 0


def _expiry_cause(run: Run, faults: Faults) -> str | None:
    assert run.ended is not None
    if run.pid is not None and any(pid == run.pid and at <= run.ended for at, pid in faults.kills):
        return "kill"
    for start, end in faults.outages:
        if run.began <= end + faults.lease_s and run.ended >= start:
            return "outage"
    return None


def judge(
    events: dict[str, list[StatusEvent]], executions: dict[str, list[Execution]], faults: Faults
) -> Verdict:
    verdict = Verdict()
    for job_id in sorted(set(events) | set(executions)):
        job_events = events.get(job_id, [])
        if sum(e.status == "completed" for e in job_events) > 1:
            verdict.double_completions.append(job_id)
        runs = runs_of(job_events)
        for run in runs:
            if run.ending == "lease_expired":
                verdict.expiries[_expiry_cause(run, faults) or "unexplained"] += 1
        job_execs = executions.get(job_id, [])
        verdict.executions += len(job_execs)
        for ex in job_execs:
            # Same worker, same attempt number; the claim's time is taken before the handler starts.
            candidates = [
                r
                for r in runs
                if r.pid == ex.pid and r.attempt == ex.attempt and r.began <= ex.started_at + 0.01
            ]
            if not candidates:
                verdict.unexplained.append(f"{job_id}: execution by pid {ex.pid} matches no claim")
                continue
            max(candidates, key=lambda r: r.began).executions.append(ex)
        completed_runs = [r for r in runs if r.ending == "completed"]
        for run in completed_runs:
            if not any(ex.outcome == "ok" for ex in run.executions):
                verdict.completions_without_execution.append(job_id)
        for run in runs:
            if len(run.executions) > 1:
                verdict.unexplained.append(f"{job_id}: {len(run.executions)} executions under one claim")
            if not run.executions or run.ending == "completed":
                continue
            if run.ending == "error:PlannedFailure":
                verdict.planned_retries += 1
                continue
            if run.ending == "open" and not any(r.began > run.began for r in runs):
                continue  # the job's current run (the job is not terminal): checked elsewhere
            verdict.duplicates += 1
            cause: str | None = None
            if run.ending == "lease_expired":
                cause = _expiry_cause(run, faults)
            elif run.ending == "released" and faults.shutdown_at is not None:
                cause = "shutdown" if run.ended is not None and run.ended >= faults.shutdown_at else None
            if cause is None:
                verdict.unexplained.append(
                    f"{job_id}: run of pid {run.pid} at {run.began:.3f} ended {run.ending}, and ran again"
                )
            else:
                verdict.explained[cause] += 1
    return verdict


def check_outcome(
    section: Section,
    submitted: set[str],
    jobs: dict[str, tuple[str, int]],
    verdict: Verdict,
    *,
    expect_completed: bool = True,
) -> None:
    """The checks every worker-fault scenario makes on how its jobs ended."""
    statuses = Counter(status for status, _ in jobs.values())
    terminal = sum(statuses[s] for s in TERMINAL)
    section.figures["jobs submitted"] = len(submitted)
    section.figures["jobs terminal"] = terminal
    section.figures["statuses"] = ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
    section.figures["executions recorded"] = verdict.executions
    section.figures["planned failures retried"] = verdict.planned_retries
    section.figures["duplicate executions"] = verdict.duplicates
    section.figures["duplicates explained"] = (
        ", ".join(f"{cause} {n}" for cause, n in sorted(verdict.explained.items())) or "none needed"
    )
    section.figures["lease expiries by cause"] = (
        ", ".join(f"{cause} {n}" for cause, n in sorted(verdict.expiries.items())) or "none"
    )
    missing = submitted - set(jobs)
    section.check("no job lost", not missing and len(jobs) == len(submitted), f"{len(missing)} missing")
    section.check(
        "every job terminal",
        terminal == len(submitted),
        f"{terminal} of {len(submitted)} terminal",
    )
    if expect_completed:
        section.check(
            "every job completed",
            statuses["completed"] == len(submitted),
            f"{statuses['completed']} completed, {statuses['failed']} failed",
        )
    section.check(
        "no job completed twice",
        not verdict.double_completions,
        f"{len(verdict.double_completions)} jobs with two completions",
    )
    without = verdict.completions_without_execution
    section.check(
        "every completion backed by a successful execution of its claim",
        not without,
        f"{len(without)} without" + (f", e.g. {without[0]}" if without else ""),
    )
    section.check(
        "every duplicate execution explained by a kill, the outage or a shutdown hand-back",
        not verdict.unexplained,
        f"{verdict.duplicates} duplicates, {len(verdict.unexplained)} unexplained"
        + (f": {'; '.join(verdict.unexplained[:3])}" if verdict.unexplained else ""),
    )
    section.check(
        "no lease expired under a live worker while the database was up",
        verdict.expiries["unexplained"] == 0,
        f"{verdict.expiries['unexplained']} such expiries",
    )
