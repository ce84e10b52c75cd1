"""The JobStore protocol: the one surface through which jobmill speaks to a database.

One method per operation, named noun_verb, each taking one params object. Every method that changes a
job's status receives the allowed `sources` and the `target` from the transition table and applies them
as a compare-and-set; writes made by a worker also carry its lease token, so a worker whose lease expired
(and whose job went to another worker) cannot overwrite the new owner's work. Methods that serve users
take a `tenant` and scope the query by it; `tenant=None` is for workers and operators only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from jobmill.domain.admin import ApiKeyRecord, AuditEntry, AuditRecord
from jobmill.domain.job import Job, JobEvent, JobStatus, JsonObject, NewJob
from jobmill.domain.transitions import Edge


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: UUID
    token: UUID


@dataclass(frozen=True, slots=True)
class JobInsertManyParams:
    jobs: Sequence[NewJob]
    now: datetime


@dataclass(frozen=True, slots=True)
class JobInsertResult:
    job: Job
    created: bool  # False: an earlier job with the same (tenant, idempotency_key) was returned


@dataclass(frozen=True, slots=True)
class JobGetParams:
    job_id: UUID
    tenant: str | None = None


class WouldBlock(Exception):
    """A read asked not to wait (`wait=False`) that could only be answered by waiting: for the connection
    another thread is using, for a database lock, or for the network. Ask again with wait=True."""


@dataclass(frozen=True, slots=True)
class JobGetManyByApiKeyParams:
    key_id: str
    job_ids: Sequence[UUID]
    now: datetime  # for the queue positions of pending jobs
    # False: answer at once or raise WouldBlock, so that an event loop may make the call itself (SQLite,
    # when no other thread holds its connection); PostgreSQL, which waits for the network, always raises.
    wait: bool = True


@dataclass(frozen=True, slots=True)
class ApiKeyJobs:
    """An API key and, in that key's tenant, jobs: what `job_get_many_by_api_key` read."""

    key: ApiKeyRecord | None  # None: no key has this id (and then no jobs)
    jobs: Mapping[UUID, Job]  # those of the ids that are jobs of the key's tenant
    positions: Mapping[UUID, int]  # the queue positions of those that are pending (as job_queue_position)


@dataclass(frozen=True, slots=True)
class JobListParams:
    tenant: str | None = None
    statuses: Sequence[JobStatus] = ()
    kind: str | None = None
    queue: str | None = None
    before_seq: int | None = None  # cursor: only jobs submitted before this one (newest first)
    limit: int = 50


@dataclass(frozen=True, slots=True)
class JobClaimParams:
    queues: Sequence[str]
    limit: int
    worker_id: str
    now: datetime
    lease_expires_at: datetime
    edge: Edge


# Called with the jobs of a claim once they are held (see JobStore.job_claim).
ClaimHeld = Callable[[list[Job]], None]


@dataclass(frozen=True, slots=True)
class JobHeartbeatParams:
    leases: Sequence[Lease]
    now: datetime
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class JobStatusManyParams:
    job_ids: Sequence[UUID]


@dataclass(frozen=True, slots=True)
class JobSetProgressParams:
    lease: Lease
    now: datetime
    stage: str | None
    progress: float | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Completion:
    lease: Lease
    result: Any
    outputs: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class JobCompleteManyParams:
    completions: Sequence[Completion]
    now: datetime
    edge: Edge


@dataclass(frozen=True, slots=True)
class JobFailParams:
    """A worker-side end of an attempt: retry later, fail for good, or hand back at shutdown."""

    lease: Lease
    now: datetime
    edge: Edge
    error: JsonObject | None
    run_after: datetime | None = None  # for a retry: when the next attempt may start
    refund_attempt: bool = False  # graceful shutdown: the attempt does not count


@dataclass(frozen=True, slots=True)
class JobConfirmCancelParams:
    lease: Lease
    now: datetime
    edge: Edge


@dataclass(frozen=True, slots=True)
class JobCancelParams:
    """A user or admin cancel: pending -> cancelled, or running -> cancelling (the worker then stops it).

    `edges` are the moves the caller allows, each from one source status; the one whose source is the
    job's status at the write applies (a compare-and-set on that status). None applies: nothing is written.
    Several edges let a cancel be one write with no read before it (the service's fast path)."""

    job_id: UUID
    tenant: str | None
    now: datetime
    edges: tuple[Edge, ...]
    audit: AuditEntry | None = None  # an admin acting on someone else's job
    principal: str | None = None  # when set, only a job this principal submitted

    def __post_init__(self) -> None:
        if (
            not self.edges
            or any(len(e.sources) != 1 for e in self.edges)
            or len(self.moves) != len(self.edges)
        ):
            raise ValueError(f"each cancel edge needs its own single source status: {self.edges}")

    @property
    def moves(self) -> dict[JobStatus, JobStatus]:
        """Source status -> target status, one per edge, in the edges' order."""
        return {source: e.target for e in self.edges for source in e.sources}


@dataclass(frozen=True, slots=True)
class JobReprioritizeParams:
    job_id: UUID
    tenant: str | None
    priority: int
    now: datetime
    audit: AuditEntry | None = None


@dataclass(frozen=True, slots=True)
class JobRequeueParams:
    job_id: UUID
    tenant: str | None
    now: datetime
    edge: Edge
    expected_status: JobStatus
    max_attempts: int
    audit: AuditEntry | None = None


@dataclass(frozen=True, slots=True)
class JobListExpiredParams:
    now: datetime
    limit: int = 100


@dataclass(frozen=True, slots=True)
class JobRecoverParams:
    """Settle a job whose lease expired: CAS on its status and on the expired lease's token."""

    lease: Lease
    expected_status: JobStatus
    now: datetime
    edge: Edge
    error: JsonObject | None
    run_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobQueuePositionParams:
    job_id: UUID
    now: datetime
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class EventListParams:
    job_id: UUID | None = None
    tenant: str | None = None
    after_seq: int = 0  # per-job sequence (with job_id)
    after_id: int = 0  # global event id (tenant-wide streams)
    limit: int = 500


@dataclass(frozen=True, slots=True)
class JobFindCachedParams:
    tenant: str
    kind: str
    cache_key: str
    finished_after: datetime


@dataclass(frozen=True, slots=True)
class JobQueueStatsParams:
    tenant: str | None
    since: datetime  # completed/failed are counted from here (the API uses the last hour)


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    pending: int
    running: int  # running and cancelling
    completed_since: int
    failed_since: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKeyInsertParams:
    key: ApiKeyRecord
    audit: AuditEntry


@dataclass(frozen=True, slots=True)
class ApiKeyListParams:
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRevokeParams:
    key_id: str
    tenant: str | None
    now: datetime
    audit: AuditEntry


@dataclass(frozen=True, slots=True)
class AuditListParams:
    tenant: str
    before_id: int | None = None  # cursor: newest first
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Notification:
    """A wake-up sent on commit: `new_job` for a queue, or `cancel` for a job."""

    topic: str
    queue: str | None = None
    job_id: UUID | None = None


class Subscription(Protocol):
    def close(self) -> None: ...


class JobStore(Protocol):
    url: str

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        ...

    def pending_migrations(self) -> list[str]:
        """The names of the migrations this code has and the database lacks, oldest first."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def job_insert_many(self, params: JobInsertManyParams) -> list[JobInsertResult]: ...

    def job_get(self, params: JobGetParams) -> Job | None: ...

    def job_get_many_by_api_key(self, params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        """The key `key_id` (active or not: the caller checks its secret and its revocation) and, scoped
        to that key's tenant, the jobs and their queue positions, in one call: the reads of concurrent GET
        job requests of one API key caller, the API's most frequent request, made together."""
        ...

    def job_list(self, params: JobListParams) -> list[Job]: ...

    def job_claim(self, params: JobClaimParams, on_held: ClaimHeld | None = None) -> list[Job]:
        """Take up to `limit` runnable jobs for a worker, in claim order.

        `on_held`, when given, is called with the jobs (never with none) once the claim holds their rows
        and before it commits, so that an idle worker starts its handlers while the database flushes the
        commit. If `on_held` raises, nothing is claimed and the exception propagates; if the commit then
        fails, job_claim raises StoreError and the caller must stop what it started. Until the claim has
        committed, other connections see the jobs pending: a write under the new lease must wait for it."""
        ...

    def job_heartbeat(self, params: JobHeartbeatParams) -> dict[UUID, JobStatus]:
        """Extend the leases still held; returns their jobs' current statuses (a lost lease is absent)."""
        ...

    def job_status_many(self, params: JobStatusManyParams) -> dict[UUID, JobStatus]:
        """Current statuses of these jobs (a read: how a worker notices cancels between heartbeats)."""
        ...

    def job_set_progress(self, params: JobSetProgressParams) -> bool: ...

    def job_complete_many(self, params: JobCompleteManyParams) -> list[UUID]:
        """Complete the jobs whose lease is still held; returns the ids that were completed."""
        ...

    def job_fail(self, params: JobFailParams) -> Job | None: ...

    def job_confirm_cancel(self, params: JobConfirmCancelParams) -> Job | None: ...

    def job_cancel(self, params: JobCancelParams) -> Job | None: ...

    def job_reprioritize(self, params: JobReprioritizeParams) -> Job | None:
        """Change a pending job's priority (CAS on pending); None if it is not pending (or not found)."""
        ...

    def job_requeue(self, params: JobRequeueParams) -> Job | None: ...

    def job_list_expired(self, params: JobListExpiredParams) -> list[Job]: ...

    def job_recover(self, params: JobRecoverParams) -> Job | None: ...

    def job_queue_position(self, params: JobQueuePositionParams) -> int | None: ...

    def event_list(self, params: EventListParams) -> list[JobEvent]: ...

    def job_find_cached(self, params: JobFindCachedParams) -> Job | None:
        """The newest completed job of the tenant with this cache key, finished after the given time."""
        ...

    def job_queue_stats(self, params: JobQueueStatsParams) -> list[QueueStats]: ...

    def api_key_insert(self, params: ApiKeyInsertParams) -> ApiKeyRecord: ...

    def api_key_get(self, key_id: str) -> ApiKeyRecord | None: ...

    def api_key_list(self, params: ApiKeyListParams) -> list[ApiKeyRecord]: ...

    def api_key_revoke(self, params: ApiKeyRevokeParams) -> ApiKeyRecord | None:
        """Revoke an active key (CAS on not yet revoked); None if unknown, other tenant's or revoked."""
        ...

    def audit_list(self, params: AuditListParams) -> list[AuditRecord]: ...

    def notification_subscribe(
        self, callback: Callable[[Notification], None], topics: frozenset[str] | None = None
    ) -> Subscription:
        """Call `callback` (from any thread) for every notification committed by any process, or only for
        those whose topic is in `topics` (a backend may then not even receive the others)."""
        ...

    def change_counter(self) -> int | None:
        """A number that changes when another process commits, cheap enough to poll every few ms; None
        when the backend pushes notifications across processes instead (PostgreSQL)."""
        ...
