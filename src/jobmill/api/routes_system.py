"""Queues, audit log, health, readiness, metrics, and local signed downloads (/files/{token})."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from jobmill.api.deps import Admin, Caller, Services
from jobmill.api.routes_jobs import ERRORS
from jobmill.api.schemas import AuditList, Health, QueueList
from jobmill.api.views import audit_view, queue_view
from jobmill.errors import JobmillError
from jobmill.metrics import REGISTRY
from jobmill.storage.base import content_disposition
from jobmill.storage.signing import verify_file_token

router = APIRouter()
files_router = APIRouter()


@router.get(
    "/queues", response_model=QueueList, responses=ERRORS, tags=["queues"], summary="Per-queue counts"
)
async def list_queues(principal: Caller, services: Services) -> QueueList:
    stats = await run_in_threadpool(services.jobs.queue_stats, principal.tenant)
    now = services.jobs.clock()
    return QueueList(queues=[queue_view(s, now) for s in stats])


@router.get(
    "/audit", response_model=AuditList, responses=ERRORS, tags=["admin"], summary="The tenant's audit log"
)
async def audit_log(
    principal: Admin,
    services: Services,
    cursor: Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]+$")] = None,  # a 64-bit id
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditList:
    records = await run_in_threadpool(
        services.jobs.audit_log, principal.tenant, int(cursor) if cursor else None, limit + 1
    )
    page, more = records[:limit], len(records) > limit
    return AuditList(
        entries=[audit_view(r) for r in page], next_cursor=str(page[-1].id) if more and page else None
    )


@router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"], summary="Readiness"
)
async def readyz(services: Services) -> Response:
    try:
        await run_in_threadpool(services.jobs.store.ping)
    except JobmillError:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(await run_in_threadpool(generate_latest, REGISTRY), media_type=CONTENT_TYPE_LATEST)


@files_router.get("/files/{token}", include_in_schema=False)
async def download_file(token: str, request: Request, services: Services) -> StreamingResponse:
    """Local storage downloads: the token is the signature; tampered or expired tokens are refused (403)."""
    grant = verify_file_token(services.secret_key, token)
    stream = await run_in_threadpool(services.blobs.open, grant.key)
    headers = {"Content-Disposition": content_disposition(grant.filename)} if grant.filename else {}

    def chunks() -> object:
        try:
            while chunk := stream.read(1024 * 1024):
                yield chunk
        finally:
            stream.close()

    return StreamingResponse(
        iterate_in_threadpool(chunks()),  # type: ignore[arg-type]
        media_type="application/octet-stream",
        headers=headers,
    )
