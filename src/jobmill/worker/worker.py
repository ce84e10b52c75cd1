"""The Worker: claims jobs, runs their handlers, renews leases, reaps expired ones, shuts down gracefully.

One asyncio loop per worker process. Store calls are blocking and run on a small thread pool, so the loop
stays free to react to wake-ups and cancels. Claims are batched (up to the free slots), completions are
buffered for a few milliseconds and written in one statement, and heartbeats renew every lease in one
statement; that keeps the commits per job, the real ceiling of a job queue, well below one.

How a running job ends, and what gets recorded:
    handler returns          -> complete (buffered batch)
    handler raises           -> retry with backoff, or failed when attempts are spent
    timeout                  -> process trees killed, failed (error type "timeout"), no retry
    cancel requested         -> handler cancelled, process trees killed, workdir removed, cancelled
    lease lost               -> handler cancelled, nothing recorded (the job belongs to someone else now)
    shutdown past deadline   -> handler cancelled, job handed back to pending, attempt not counted
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from jobmill.domain.job import Job, JobStatus, JsonObject
from jobmill.errors import JobmillError, StoreContention, StoreError, StoreUnavailable
from jobmill.handlers import HandlerRegistry, HandlerSpec
from jobmill.service import JobService, error_info
from jobmill.storage.base import BlobStore
from jobmill.store.base import Completion, Lease, Notification, Subscription
from jobmill.worker.context import JobCancelled, JobContext, SyncJobContext
from jobmill.worker.isolated import run_isolated
from jobmill.worker.tallies import WORKER_TALLIES, WorkerTallies

log = logging.getLogger("jobmill.worker")

P = ParamSpec("P")
T = TypeVar("T")

# Completions wait this long for company before they are written in one statement.
COMPLETION_FLUSH_S = 0.002
COMPLETION_BATCH = 200
# How long a batch write waits before each retry while the database is unavailable.
FLUSH_RETRY_S = (0.05, 0.25, 1.0)
# A busy worker waits this long for more free slots before claiming, to claim several jobs at once.
CLAIM_COALESCE_S = 0.002
# Claims a worker keeps in flight at once (each for its own share of the free slots).
CLAIMS_IN_FLIGHT = 3
# An idle SQLite worker checks this often whether another process committed (new work, a cancel).
CHANGE_POLL_S = 0.005


# What a worker listens for. Not "events": every claim and completion of every worker sends one, for the
# live streams of API nodes, and waking for each would only cost a busy worker (and the database) CPU.
WORKER_TOPICS = frozenset({"new_job", "cancel"})


class StopReason(Enum):
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"


@dataclass(eq=False)
class RunningJob:
    job: Job
    lease: Lease
    ctx: JobContext
    task: asyncio.Task[Any] | None = None  # set while the handler runs (and may be interrupted)
    stop_reason: StopReason | None = None
    finishing: bool = False  # the handler returned; its record is being written
    # The claim that started this job, while its commit may still be in flight: it resolves True once
    # the claim is durable, False if it failed. Until then nothing is written under the lease: a
    # statement would see the job as it was before the claim and be refused.
    claim: asyncio.Future[bool] | None = None


@dataclass(eq=False)
class ParkedClaim:
    """A claim an idle worker hands to the thread that receives its notifications (PostgreSQL's
    listener): on the next new_job there, that thread runs the claim itself, at once, instead of waking the
    event loop, which would hand the claim to a database thread (two thread hand-offs, ~0.3 ms of an idle
    queue's pickup). The claim task waits on `outcome`: the claimed jobs, the error, or None when the
    loop took the claim back unused (the poll interval passed, a stop)."""

    count: int
    early: EarlyStart
    outcome: asyncio.Future[list[Job] | BaseException | None]


class EarlyStart:
    """The jobs of one claim that start before the claim's commit returns (see Worker._claim)."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop, job_tasks: set[asyncio.Task[None]]):
        self.started: set[UUID] = set()  # loop side only
        self.committed: asyncio.Future[bool] = loop.create_future()
        self._worker = worker
        self._loop = loop
        self._job_tasks = job_tasks

    def on_held(self, jobs: list[Job]) -> None:
        # On the thread that runs the claim, before its commit returns: the handlers start while the
        # database flushes it. (The loop runs this before it sees the claim return: both are queued by
        # call_soon_threadsafe, this one first.)
        self._loop.call_soon_threadsafe(self._start, jobs)

    def _start(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.started.add(job.id)
            self._worker._start(job, self._job_tasks, self.committed)


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    lost: int = 0
    recovered: int = 0


@dataclass
class WorkerConfig:
    queues: Sequence[str] = ("default",)
    concurrency: int = 4
    poll_interval_s: float = 0.25
    lease_s: float = 30.0
    cancel_grace_s: float = 5.0
    shutdown_grace_s: float = 10.0
    workdir_root: Path = field(default_factory=lambda: Path("./var/work"))
    burst: bool = False
    claim_batch: int = 100


class Worker:
    def __init__(
        self,
        service: JobService,
        registry: HandlerRegistry,
        config: WorkerConfig | None = None,
        *,
        worker_id: str | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.blobs = blobs
        self.service = service
        self.registry = registry
        self.config = config or WorkerConfig()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = WorkerStats()
        self._running: dict[UUID, RunningJob] = {}
        self._db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jobmill-db")
        self._handler_pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.concurrency), thread_name_prefix="jobmill-handler"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._completions: list[tuple[Completion, RunningJob, float]] = []
        self._followups: set[asyncio.Task[None]] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._started = False
        self._change_counter: int | None = None
        self._workdir_root = os.fspath(self.config.workdir_root)
        self._reserved = 0  # slots promised to claims in flight
        self._claims: set[asyncio.Task[None]] = set()  # the claims in flight
        self._decide_now = False
        self._claims_max = CLAIMS_IN_FLIGHT
        self._queues_empty = False  # the last claim to return found fewer jobs than it asked for
        self._ran_dry = True  # the same, but kept when a wake-up clears _queues_empty: see _claim
        self._parked: ParkedClaim | None = None  # guarded by _parked_lock: see ParkedClaim
        self._parked_lock = threading.Lock()
        self._tallies = WorkerTallies()
        WORKER_TALLIES.track(self._tallies)

    # -- plumbing -------------------------------------------------------------------------------------

    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, lambda: fn(*args, **kwargs))

    def _on_notification(self, note: Notification) -> None:
        """Called from the store's listener thread (or inline on commit in this process)."""
        if self._is_new_work(note):
            with self._parked_lock:
                parked, self._parked = self._parked, None
            if parked is not None:
                self._run_parked(parked)
        if note.topic == "cancel" and note.job_id is not None:
            running = self._running.get(note.job_id)  # a dict read: atomic under the GIL
            if running is not None and not running.finishing:
                # The commands go down now, from this thread: waiting for the event loop to schedule the
                # cancel first would add its wake-up latency to every cancel. The loop still runs the
                # full stop (grace period, SIGKILL, recording) below.
                running.ctx.processes.terminate_now()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._handle_notification, note)

    def _is_new_work(self, note: Notification) -> bool:
        return note.topic == "new_job" and (note.queue is None or note.queue in self.config.queues)

    def _run_parked(self, parked: ParkedClaim) -> None:
        """The parked claim, on this (the listener's) thread. It blocks the listener for one claim, only
        while this worker is idle: nothing of it is running that a cancel could be waiting for."""
        outcome: list[Job] | BaseException
        try:
            outcome = self.service.claim(
                self.worker_id, self.config.queues, parked.count, parked.early.on_held
            )
        except Exception as exc:  # handed to the claim task, which deals with it as with its own call
            outcome = exc
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(_settle, parked.outcome, outcome)

    def _unpark(self, parked: ParkedClaim, *, claim_instead: bool) -> None:  # (on the loop)
        """Take a parked claim back, unless the listener has it already (then its outcome is coming)."""
        with self._parked_lock:
            if self._parked is not parked:
                return
            self._parked = None
        _settle(parked.outcome, None if claim_instead else [])

    def _handle_notification(self, note: Notification) -> None:
        if self._is_new_work(note):
            if self._wake is not None:
                self._wake.set()
        elif note.topic == "cancel" and note.job_id is not None:
            running = self._running.get(note.job_id)
            if running is not None:
                self._stop_job(running, StopReason.CANCEL)

    def _stop_job(self, running: RunningJob, reason: StopReason) -> None:
        if running.stop_reason is not None or running.finishing:
            return
        running.stop_reason = reason
        running.ctx.mark_cancelled()
        if running.task is not None:
            running.task.cancel()

    @property
    def running_jobs(self) -> list[UUID]:
        return list(self._running)

    # -- main loop ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful shutdown: stop claiming; running jobs get the shutdown deadline. Safe to call twice."""
        if self._stopping is not None:
            self._stopping.set()
        if self._wake is not None:
            self._wake.set()

    def force_stop(self) -> None:
        """Stop now: running jobs are stopped and handed back to pending (attempt not counted)."""
        self.request_stop()
        for running in list(self._running.values()):
            self._stop_job(running, StopReason.SHUTDOWN)

    async def run(self) -> WorkerStats:
        if self._started:
            raise RuntimeError("a Worker runs once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        subscription: Subscription = await self._db(
            self.service.store.notification_subscribe, self._on_notification, WORKER_TOPICS
        )
        self._change_counter = await self._db(self.service.store.change_counter)
        # A store with a change counter (SQLite) has one writer at a time: overlapping claims would only
        # queue on its lock, across processes too, and that contention costs more than it saves.
        self._claims_max = 1 if self._change_counter is not None else CLAIMS_IN_FLIGHT
        try:
            swept = await self._db(self._sweep_workdirs)
            if swept:
                log.info("removed %d workdirs left by earlier attempts", swept)
        except StoreError as exc:
            log.warning("could not sweep old workdirs: %s", exc)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="jobmill-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="jobmill-reaper"),
        ]
        job_tasks: set[asyncio.Task[None]] = set()
        log.info("worker %s serving queues %s", self.worker_id, ",".join(self.config.queues))
        try:
            await self._claim_loop(job_tasks)
            await self._drain(job_tasks)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._flush_completions()
            while self._followups:
                await asyncio.gather(*list(self._followups), return_exceptions=True)
            subscription.close()
            WORKER_TALLIES.retire(self._tallies)
            self._db_pool.shutdown(wait=True)
            self._handler_pool.shutdown(wait=False, cancel_futures=True)
        return self.stats

    async def _claim_loop(self, job_tasks: set[asyncio.Task[None]]) -> None:
        """Claim jobs for free slots until stopped (or, in burst mode, until the queues are empty).

        Up to CLAIMS_IN_FLIGHT claims run at once, each for its own share of the free slots: a claim's
        time is mostly the database's commit (an fsync), so overlapping them multiplies what one worker
        can take in, while each claim still serves many jobs with one commit.
        """
        assert self._wake is not None and self._stopping is not None
        low_water = max(1, min(self.config.claim_batch, self.config.concurrency // 4))
        in_flight = self._claims
        while not self._stopping.is_set():
            free = self._free_slots()
            if 0 < free < low_water and (self._running or in_flight):
                # Busy: let a few more slots free up, so that one claim (one commit) serves several
                # jobs. An idle worker claims at once, so pickup latency is not affected.
                await asyncio.sleep(CLAIM_COALESCE_S)
                free = self._free_slots()
            # Cleared on every round, even with no free slot: a wake-up that came while all slots were
            # busy (a new_job notification, a recovered lease) would otherwise stay set, and waiting on
            # a set event returns without yielding: the loop would spin and starve every job and timer.
            # A slot that frees, or a claim that returns, sets it again, so nothing is missed.
            self._wake.clear()
            if free > 0 and len(in_flight) < self._claims_max and not self._queues_empty:
                count = min(free, self.config.claim_batch)
                self._reserved += count
                in_flight.add(asyncio.create_task(self._claim(count, job_tasks)))
                continue  # room for another claim beside it?
            if self.config.burst and self._queues_empty and not in_flight and not self._running:
                return
            parked: ParkedClaim | None = None
            if (
                self._change_counter is None  # notifications come on a thread of their own
                and self._queues_empty
                and not in_flight
                and free == self.config.concurrency
            ):
                count = min(free, self.config.claim_batch)
                self._reserved += count
                loop = asyncio.get_running_loop()
                parked = ParkedClaim(count, EarlyStart(self, loop, job_tasks), loop.create_future())
                with self._parked_lock:
                    self._parked = parked
                in_flight.add(asyncio.create_task(self._claim(count, job_tasks, parked)))
            await self._sleep_or_wake(self.config.poll_interval_s)
            if parked is not None:
                # Woken: a notification (the listener may have run the claim), the poll interval, a stop.
                # Unused, the claim runs now as any other would, which is the poll; on a stop, not at all.
                self._unpark(parked, claim_instead=not self._stopping.is_set())
            if self._decide_now:
                self._decide_now = False  # woken by a short claim: decide first (stop, or park)
            elif not in_flight:
                # Woken (a notification, a free slot) or the poll interval passed: look again, once.
                self._queues_empty = False
        if in_flight:
            await asyncio.gather(*in_flight)  # their jobs have started: shutdown handles them like the rest

    def _free_slots(self) -> int:
        return self.config.concurrency - len(self._running) - self._reserved

    async def _claim(
        self, count: int, job_tasks: set[asyncio.Task[None]], parked: ParkedClaim | None = None
    ) -> None:
        """One claim of up to `count` jobs for slots reserved by the claim loop; with `parked`, the one
        the listener thread may run (see ParkedClaim)."""
        assert self._wake is not None and self._loop is not None
        # Only a worker that is idle because its queues ran dry starts jobs before its claim commits:
        # this claim is the pickup of a new job, whose latency includes the commit's flush. A worker
        # working through a backlog takes the single-round-trip claim (no BEGIN and COMMIT of its own,
        # no per-claim future): its claims overlap each other and the jobs, and throughput counts there.
        early = parked.early if parked is not None else None
        if early is None and self._ran_dry and not self._running and len(self._claims) <= 1:
            early = EarlyStart(self, self._loop, job_tasks)
        on_held = early.on_held if early is not None else None
        try:
            try:
                outcome = None if parked is None else await parked.outcome
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is None:
                    outcome = await self._db(
                        self.service.claim, self.worker_id, self.config.queues, count, on_held
                    )
                claimed = outcome
            except StoreError as exc:
                log.warning("claim failed, retrying: %s", exc)
                # Jobs started from a claim that did not commit are not this worker's: stop them, and
                # write nothing for them.
                if early is not None:
                    early.committed.set_result(False)
                for job_id in early.started if early is not None else ():
                    if (running := self._running.get(job_id)) is not None:
                        self._stop_job(running, StopReason.LEASE_LOST)
                # The reservation is held meanwhile, which keeps this worker from hammering a database
                # that is away.
                await asyncio.sleep(self.config.poll_interval_s * 4)
                self._wake.set()
                return
            # Fewer than asked: the queues were empty a moment ago (burst mode stops on that, once
            # nothing else is in flight or running).
            self._queues_empty = self._ran_dry = len(claimed) < count
            if early is not None:
                early.committed.set_result(True)
            for job in claimed:
                if early is None or job.id not in early.started:
                    self._start(job, job_tasks)
            if not self._queues_empty:
                self._wake.set()  # more work is likely (a full batch): claim again now
            elif self.config.burst:
                self._decide_now = True  # a draining worker may be done: let the loop decide now
                self._wake.set()
            elif self._change_counter is None:
                # A serving worker waits for news instead of asking again at once; but an idle one parks
                # a claim for its listener first (see ParkedClaim): let the loop decide now.
                self._decide_now = True
                self._wake.set()
        finally:
            if early is not None:
                # Ended by anything but success or StoreError (a bug): its early jobs must not wait forever.
                _settle(early.committed, False)
            self._reserved -= count
            # Removed here, not by a done callback: the loop, woken above, must see it gone.
            self._claims.discard(asyncio.current_task())

    async def _sleep_or_wake(self, seconds: float) -> None:
        """Wait for a wake-up (a notification, a free slot) or `seconds`; on a backend without
        cross-process notifications, also end the wait as soon as another process commits."""
        assert self._wake is not None
        if self._change_counter is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
            return
        deadline = time.monotonic() + seconds
        start = self._change_counter
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(CHANGE_POLL_S, left)):
                    await self._wake.wait()
                    return
            self._change_counter = await self._db(self.service.store.change_counter)
            if self._change_counter != start:
                return

    def _start(
        self, job: Job, job_tasks: set[asyncio.Task[None]], claim: asyncio.Future[bool] | None = None
    ) -> None:
        assert job.lease_token is not None
        if claim is not None and claim.done():
            claim = None  # committed already: nothing to wait for
        self.stats.claimed += 1
        if job.started_at is not None:
            runnable_since = max(job.created_at, job.run_after)
            self._tallies.picked_up(job.queue, max(0.0, (job.started_at - runnable_since).total_seconds()))
        lease = Lease(job.id, job.lease_token)
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            params=job.params,
            attempt=job.attempts,
            workdir=os.path.join(self._workdir_root, workdir_name(job.id, job.attempts)),
            sink=_StoreSink(self, lease, claim),
            cancel_grace_s=self.config.cancel_grace_s,
            inputs=job.inputs,
            tenant=job.tenant,
            blobs=self.blobs,
        )
        running = RunningJob(job, lease, ctx, claim=claim)
        self._running[job.id] = running
        # One task per job: the handler runs inside it (see _invoke), so a no-op job costs one task.
        task = asyncio.create_task(self._execute(running))
        job_tasks.add(task)
        task.add_done_callback(job_tasks.discard)

    async def _drain(self, job_tasks: set[asyncio.Task[None]]) -> None:
        """Shutdown: give running jobs the deadline, then hand the rest back to pending."""
        if not job_tasks:
            return
        log.info(
            "worker %s stopping: waiting up to %ss for %d jobs",
            self.worker_id,
            self.config.shutdown_grace_s,
            len(job_tasks),
        )
        _, pending = await asyncio.wait(set(job_tasks), timeout=self.config.shutdown_grace_s)
        if pending:
            for running in list(self._running.values()):
                self._stop_job(running, StopReason.SHUTDOWN)
            await asyncio.wait(pending)

    # -- one job --------------------------------------------------------------------------------------

    async def _execute(self, running: RunningJob) -> None:
        job = running.job
        started = time.monotonic()
        log.debug("job %s (%s) started, attempt %d", job.id, job.kind, job.attempts)
        try:
            try:
                outcome = await self._invoke(running)
            finally:
                # The process trees and the workdir go before anything is recorded: a job reported
                # cancelled, failed or completed has nothing of it left running or on disk.
                if len(running.ctx.processes):
                    await running.ctx.processes.kill_all(self.config.cancel_grace_s)
                if running.ctx.workdir_created:
                    await self._db(shutil.rmtree, running.ctx.workdir, True)
                if job.attempts > 1:
                    # Earlier attempts of this job were on a worker that died or lost the lease: what
                    # they left here is nobody's now.
                    await self._db(self._remove_earlier_workdirs, job)
                # The handler is done: its slot is free now, so the next claim overlaps the write of
                # this outcome instead of waiting for it (claims and completions pipeline).
                self._release_slot(job.id)
            if running.claim is not None and not await claim_committed(running.claim):
                outcome = "stopped", StopReason.LEASE_LOST  # the job never was this worker's
            run_s = time.monotonic() - started
            if outcome[0] == "ok":
                bad = _not_json(outcome[1])
                if bad is None:
                    # The job's task ends here; the batch write settles it (see _flush_completions).
                    self._queue_completion(running, outcome[1], run_s)
                    return
                outcome = "error", (error_info(bad, error_type="bad_result"), False)
            await self._record(running, outcome)
            outcome_name = outcome[1].value if outcome[0] == "stopped" else outcome[0]
            self._tallies.job_finished(job.queue, job.kind, outcome_name, run_s)
            log.debug("job %s (%s) ended: %s after %.3fs", job.id, job.kind, outcome_name, run_s)
        except Exception:
            log.exception("worker failed while running job %s; its lease will expire", job.id)
        finally:
            self._release_slot(job.id)

    def _remove_earlier_workdirs(self, job: Job) -> None:
        for attempt in range(1, job.attempts):
            shutil.rmtree(os.path.join(self._workdir_root, workdir_name(job.id, attempt)), True)

    def _sweep_workdirs(self) -> int:
        """At start: remove the workdirs under the root that no live attempt owns. Workers of one host
        may share the root, so a folder stays while its job is running that very attempt."""
        removed = 0
        try:
            names = os.listdir(self._workdir_root)
        except FileNotFoundError:
            return 0
        for name in names:
            parsed = parse_workdir_name(name)
            if parsed is None:
                continue
            job_id, attempt = parsed
            try:
                job: Job | None = self.service.get(job_id)
            except JobmillError:
                job = None
            live = (
                job is not None
                and job.status in (JobStatus.RUNNING, JobStatus.CANCELLING)
                and job.attempts == attempt
            )
            if not live:
                shutil.rmtree(os.path.join(self._workdir_root, name), True)
                removed += 1
        return removed

    def _release_slot(self, job_id: UUID) -> None:
        if self._running.pop(job_id, None) is not None and self._wake is not None:
            self._wake.set()

    async def _invoke(self, running: RunningJob) -> tuple[str, Any]:
        """Run the handler; returns ("ok", result) or ("error", (info, retryable)) or ("stopped", reason).

        The handler runs in this very task (no task of its own: that would double the scheduling cost of a
        short job). While it runs, `running.task` is this task, and _stop_job cancels it; the
        cancellation is absorbed here, once the stop reason says it was ours.
        """
        job = running.job
        try:
            spec = self.registry.get(job.kind)
        except JobmillError as exc:
            return "error", (error_info(exc, error_type="unknown_kind"), False)
        early = running.stop_reason  # (a local: a check of the attribute would narrow it for mypy)
        if early is not None:  # cancelled while we were setting up
            return "stopped", early
        task = asyncio.current_task()
        assert task is not None
        running.task = task
        deadline: asyncio.Timeout | None = None
        try:
            if job.timeout_s is None:
                result = await self._call_handler(spec, running)
            else:
                async with asyncio.timeout(job.timeout_s) as deadline:
                    result = await self._call_handler(spec, running)
        except TimeoutError as exc:
            if deadline is None or not deadline.expired():  # the handler itself raised TimeoutError
                return "error", (describe_error(exc), True)
            running.stop_reason = running.stop_reason or StopReason.TIMEOUT
            running.ctx.mark_cancelled()
            return "stopped", running.stop_reason
        except (asyncio.CancelledError, JobCancelled):
            if running.stop_reason is None:
                raise  # not ours: the worker itself is being torn down
            task.uncancel()  # our cancel is handled; later awaits of this task must not see it again
            return "stopped", running.stop_reason
        except Exception as exc:
            if running.stop_reason is not None:
                return "stopped", running.stop_reason
            return "error", (describe_error(exc), True)
        finally:
            running.task = None  # the handler is over: nothing left here for _stop_job to interrupt
        if running.stop_reason is not None:
            # Stopped just as the handler returned: the cancel request is still pending on this task.
            task.uncancel()
            return "stopped", running.stop_reason
        running.finishing = True
        return "ok", result

    async def _call_handler(self, spec: HandlerSpec, running: RunningJob) -> Any:
        ctx = running.ctx
        if spec.isolation == "process":
            return await run_isolated(spec, running.job, ctx)
        if spec.is_async:
            return await spec.fn(ctx)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._handler_pool, spec.fn, SyncJobContext(ctx, loop))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # A thread cannot be killed: its child processes are (via the cancel event), and it gets the
            # grace period to notice `ctx.cancelled` and return before the job is recorded as stopped.
            ctx.mark_cancelled()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(future), self.config.cancel_grace_s)
            raise

    async def _record(self, running: RunningJob, outcome: tuple[str, Any]) -> None:
        """Write an outcome other than success. The attempt did not complete, so nothing refers to the
        outputs it published: they are deleted."""
        try:
            await self._record_outcome(running, outcome)
        finally:
            if running.ctx.outputs:
                await running.ctx.discard_outputs()

    async def _record_outcome(self, running: RunningJob, outcome: tuple[str, Any]) -> None:
        job, lease = running.job, running.lease
        kind, value = outcome
        if kind == "error":
            info, retryable = value
            updated = await self._db(self.service.fail, job, lease, info, retryable=retryable)
            if updated is None:
                # The job may be cancelling (cancel raced the failure): finish the cancel.
                await self._confirm_cancel_or_lost(lease)
            elif updated.status is JobStatus.PENDING:
                self.stats.retried += 1
            else:
                self.stats.failed += 1
            return
        reason: StopReason = value
        if reason is StopReason.CANCEL:
            if await self._db(self.service.confirm_cancel, lease) is not None:
                self.stats.cancelled += 1
        elif reason is StopReason.TIMEOUT:
            info = {"type": "timeout", "message": f"the job ran longer than its timeout of {job.timeout_s}s"}
            if await self._db(self.service.fail, job, lease, info, retryable=False) is not None:
                self.stats.failed += 1
            elif await self._db(self.service.confirm_cancel, lease) is not None:
                self.stats.cancelled += 1
        elif reason is StopReason.SHUTDOWN:
            if await self._db(self.service.release, lease) is not None:
                self.stats.released += 1
            elif await self._db(self.service.confirm_cancel, lease) is not None:
                self.stats.cancelled += 1
        else:
            self.stats.lost += 1

    async def _confirm_cancel_or_lost(self, lease: Lease) -> bool:
        """After a write was refused: finish the cancel that raced it (True), or count the job as lost to
        this worker, its lease gone to another."""
        if await self._db(self.service.confirm_cancel, lease) is not None:
            self.stats.cancelled += 1
            return True
        self.stats.lost += 1
        return False

    # -- buffered completions -------------------------------------------------------------------------

    def _queue_completion(self, running: RunningJob, result: Any, run_s: float) -> None:
        """Add a finished job to the next batch write: one statement for up to COMPLETION_BATCH jobs,
        written when the batch is full or COMPLETION_FLUSH_S after its first job, whichever comes first."""
        completion = Completion(running.lease, result, dict(running.ctx.outputs) or None)
        self._completions.append((completion, running, run_s))
        if len(self._completions) >= COMPLETION_BATCH:
            self._spawn(self._flush_completions())
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(
                COMPLETION_FLUSH_S, lambda: self._spawn(self._flush_completions())
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping beside the jobs; shutdown waits for it (see run)."""
        task = asyncio.create_task(work)
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    async def _flush_completions(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._completions = self._completions, []
        if not batch:
            return
        done = await self._write_completions([c for c, _, _ in batch])
        for completion, running, run_s in batch:
            job = running.job
            if completion.lease.job_id in done:
                self.stats.completed += 1
                self._tallies.job_finished(job.queue, job.kind, "ok", run_s)
            else:
                self._spawn(self._settle_not_completed(running, run_s))

    async def _write_completions(self, completions: list[Completion]) -> set[UUID]:
        """The batch write, retried while the database is briefly away (a restart, a dropped connection)
        or after losing a deadlock (with a heartbeat of the same rows). Safe: each row is written only
        under its current lease. If it still fails, the jobs stay running under leases nobody renews;
        they expire and the jobs run again."""
        for delay in (*FLUSH_RETRY_S, None):
            try:
                return set(await self._db(self.service.complete_many, completions))
            except (StoreUnavailable, StoreContention) as exc:
                if delay is None:
                    log.warning("writing %d completions failed: %s", len(completions), exc)
                    return set()
                log.info("writing %d completions: %s; retrying in %ss", len(completions), exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:
                log.warning("writing %d completions failed: %s", len(completions), exc)
                return set()
        return set()

    async def _settle_not_completed(self, running: RunningJob, run_s: float) -> None:
        """The handler returned, but the completion was refused: the job went cancelling meanwhile (the
        cancel is confirmed now), or the lease is gone (someone else owns the job). Either way this
        attempt's outputs belong to nobody."""
        job = running.job
        outcome = "lease_lost"
        try:
            if await self._confirm_cancel_or_lost(running.lease):
                outcome = StopReason.CANCEL.value
        except StoreError as exc:
            log.warning("confirming the cancel of job %s failed; its lease will expire: %s", job.id, exc)
        finally:
            if running.ctx.outputs:
                await running.ctx.discard_outputs()
        self._tallies.job_finished(job.queue, job.kind, outcome, run_s)

    # -- leases ---------------------------------------------------------------------------------------

    @property
    def heartbeat_interval_s(self) -> float:
        # Often enough to keep leases (a third of their length) and to notice cancels within the poll
        # interval on backends without cross-process notifications.
        return min(self.config.lease_s / 3, self.config.poll_interval_s)

    async def _heartbeat_loop(self) -> None:
        """Renew leases and learn of cancels. With a cheap change signal (SQLite), leases are renewed
        every lease/3 and cancels are noticed by a read as soon as another process commits; otherwise
        (PostgreSQL, where NOTIFY brings cancels) the heartbeat itself runs every poll interval."""
        if self._change_counter is None:
            while True:
                await asyncio.sleep(self.heartbeat_interval_s)
                await self._renew_leases()
        renewed_at = time.monotonic()
        seen: int | None = self._change_counter
        while True:
            await asyncio.sleep(CHANGE_POLL_S * 2)
            active = [r for r in self._running.values() if not r.finishing]
            if not active:
                continue
            if time.monotonic() - renewed_at >= self.config.lease_s / 3:
                await self._renew_leases()
                renewed_at = time.monotonic()
                continue
            try:
                counter = await self._db(self.service.store.change_counter)
                if counter == seen:
                    continue
                seen = counter
                statuses = await self._db(self.service.statuses, [r.job.id for r in active])
            except StoreError as exc:
                log.warning("checking for cancels failed: %s", exc)
                continue
            for running in active:
                if statuses.get(running.job.id) is JobStatus.CANCELLING:
                    self._stop_job(running, StopReason.CANCEL)

    async def _renew_leases(self) -> None:
        # (A lease whose claim is still committing is fresh, and a heartbeat would not find it yet.)
        active = [
            r for r in self._running.values() if not r.finishing and (r.claim is None or r.claim.done())
        ]
        if not active:
            return
        try:
            held = await self._db(self.service.heartbeat, [r.lease for r in active])
        except StoreError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        for running in active:
            status = held.get(running.job.id)
            if status is None:
                if not running.finishing and running.job.id in self._running:
                    log.warning("lost the lease on job %s", running.job.id)
                    self._stop_job(running, StopReason.LEASE_LOST)
            elif status is JobStatus.CANCELLING:
                self._stop_job(running, StopReason.CANCEL)

    async def _reaper_loop(self) -> None:
        interval = max(0.05, min(self.config.lease_s / 2, 5.0))
        while True:
            try:
                recovered = await self._db(self.service.recover_expired)
                self.stats.recovered += len(recovered)
                if any(j.status is JobStatus.PENDING for j in recovered) and self._wake is not None:
                    self._wake.set()
            except StoreError as exc:
                log.warning("lease reaper failed: %s", exc)
            await asyncio.sleep(interval)


async def claim_committed(claim: asyncio.Future[bool] | None) -> bool:
    """Wait until the claim of a job that started before its commit returned is durable: True, or it
    failed: False. Shielded: a job stopped meanwhile must not cancel the claim's future for its peers."""
    return True if claim is None else await asyncio.shield(claim)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    """Give a future its result unless it has one (on the loop)."""
    if not future.done():
        future.set_result(value)


def workdir_name(job_id: UUID, attempt: int) -> str:
    """One folder per attempt: a worker whose lease expired (paused, partitioned) must not share, or
    delete, the folder of the attempt that replaced it."""
    return f"{job_id}.{attempt}"


def parse_workdir_name(name: str) -> tuple[UUID, int] | None:
    head, dot, tail = name.rpartition(".")
    if not dot or not tail.isdigit():
        return None
    try:
        return UUID(head), int(tail)
    except ValueError:
        return None


def _not_json(value: Any) -> Exception | None:
    """Why `value` cannot be a job's result (None if it can): checked per job, before the batch write,
    so that one bad result fails its own job and not the whole batch. NaN and infinities are refused
    too: JSON has no such numbers and PostgreSQL's jsonb would reject the statement."""
    if value is None or isinstance(value, (str, int, bool)):
        return None
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return exc
    return None


def describe_error(exc: BaseException | None) -> JsonObject:
    """The `error` recorded for a failed attempt: type, message and (for admins) the traceback."""
    assert exc is not None
    preset = getattr(exc, "error_info", None)
    if isinstance(preset, dict):  # raised on behalf of a handler in a child process
        return preset
    return error_info(exc, traceback="".join(traceback.format_exception(exc)))


class _StoreSink:
    """Progress of an in-worker handler goes straight to the store, under the job's lease."""

    def __init__(self, worker: Worker, lease: Lease, claim: asyncio.Future[bool] | None) -> None:
        self._worker = worker
        self._lease = lease
        self._claim = claim

    async def report(self, stage: str | None, progress: float | None, message: str | None) -> None:
        if not await claim_committed(self._claim):
            return  # the claim failed: the job is being stopped, and the lease never held
        await self._worker._db(self._worker.service.set_progress, self._lease, stage, progress, message)
