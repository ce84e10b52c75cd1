"""jobmill's exceptions: one hierarchy, so callers can catch broadly or narrowly.

JobmillError
├── ConfigError            settings that cannot work (bad URL, unknown scheme)
├── StoreError             the database failed; driver errors are translated into this at the store edge
│   └── StoreUnavailable   the database cannot be reached right now (retry later)
├── ValidationError        a request that is malformed or out of bounds (bad params, priority range)
├── UnknownKind            no handler is registered for a job kind
├── JobNotFound            no such job for this tenant (other tenants' jobs are "not found" too)
├── InvalidTransition      the job's state does not allow the operation; carries the current status
└── LeaseLost              a worker wrote to a job whose lease it no longer holds
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from jobmill.domain.job import JobStatus


class JobmillError(Exception):
    """Base class of every error jobmill raises on purpose."""


class ConfigError(JobmillError):
    pass


class StoreError(JobmillError):
    pass


class StoreUnavailable(StoreError):
    pass


class StoreContention(StoreError):
    """The statement lost to a concurrent transaction (a deadlock, a serialization failure) and was rolled
    back: nothing was written, and running it again is safe."""


class ValidationError(JobmillError):
    pass


class UnknownKind(ValidationError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"no handler is registered for job kind {kind!r}")
        self.kind = kind


class JobNotFound(JobmillError):
    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class Forbidden(JobmillError):
    pass


class IdempotencyConflict(JobmillError):
    def __init__(self, key: str, job_id: UUID) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request (job {job_id})")
        self.key = key
        self.job_id = job_id


class InvalidTransition(JobmillError):
    def __init__(self, job_id: UUID, action: str, current: JobStatus) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {current.value}")
        self.job_id = job_id
        self.action = action
        self.current = current


class LeaseLost(JobmillError):
    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"the lease on job {job_id} is no longer held by this worker")
        self.job_id = job_id
