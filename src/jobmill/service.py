"""JobService: every lifecycle operation, and the only place that decides a job's next state.

The service reads the transition table, computes what should change (retry or fail, backoff, lease
lengths) and asks the store for a compare-and-set. When a CAS loses a race (the job changed in between),
user-facing operations re-read and decide again; worker-side ones report that the lease is gone.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from jobmill.domain.admin import AuditEntry, AuditRecord
from jobmill.domain.job import Job, JobEvent, JobStatus, JsonObject, NewJob, uuid7
from jobmill.domain.ordering import PRIORITY_MAX, PRIORITY_MIN
from jobmill.domain.transitions import Transition, edge, transition_for
from jobmill.errors import Forbidden, IdempotencyConflict, InvalidTransition, JobNotFound, ValidationError
from jobmill.handlers import HandlerRegistry, check_name
from jobmill.store.base import (
    AuditListParams,
    ClaimHeld,
    Completion,
    EventListParams,
    JobCancelParams,
    JobClaimParams,
    JobCompleteManyParams,
    JobConfirmCancelParams,
    JobFailParams,
    JobFindCachedParams,
    JobGetParams,
    JobHeartbeatParams,
    JobInsertManyParams,
    JobInsertResult,
    JobListExpiredParams,
    JobListParams,
    JobQueuePositionParams,
    JobQueueStatsParams,
    JobRecoverParams,
    JobReprioritizeParams,
    JobRequeueParams,
    JobSetProgressParams,
    JobStatusManyParams,
    JobStore,
    Lease,
    QueueStats,
)

Clock = Callable[[], datetime]

DEFAULT_TENANT = "default"
MAX_PARAMS_BYTES = 256 * 1024
MAX_ATTEMPTS_LIMIT = 100
# How many CAS races a user operation retries before giving up (each retry re-reads the job).
CAS_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a user or admin operation: the principal's subject and whether it is an admin."""

    subject: str
    is_admin: bool = False


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base * 2^(n-1), capped, in [half, full] of that."""

    base_s: float = 1.0
    max_s: float = 300.0

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        nominal = min(self.max_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return nominal / 2 + rand() * nominal / 2


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    kind: str
    params: JsonObject = field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None
    run_after: datetime | None = None
    idempotency_key: str | None = None
    tenant: str = DEFAULT_TENANT
    principal: str | None = None
    inputs: JsonObject = field(default_factory=dict)


def _digest(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _input_hashes(inputs: JsonObject) -> list[tuple[str, str | None]]:
    return sorted(
        (name, meta.get("sha256") if isinstance(meta, dict) else None) for name, meta in inputs.items()
    )


def _snapshot(job: Job) -> JsonObject:
    """What the audit log keeps of a job before an admin action."""
    return {"status": job.status.value, "priority": job.priority}


def error_info(
    exc: BaseException, *, error_type: str | None = None, traceback: str | None = None
) -> JsonObject:
    info: JsonObject = {"type": error_type or type(exc).__name__, "message": str(exc) or type(exc).__name__}
    if traceback:
        info["traceback"] = traceback
    return info


class JobService:
    def __init__(
        self,
        store: JobStore,
        *,
        registry: HandlerRegistry | None = None,
        clock: Clock = utc_now,
        lease_s: float = 30.0,
        retry: RetryPolicy | None = None,
        cache_ttl_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.lease_s = lease_s
        self.retry = retry or RetryPolicy()
        self.cache_ttl_s = cache_ttl_s

    # -- submission -----------------------------------------------------------------------------------

    def _new_job(self, request: SubmitRequest, now: datetime) -> NewJob:
        check_name("kind", request.kind)
        spec = self.registry.get(request.kind) if self.registry is not None else None
        queue = check_name("queue", request.queue or (spec.queue if spec else "default"))
        if not isinstance(request.params, dict):
            raise ValidationError("params must be a JSON object")
        try:
            encoded = json.dumps(request.params, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"params are not JSON-serialisable: {exc}") from exc
        size = len(encoded)
        # PostgreSQL's jsonb cannot hold NUL characters; refuse them everywhere, so backends agree.
        if "\\u0000" in encoded:
            raise ValidationError("params must not contain NUL characters (\\u0000)")
        if size > MAX_PARAMS_BYTES:
            raise ValidationError(f"params are {size} bytes; the limit is {MAX_PARAMS_BYTES}")
        if not PRIORITY_MIN <= request.priority <= PRIORITY_MAX:
            raise ValidationError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
        max_attempts = (
            request.max_attempts if request.max_attempts is not None else (spec.max_attempts if spec else 1)
        )
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValidationError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
        timeout_s = request.timeout_s if request.timeout_s is not None else (spec.timeout_s if spec else None)
        if timeout_s is not None and timeout_s <= 0:
            raise ValidationError("timeout_s must be > 0")
        if request.idempotency_key is not None and not 1 <= len(request.idempotency_key) <= 255:
            raise ValidationError("idempotency_key must be 1-255 characters")
        run_after = request.run_after or now
        # Two submissions are "the same request" when everything that shapes the job is the same.
        request_hash = _digest(
            [
                request.kind,
                request.params,
                queue,
                request.priority,
                max_attempts,
                timeout_s,
                request.run_after.isoformat() if request.run_after else None,
                _input_hashes(request.inputs),
            ]
        )
        cacheable = spec is not None and spec.cacheable
        cache_key = (
            _digest([request.kind, request.params, _input_hashes(request.inputs)]) if cacheable else None
        )
        return NewJob(
            id=uuid7(),
            tenant=request.tenant,
            principal=request.principal,
            kind=request.kind,
            queue=queue,
            priority=request.priority,
            params=request.params,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            run_after=run_after,
            idempotency_key=request.idempotency_key,
            inputs=request.inputs,
            request_hash=request_hash,
            cache_key=cache_key,
        )

    def validate(self, request: SubmitRequest) -> None:
        """Raise what submit would raise for this request, without creating anything."""
        self._new_job(request, self.clock())

    def submit(self, request: SubmitRequest) -> JobInsertResult:
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[SubmitRequest]) -> list[JobInsertResult]:
        """Create jobs in one statement. A known idempotency key returns the earlier job (created=False),
        or raises IdempotencyConflict when the request differs; a cacheable kind whose result is known
        gets a job created already completed, with `cached` set."""
        now = self.clock()
        jobs = [self._with_cached_result(self._new_job(r, now), now) for r in requests]
        results = self.store.job_insert_many(JobInsertManyParams(jobs, now))
        for new, result in zip(jobs, results, strict=True):
            earlier = result.job
            if not result.created and earlier.request_hash not in (None, new.request_hash):
                assert new.idempotency_key is not None
                raise IdempotencyConflict(new.idempotency_key, earlier.id)
        return results

    def _with_cached_result(self, new: NewJob, now: datetime) -> NewJob:
        if new.cache_key is None or self.cache_ttl_s <= 0:
            return new
        cached = self.store.job_find_cached(
            JobFindCachedParams(
                new.tenant, new.kind, new.cache_key, now - timedelta(seconds=self.cache_ttl_s)
            )
        )
        return new if cached is None else replace(new, cached_from=cached)

    # -- reading --------------------------------------------------------------------------------------

    def get(self, job_id: UUID, tenant: str | None = None) -> Job:
        job = self.store.job_get(JobGetParams(job_id, tenant))
        if job is None:
            raise JobNotFound(job_id)
        return job

    def queue_position(self, job_id: UUID, tenant: str | None = None) -> int | None:
        return self.store.job_queue_position(JobQueuePositionParams(job_id, self.clock(), tenant))

    def list_jobs(self, params: JobListParams) -> list[Job]:
        return self.store.job_list(params)

    def events(self, job_id: UUID, tenant: str | None = None, after_seq: int = 0) -> list[JobEvent]:
        return self.store.event_list(EventListParams(job_id=job_id, tenant=tenant, after_seq=after_seq))

    def queue_stats(self, tenant: str | None, window_s: float = 3600.0) -> list[QueueStats]:
        since = self.clock() - timedelta(seconds=window_s)
        return self.store.job_queue_stats(JobQueueStatsParams(tenant, since))

    def audit_log(self, tenant: str, before_id: int | None = None, limit: int = 100) -> list[AuditRecord]:
        return self.store.audit_list(AuditListParams(tenant, before_id, limit))

    # -- worker side ----------------------------------------------------------------------------------

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, on_held: ClaimHeld | None = None
    ) -> list[Job]:
        """Up to `limit` runnable jobs for this worker, running under a new lease. With `on_held`, the
        caller may start them before the claim is durable (see JobStore.job_claim)."""
        now = self.clock()
        return self.store.job_claim(
            JobClaimParams(
                queues=queues,
                limit=limit,
                worker_id=worker_id,
                now=now,
                lease_expires_at=now + timedelta(seconds=self.lease_s),
                edge=edge(Transition.CLAIM),
            ),
            on_held,
        )

    def heartbeat(self, leases: Sequence[Lease]) -> dict[UUID, JobStatus]:
        now = self.clock()
        return self.store.job_heartbeat(
            JobHeartbeatParams(leases, now, now + timedelta(seconds=self.lease_s))
        )

    def statuses(self, job_ids: Sequence[UUID]) -> dict[UUID, JobStatus]:
        return self.store.job_status_many(JobStatusManyParams(job_ids)) if job_ids else {}

    def set_progress(
        self, lease: Lease, stage: str | None, progress: float | None, message: str | None
    ) -> bool:
        if progress is not None and not 0 <= progress <= 100:
            raise ValidationError(f"progress must be between 0 and 100, not {progress}")
        return self.store.job_set_progress(
            JobSetProgressParams(lease, self.clock(), stage, progress, message)
        )

    def complete_many(self, completions: Sequence[Completion]) -> list[UUID]:
        return self.store.job_complete_many(
            JobCompleteManyParams(completions, self.clock(), edge(Transition.COMPLETE))
        )

    def fail(self, job: Job, lease: Lease, error: JsonObject, *, retryable: bool = True) -> Job | None:
        """End a failed attempt: back to pending after a backoff while attempts remain, else failed."""
        now = self.clock()
        if retryable and job.attempts < job.max_attempts:
            delay = self.retry.delay_s(job.attempts)
            return self.store.job_fail(
                JobFailParams(lease, now, edge(Transition.RETRY), error, now + timedelta(seconds=delay))
            )
        return self.store.job_fail(JobFailParams(lease, now, edge(Transition.FAIL), error))

    def release(self, lease: Lease) -> Job | None:
        """Hand a running job back at shutdown; the interrupted attempt does not count."""
        now = self.clock()
        return self.store.job_fail(
            JobFailParams(lease, now, edge(Transition.RELEASE), None, now, refund_attempt=True)
        )

    def confirm_cancel(self, lease: Lease) -> Job | None:
        return self.store.job_confirm_cancel(
            JobConfirmCancelParams(lease, self.clock(), edge(Transition.CONFIRM_CANCEL))
        )

    def recover_expired(self, limit: int = 100) -> list[Job]:
        """The lease reaper: settle jobs whose worker stopped renewing its lease. Any worker may run it."""
        now = self.clock()
        settled: list[Job] = []
        for job in self.store.job_list_expired(JobListExpiredParams(now, limit)):
            if job.lease_token is None:
                continue
            lease = Lease(job.id, job.lease_token)
            error: JsonObject | None
            if job.status is JobStatus.CANCELLING:
                transition, error, run_after = Transition.EXPIRE_CANCELLING, None, None
            else:
                error = {"type": "lease_expired", "message": f"worker {job.lease_owner} stopped renewing"}
                if job.attempts < job.max_attempts:
                    transition, run_after = Transition.EXPIRE_RETRY, now
                else:
                    transition, run_after = Transition.EXPIRE_FAIL, None
            result = self.store.job_recover(
                JobRecoverParams(lease, job.status, now, edge(transition), error, run_after)
            )
            if result is not None:
                settled.append(result)
        return settled

    # -- user and admin side --------------------------------------------------------------------------

    def cancel(
        self,
        job_id: UUID,
        tenant: str | None = None,
        actor: Actor | None = None,
        *,
        admin_action: bool = False,
    ) -> Job:
        """Pending: cancelled at once. Running: cancelling (its worker stops it). Cancelling: unchanged.

        Users may cancel the jobs they submitted; admins any job of their tenant. An admin acting on
        another's job, or through the admin endpoint (`admin_action`), is written to the audit log.
        """
        if admin_action and (actor is None or not actor.is_admin):
            raise Forbidden("only admins may use the admin cancel")
        if not admin_action:
            # The common case in one write, with no read before it: a pending or running job of the
            # caller's own (or any job, for an operator without an actor) moves by whichever cancel edge
            # leaves its status. That write needs no audit (an admin cancelling their own job is not
            # audited either). Anything else (another's job, a job already cancelling or finished, an
            # unknown id) writes nothing here and takes the path below, which reads the job and answers.
            changed = self.store.job_cancel(
                JobCancelParams(
                    job_id,
                    tenant,
                    self.clock(),
                    (edge(Transition.CANCEL), edge(Transition.REQUEST_CANCEL)),
                    principal=None if actor is None else actor.subject,
                )
            )
            if changed is not None:
                return changed
        for _ in range(CAS_RETRIES):
            job = self.get(job_id, tenant)
            transition = self._cancel_transition(job, actor)
            if transition is None:
                return job  # already cancelling: nothing more to do
            audited = (
                actor is not None and actor.is_admin and (admin_action or job.principal != actor.subject)
            )
            audit = AuditEntry(actor.subject, "job.cancel", _snapshot(job)) if audited and actor else None
            changed = self.store.job_cancel(
                JobCancelParams(job_id, tenant, self.clock(), (edge(transition),), audit)
            )
            if changed is not None:
                return changed
        raise InvalidTransition(job_id, "cancel", self.get(job_id, tenant).status)

    def check_cancel(self, job_id: UUID, tenant: str | None, actor: Actor | None) -> Job:
        """Raise what cancel would raise now (not found, forbidden, terminal), without cancelling."""
        job = self.get(job_id, tenant)
        self._cancel_transition(job, actor)
        return job

    @staticmethod
    def _cancel_transition(job: Job, actor: Actor | None) -> Transition | None:
        if actor is not None and not actor.is_admin and job.principal != actor.subject:
            raise Forbidden("users may cancel only the jobs they submitted")
        if job.status is JobStatus.CANCELLING:
            return None
        return transition_for("cancel", job.id, job.status, Transition.CANCEL, Transition.REQUEST_CANCEL)

    def reprioritize(
        self, job_id: UUID, priority: int, tenant: str | None = None, actor: Actor | None = None
    ) -> tuple[Job, int | None]:
        """Change a pending job's priority (audited when an actor is given); returns the job and its
        new queue position."""
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValidationError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
        before = self.get(job_id, tenant)
        audit = AuditEntry(actor.subject, "job.reprioritize", _snapshot(before)) if actor else None
        changed = self.store.job_reprioritize(
            JobReprioritizeParams(job_id, tenant, priority, self.clock(), audit)
        )
        if changed is None:
            current = self.get(job_id, tenant)
            raise InvalidTransition(job_id, "change the priority of", current.status)
        return changed, self.queue_position(job_id, tenant)

    def requeue(self, job_id: UUID, tenant: str | None = None, actor: Actor | None = None) -> Job:
        """Admin retry: put a failed or cancelled job back in its queue with a fresh set of attempts."""
        for _ in range(CAS_RETRIES):
            job = self.get(job_id, tenant)
            transition = transition_for("retry", job_id, job.status, Transition.REQUEUE)
            audit = AuditEntry(actor.subject, "job.retry", _snapshot(job)) if actor else None
            changed = self.store.job_requeue(
                JobRequeueParams(
                    job_id, tenant, self.clock(), edge(transition), job.status, job.max_attempts, audit
                )
            )
            if changed is not None:
                return changed
        raise InvalidTransition(job_id, "retry", self.get(job_id, tenant).status)
