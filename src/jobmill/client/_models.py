"""What the client returns: small frozen dataclasses mirroring the API's JSON (`jobmill.api.schemas`).

Parsing is lenient about fields a newer server adds and strict about the ones a job cannot lack (id,
kind, status): a body without them raises UnexpectedResponse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from jobmill.client._errors import UnexpectedResponse
from jobmill.domain.job import JobStatus

__all__ = ["FileInfo", "Job", "JobEvent", "JobFailure", "JobPage", "OutputFile"]


def _dt(value: Any) -> datetime | None:
    return None if value is None else _aware(str(value))


def _aware(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (so all times compare)."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """An uploaded input of a job."""

    name: str
    size: int
    sha256: str
    content_type: str
    filename: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> FileInfo:
        return cls(
            name=str(data["name"]),
            size=int(data.get("size", 0)),
            sha256=str(data.get("sha256", "")),
            content_type=str(data.get("content_type", "application/octet-stream")),
            filename=data.get("filename"),
        )


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file a job published; `download_url` is signed and expires (JOBMILL_SIGNED_URL_TTL_S)."""

    name: str
    size: int
    sha256: str
    content_type: str
    download_url: str
    filename: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> OutputFile:
        info = FileInfo.from_api(data)
        return cls(
            name=info.name,
            size=info.size,
            sha256=info.sha256,
            content_type=info.content_type,
            download_url=str(data.get("download_url", "")),
            filename=info.filename,
        )


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job failed; `traceback` is shown to admins only."""

    type: str
    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the API shows it (JobView). `raw` is the JSON it was parsed from."""

    id: UUID
    kind: str
    queue: str
    priority: int
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    queue_position: int | None
    attempts: int
    max_attempts: int
    timeout_s: float | None
    run_after: datetime | None
    params: dict[str, Any]
    result: Any
    error: JobFailure | None
    inputs: tuple[FileInfo, ...]
    outputs: tuple[OutputFile, ...]
    idempotency_key: str | None
    cached: bool
    submitted_by: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def output(self, name: str) -> OutputFile | None:
        return next((o for o in self.outputs if o.name == name), None)

    @classmethod
    def from_api(cls, data: Any) -> Job:
        if not isinstance(data, dict):
            raise UnexpectedResponse(f"expected a job object, got {type(data).__name__}")
        try:
            error = data.get("error")
            return cls(
                id=UUID(str(data["id"])),
                kind=str(data["kind"]),
                queue=str(data.get("queue", "default")),
                priority=int(data.get("priority", 0)),
                status=JobStatus(data["status"]),
                stage=data.get("stage"),
                progress=_float(data.get("progress")),
                message=data.get("message"),
                queue_position=_int(data.get("queue_position")),
                attempts=int(data.get("attempts", 0)),
                max_attempts=int(data.get("max_attempts", 1)),
                timeout_s=_float(data.get("timeout_s")),
                run_after=_dt(data.get("run_after")),
                params=dict(data.get("params") or {}),
                result=data.get("result"),
                error=JobFailure(
                    type=str(error.get("type", "error")),
                    message=str(error.get("message", "")),
                    traceback=error.get("traceback"),
                )
                if isinstance(error, dict)
                else None,
                inputs=tuple(FileInfo.from_api(f) for f in data.get("inputs") or ()),
                outputs=tuple(OutputFile.from_api(f) for f in data.get("outputs") or ()),
                idempotency_key=data.get("idempotency_key"),
                cached=bool(data.get("cached", False)),
                submitted_by=data.get("submitted_by"),
                created_at=_dt(data.get("created_at")),
                started_at=_dt(data.get("started_at")),
                finished_at=_dt(data.get("finished_at")),
                updated_at=_dt(data.get("updated_at")),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"not a jobmill job: {type(exc).__name__}: {exc}") from None

    def with_event(self, event: JobEvent) -> Job:
        """This job as it is after `event` (a live update carries status, stage, progress, message)."""
        pending = event.status is JobStatus.PENDING
        return dataclasses.replace(
            self,
            status=event.status,
            stage=event.stage,
            progress=event.progress,
            message=event.message,
            queue_position=self.queue_position if pending else None,
            updated_at=event.at,
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One change of a job, as the live stream sends it; `seq` counts from 1 per job, without gaps."""

    id: int
    job_id: UUID
    seq: int
    at: datetime
    type: str  # status, progress or priority
    status: JobStatus
    stage: str | None
    progress: float | None
    message: str | None
    data: dict[str, Any] | None

    @property
    def is_terminal(self) -> bool:
        """The last event of a job: its stream ends after it."""
        return self.type == "status" and self.status.is_terminal

    @classmethod
    def from_api(cls, data: Any) -> JobEvent:
        if not isinstance(data, dict):
            raise UnexpectedResponse(f"expected an event object, got {type(data).__name__}")
        try:
            return cls(
                id=int(data.get("id", 0)),
                job_id=UUID(str(data["job_id"])),
                seq=int(data["seq"]),
                at=_aware(str(data["at"])),
                type=str(data.get("type", "status")),
                status=JobStatus(data["status"]),
                stage=data.get("stage"),
                progress=_float(data.get("progress")),
                message=data.get("message"),
                data=data.get("data"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"not a jobmill event: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of `list()`, newest first; pass `next_cursor` as `cursor` for the next (older) page."""

    jobs: list[Job]
    next_cursor: str | None

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @classmethod
    def from_api(cls, data: Any) -> JobPage:
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise UnexpectedResponse("expected a job list")
        cursor = data.get("next_cursor")
        return cls(
            jobs=[Job.from_api(j) for j in data["jobs"]], next_cursor=None if cursor is None else str(cursor)
        )
