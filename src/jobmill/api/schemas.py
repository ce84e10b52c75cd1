"""Request and response bodies, named by role (JobCreate, JobView, ...); they are the OpenAPI contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from jobmill.domain.job import JobStatus
from jobmill.domain.ordering import PRIORITY_MAX, PRIORITY_MIN
from jobmill.service import MAX_ATTEMPTS_LIMIT

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class JobCreate(BaseModel):
    """A submission: JSON body, or the `spec` part of a multipart body whose other parts are files."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(pattern=NAME, examples=["audio.transcode"])
    params: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, pattern=NAME)
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    run_after: datetime | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class FileView(BaseModel):
    name: str
    size: int
    sha256: str
    content_type: str
    filename: str | None = None


class OutputView(FileView):
    download_url: str


class ErrorView(BaseModel):
    type: str
    message: str
    traceback: str | None = None  # admins only


class JobView(BaseModel):
    id: UUID
    kind: str
    queue: str
    priority: int
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    queue_position: int | None = Field(description="pending jobs only: 1 + jobs claimed before it")
    attempts: int
    max_attempts: int
    timeout_s: float | None
    run_after: datetime
    params: dict[str, Any]
    result: Any = Field(default=None, description="completed jobs only")
    error: ErrorView | None = Field(default=None, description="failed jobs only")
    inputs: list[FileView]
    outputs: list[OutputView]
    idempotency_key: str | None
    cached: bool
    submitted_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page")


class PriorityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)


class PriorityChanged(BaseModel):
    job: JobView
    new_position: int | None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm_token: str | None = Field(default=None, max_length=1024)


class CancelConfirmation(BaseModel):
    """Two-step cancel (JOBMILL_CANCEL_CONFIRM): send the token back within `expires_in_s`."""

    confirm_token: str
    expires_in_s: int
    job: JobView


class QueueView(BaseModel):
    queue: str
    pending: int
    running: int
    completed_last_hour: int
    failed_last_hour: int
    oldest_pending_age_s: float | None


class QueueList(BaseModel):
    queues: list[QueueView]


class AuditView(BaseModel):
    id: int
    at: datetime
    tenant: str
    actor: str
    action: str
    job_id: UUID | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditList(BaseModel):
    entries: list[AuditView]
    next_cursor: str | None


class JobEventView(BaseModel):
    """One change of a job, as the live streams send it (SSE `data:`, WebSocket `event`)."""

    id: int = Field(description="global event id (the tenant stream's SSE id)")
    job_id: UUID
    seq: int = Field(description="per-job sequence number (the job stream's SSE id)")
    at: datetime
    type: str = Field(description="status, progress or priority")
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    data: dict[str, Any] | None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
