"""The job record as every layer sees it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

JsonObject = dict[str, Any]


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as submitted, before the store gives it a submission number."""

    id: UUID
    tenant: str
    kind: str
    queue: str
    priority: int
    params: JsonObject
    max_attempts: int
    timeout_s: float | None
    run_after: datetime
    principal: str | None = None
    idempotency_key: str | None = None
    inputs: JsonObject = field(default_factory=dict)
    request_hash: str | None = None  # what an idempotent replay must match
    cache_key: str | None = None  # set for cacheable kinds: same key = same result
    # Served from the result cache: the job is created completed, with this earlier job's result.
    cached_from: Job | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    seq: int  # submission order: the FIFO tie-breaker inside one priority
    tenant: str
    principal: str | None
    kind: str
    queue: str
    priority: int
    params: JsonObject
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    attempts: int
    max_attempts: int
    timeout_s: float | None
    run_after: datetime
    result: Any
    error: JsonObject | None
    inputs: JsonObject
    outputs: JsonObject
    idempotency_key: str | None
    lease_owner: str | None
    lease_token: UUID | None
    lease_expires_at: datetime | None
    event_seq: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    request_hash: str | None = None
    cache_key: str | None = None
    cached: bool = False

    def is_runnable(self, now: datetime) -> bool:
        return self.status is JobStatus.PENDING and self.run_after <= now


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's change log; `seq` counts from 1 per job and has no gaps."""

    id: int  # global order across jobs (for tenant-wide streams)
    job_id: UUID
    tenant: str
    seq: int
    at: datetime
    type: str  # "status" or "progress"
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    data: JsonObject | None


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 v7): new rows land at the end of the primary-key index."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return UUID(int=value)
