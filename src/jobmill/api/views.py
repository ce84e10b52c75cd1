"""Turning domain records into response bodies: what each caller may see of a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobmill.api.schemas import AuditView, ErrorView, FileView, JobEventView, JobView, OutputView, QueueView
from jobmill.auth import Principal
from jobmill.domain.admin import AuditRecord
from jobmill.domain.job import Job, JobEvent, JobStatus
from jobmill.storage.base import BlobStore
from jobmill.store.base import QueueStats


def _file(name: str, meta: dict[str, Any]) -> FileView:
    return FileView(
        name=name,
        size=int(meta.get("size", 0)),
        sha256=str(meta.get("sha256", "")),
        content_type=str(meta.get("content_type", "application/octet-stream")),
        filename=meta.get("filename"),
    )


def job_view(
    job: Job,
    *,
    principal: Principal,
    position: int | None,
    blobs: BlobStore,
    base_url: str,
    url_ttl_s: int,
) -> JobView:
    error = None
    if job.status is JobStatus.FAILED and job.error:
        error = ErrorView(
            type=str(job.error.get("type", "error")),
            message=str(job.error.get("message", "")),
            traceback=job.error.get("traceback") if principal.is_admin else None,
        )
    outputs = [
        OutputView(
            **_file(name, meta).model_dump(),
            download_url=blobs.signed_url(
                meta["key"], expires_s=url_ttl_s, filename=meta.get("filename") or name, base_url=base_url
            ),
        )
        for name, meta in sorted(job.outputs.items())
    ]
    return JobView(
        id=job.id,
        kind=job.kind,
        queue=job.queue,
        priority=job.priority,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        message=job.message,
        queue_position=position if job.status is JobStatus.PENDING else None,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        timeout_s=job.timeout_s,
        run_after=job.run_after,
        params=job.params,
        result=job.result if job.status is JobStatus.COMPLETED else None,
        error=error,
        inputs=[_file(name, meta) for name, meta in sorted(job.inputs.items())],
        outputs=outputs,
        idempotency_key=job.idempotency_key,
        cached=job.cached,
        submitted_by=job.principal,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


def queue_view(stats: QueueStats, now: datetime) -> QueueView:
    oldest = stats.oldest_pending_at
    return QueueView(
        queue=stats.queue,
        pending=stats.pending,
        running=stats.running,
        completed_last_hour=stats.completed_since,
        failed_last_hour=stats.failed_since,
        oldest_pending_age_s=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
    )


def audit_view(record: AuditRecord) -> AuditView:
    return AuditView(
        id=record.id,
        at=record.at,
        tenant=record.tenant,
        actor=record.actor,
        action=record.action,
        job_id=record.job_id,
        before=record.before,
        after=record.after,
    )


def event_view(event: JobEvent) -> JobEventView:
    return JobEventView(
        id=event.id,
        job_id=event.job_id,
        seq=event.seq,
        at=event.at,
        type=event.type,
        status=event.status,
        stage=event.stage,
        progress=event.progress,
        message=event.message,
        data=event.data,
    )
