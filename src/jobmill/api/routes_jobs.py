"""The /jobs endpoints. They translate HTTP into service calls and back; the service decides."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import pydantic
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from jobmill.access import CallerJob
from jobmill.api.deps import (
    Admin,
    AppServices,
    Caller,
    Services,
    actor_of,
    admit,
    authenticate,
    bearer_token,
    get_services,
)
from jobmill.api.direct import direct_route
from jobmill.api.errors import ApiError
from jobmill.api.schemas import (
    CancelConfirmation,
    CancelRequest,
    ErrorBody,
    JobCreate,
    JobList,
    JobView,
    PriorityChange,
    PriorityChanged,
)
from jobmill.api.views import job_view
from jobmill.auth import Principal
from jobmill.domain.job import Job, JobStatus, JsonObject
from jobmill.handlers import NAME_PATTERN
from jobmill.metrics import JOBS_SUBMITTED
from jobmill.service import SubmitRequest
from jobmill.storage.base import InvalidSignature, new_key
from jobmill.storage.signing import sign_token, verify_token
from jobmill.storage.uploads import store_upload
from jobmill.store.base import JobListParams

log = logging.getLogger("jobmill.api")

router = APIRouter(tags=["jobs"])

UPLOAD_CHUNK = 1024 * 1024
CONFIRM_TTL_S = 60
MAX_LIST_LIMIT = 200
SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
}

SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {"spec": {"type": "string", "description": "JobCreate as JSON"}},
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            },
        },
    }
}


def _base_url(request: Request, services: AppServices) -> str:
    return services.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")


def _view(
    request: Request, services: AppServices, principal: Principal, job: Job, position: int | None
) -> JobView:
    return job_view(
        job,
        principal=principal,
        position=position,
        blobs=services.blobs,
        base_url=_base_url(request, services) if job.outputs else "",  # for the outputs' URLs only
        url_ttl_s=services.settings.signed_url_ttl_s,
    )


async def _current_view(request: Request, services: AppServices, principal: Principal, job: Job) -> JobView:
    position = None
    if job.status is JobStatus.PENDING:
        position = await run_in_threadpool(services.jobs.queue_position, job.id, principal.tenant)
    return _view(request, services, principal, job, position)


def _safe_filename(name: str | None) -> str | None:
    """The user's file name, kept only as a label: no folders, no control characters, bounded."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = SAFE_FILENAME.sub("_", base).strip(" .")[:255]
    return cleaned or None


def _non_finite_path(value: Any) -> list[str | int] | None:
    """Where `value` holds a NaN or an infinity (which the JSON parser accepts, JSON does not and
    PostgreSQL's jsonb refuses), or None. Iterative: params may be nested hundreds of levels deep."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, dict):
            stack.extend((v, [*path, k]) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(item))
    return None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


async def _parse_submission(
    request: Request, services: AppServices
) -> tuple[JobCreate, list[tuple[str, UploadFile]]]:
    content_type = request.headers.get("content-type", "").lower()
    try:
        if content_type.startswith("multipart/form-data"):
            settings = services.settings
            form = await request.form(
                max_files=settings.max_upload_files, max_fields=settings.max_upload_files + 10
            )
            request.state.form = form  # closed (temp files removed) when the request ends
            spec_field = form.get("spec")
            if not isinstance(spec_field, str):
                raise ApiError(
                    422, "invalid", "a multipart submission needs a `spec` part with the job as JSON"
                )
            spec = JobCreate.model_validate_json(spec_field)
            files: list[tuple[str, UploadFile]] = []
            for name, value in form.multi_items():
                if name == "spec":
                    continue
                if not isinstance(value, UploadFile):
                    raise ApiError(422, "invalid", f"part {name!r} is not a file; only `spec` may be a field")
                if not NAME_PATTERN.fullmatch(name):
                    raise ApiError(
                        422, "invalid", f"input name {name[:64]!r} must be 1-128 of [A-Za-z0-9_.:-]"
                    )
                if any(name == seen for seen, _ in files):
                    raise ApiError(422, "invalid", f"input {name!r} is given twice")
                files.append((name, value))
            return spec, files
        if content_type.startswith("application/json") or not content_type:
            return JobCreate.model_validate_json(await request.body()), []
    except pydantic.ValidationError as exc:
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise ApiError(422, "invalid", "the job specification is not valid", details) from None
    except (ValueError, UnicodeDecodeError) as exc:  # multipart framing errors
        raise ApiError(400, "malformed", f"the request body cannot be parsed: {exc}") from None
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


async def _close_form(request: Request) -> AsyncIterator[None]:
    """Close a parsed multipart form (its spooled temporary files) when the request ends, however."""
    try:
        yield
    finally:
        form = getattr(request.state, "form", None)
        if form is not None:
            await form.close()


@router.post(
    "/jobs",
    status_code=202,
    dependencies=[Depends(_close_form)],
    response_model=JobView,
    responses={200: {"model": JobView, "description": "an idempotent replay: the existing job"}, **ERRORS},
    openapi_extra=SUBMIT_BODY,
    summary="Submit a job (JSON, or multipart with files)",
)
async def submit_job(
    request: Request,
    response: Response,
    principal: Caller,
    services: Services,
    idempotency_header: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JobView:
    spec, files = await _parse_submission(request, services)
    bad = _non_finite_path(spec.params)
    if bad is not None:
        raise ApiError(
            422,
            "invalid",
            "params must hold finite numbers only (NaN and Infinity are not JSON)",
            [{"loc": ["params", *bad[:32]], "msg": "not a finite number", "type": "finite_number"}],
        )
    key = idempotency_header or spec.idempotency_key
    if idempotency_header and spec.idempotency_key and idempotency_header != spec.idempotency_key:
        raise ApiError(422, "invalid", "the Idempotency-Key header and the idempotency_key field differ")
    submission = SubmitRequest(
        kind=spec.kind,
        params=spec.params,
        queue=spec.queue,
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        timeout_s=spec.timeout_s,
        run_after=spec.run_after,
        idempotency_key=key,
        tenant=principal.tenant,
        principal=principal.subject,
    )
    if files:
        # Refuse an invalid job before any upload is stored. (Without files, submit refuses it the same
        # way before it writes anything: one thread hop less.)
        await run_in_threadpool(services.jobs.validate, submission)
    inputs: JsonObject = {}
    try:
        settings = services.settings
        allowed = [t for t in settings.upload_allowed_types.split(",") if t.strip()]
        for name, upload in files:
            info = await store_upload(
                services.blobs,
                new_key(principal.tenant, "uploads", name),
                _chunks(upload),
                max_bytes=settings.max_upload_bytes,
                allowed_types=allowed,
            )
            inputs[name] = {
                "key": info.key,
                "size": info.size,
                "sha256": info.sha256,
                "content_type": info.content_type,
                "filename": _safe_filename(upload.filename),
            }
        submission = dataclasses.replace(submission, inputs=inputs)
        result = await run_in_threadpool(services.jobs.submit, submission)
    except BaseException:
        await run_in_threadpool(_delete_blobs, services, inputs)  # no job, so nothing may stay stored
        raise
    job = result.job
    if result.created:
        JOBS_SUBMITTED.labels(job.queue, job.kind).inc()
    else:
        await run_in_threadpool(_delete_blobs, services, inputs)  # the replay keeps the first upload
        response.status_code = 200
    response.headers["Location"] = f"{request.url_for('get_job', job_id=str(job.id)).path}"
    return await _current_view(request, services, principal, job)


def _delete_blobs(services: AppServices, files: JsonObject) -> None:
    for meta in files.values():
        try:
            services.blobs.delete(meta["key"])
        except Exception:  # best effort: an orphan blob is not worth failing the request over
            log.warning("could not delete blob %s", meta.get("key"), exc_info=True)


async def get_job(job_id: UUID, request: Request, principal: Caller, services: Services) -> JobView:
    # Documents the route, and answers what _get_job_fast hands back (a malformed id); the fast handler
    # answers the rest the same way.
    job = await run_in_threadpool(services.jobs.get, job_id, principal.tenant)
    return await _current_view(request, services, principal, job)


_JOB_ID = pydantic.TypeAdapter(UUID)  # validates as FastAPI validates the path parameter


async def _get_job_fast(request: Request) -> Response | None:
    """GET job without FastAPI's per-request machinery: the API's most frequent request.

    Same steps as get_job, same order, same answers: authenticate (401, 429 for spent failed attempts),
    admit within the rate limit (429), the job of the caller's tenant (404) with its position, the view.
    But the key and the job come from one store call, and the view is serialised as the response_model
    would serialise it, without being validated a second time.
    """
    try:
        job_id = _JOB_ID.validate_python(request.path_params["job_id"])
    except pydantic.ValidationError:
        return None  # to FastAPI's handling of get_job: the caller's 401 or 429 first, then 400
    services = await get_services(request)
    access = services.access

    async def check(token: str) -> CallerJob:
        key_id = access.api_key_id(token)
        if key_id is None:  # a JWT, or a token to refuse
            return await run_in_threadpool(access.authenticate_and_get_job, token, job_id)
        return access.caller_job(token, job_id, await services.job_reads(key_id, job_id))

    found = await authenticate(request, services, bearer_token(request), check)
    await admit(request, services, found.principal)
    view = _view(request, services, found.principal, found.visible_job(), found.position)
    return Response(view.__pydantic_serializer__.to_json(view), media_type="application/json")


def add_get_job_route(app_router: APIRouter, prefix: str) -> None:
    """GET /jobs/{job_id}, added by create_app to the app's own router, ahead of the included routers:
    FastAPI's dispatch to a route of an included router costs some 25 us a request, near a tenth of this
    one's. The route is documented like the others (tag "jobs", listed first), answered by _get_job_fast."""
    app_router.add_api_route(
        f"{prefix}/jobs/{{job_id}}",
        get_job,
        methods=["GET"],
        tags=["jobs"],
        response_model=JobView,
        responses=ERRORS,
        summary="A job's status and results",
        route_class_override=direct_route(_get_job_fast),
    )


@router.get("/jobs", response_model=JobList, responses=ERRORS, summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    principal: Caller,
    services: Services,
    status: Annotated[list[JobStatus] | None, Query(description="repeat or comma-separate")] = None,
    kind: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    queue: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    # At most 18 digits: a cursor is a 64-bit row number, and a bigger one must be a 422, not a 500.
    cursor: Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
) -> JobList:
    params = JobListParams(
        tenant=principal.tenant,
        statuses=status or (),
        kind=kind,
        queue=queue,
        before_seq=int(cursor) if cursor else None,
        limit=limit + 1,
    )
    jobs = await run_in_threadpool(services.jobs.list_jobs, params)
    page, more = jobs[:limit], len(jobs) > limit
    views = [await _current_view(request, services, principal, job) for job in page]
    return JobList(jobs=views, next_cursor=str(page[-1].seq) if more and page else None)


def _confirm_token(services: AppServices, job_id: UUID, principal: Principal) -> str:
    payload = {"a": "cancel", "j": str(job_id), "s": principal.subject, "t": principal.tenant}
    return sign_token(services.secret_key, payload, int(time.time()) + CONFIRM_TTL_S)


def _check_confirm_token(services: AppServices, token: str, job_id: UUID, principal: Principal) -> None:
    try:
        payload = verify_token(services.secret_key, token)
    except InvalidSignature as exc:
        raise ApiError(400, "invalid_confirm_token", f"the confirm token is not valid: {exc}") from None
    expected = {"a": "cancel", "j": str(job_id), "s": principal.subject, "t": principal.tenant}
    if payload != expected:
        raise ApiError(400, "invalid_confirm_token", "the confirm token is for another job or caller")


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView | CancelConfirmation,
    responses={
        202: {
            "model": JobView | CancelConfirmation,
            "description": "running: cancelling; or a confirm token",
        },
        **ERRORS,
    },
    summary="Cancel a job: pending 200 cancelled, running 202 cancelling, terminal 409",
)
async def cancel_job(
    job_id: UUID,
    request: Request,
    response: Response,
    principal: Caller,
    services: Services,
    body: CancelRequest | None = None,
) -> JobView | CancelConfirmation:
    if services.settings.cancel_confirm and (body is None or body.confirm_token is None):
        # Step one: check that the cancel would be allowed, then hand out a short-lived token.
        job = await run_in_threadpool(
            services.jobs.check_cancel, job_id, principal.tenant, actor_of(principal)
        )
        response.status_code = 202
        return CancelConfirmation(
            confirm_token=_confirm_token(services, job_id, principal),
            expires_in_s=CONFIRM_TTL_S,
            job=await _current_view(request, services, principal, job),
        )
    if services.settings.cancel_confirm and body is not None and body.confirm_token is not None:
        _check_confirm_token(services, body.confirm_token, job_id, principal)
    job = await run_in_threadpool(services.jobs.cancel, job_id, principal.tenant, actor_of(principal))
    response.status_code = 200 if job.status is JobStatus.CANCELLED else 202
    return await _current_view(request, services, principal, job)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    responses={202: {"model": JobView}, **ERRORS},
    summary="Admin cancel of any job of the tenant (audited); removes its stored inputs",
)
async def admin_cancel_job(
    job_id: UUID, request: Request, response: Response, principal: Admin, services: Services
) -> JobView:
    job = await run_in_threadpool(
        lambda: services.jobs.cancel(job_id, principal.tenant, actor_of(principal), admin_action=True)
    )
    await run_in_threadpool(_delete_blobs, services, job.inputs)
    response.status_code = 200 if job.status is JobStatus.CANCELLED else 202
    return await _current_view(request, services, principal, job)


@router.patch(
    "/jobs/{job_id}/priority",
    response_model=PriorityChanged,
    responses=ERRORS,
    summary="Change a pending job's priority (admin, audited); answers its new position",
)
async def change_priority(
    job_id: UUID, change: PriorityChange, request: Request, principal: Admin, services: Services
) -> PriorityChanged:
    job, position = await run_in_threadpool(
        services.jobs.reprioritize, job_id, change.priority, principal.tenant, actor_of(principal)
    )
    return PriorityChanged(job=_view(request, services, principal, job, position), new_position=position)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobView,
    responses=ERRORS,
    summary="Re-queue a failed or cancelled job (admin, audited)",
)
async def retry_job(job_id: UUID, request: Request, principal: Admin, services: Services) -> JobView:
    job = await run_in_threadpool(services.jobs.requeue, job_id, principal.tenant, actor_of(principal))
    return await _current_view(request, services, principal, job)


@router.get(
    "/jobs/{job_id}/outputs/{name}",
    status_code=307,
    response_class=RedirectResponse,
    responses={307: {"description": "to a signed, expiring download URL"}, **ERRORS},
    summary="Download an output: a redirect to a signed URL",
)
async def download_output(
    job_id: UUID,
    name: str,
    request: Request,
    principal: Caller,
    services: Services,
) -> RedirectResponse:
    job = await run_in_threadpool(services.jobs.get, job_id, principal.tenant)
    meta = job.outputs.get(name)
    if meta is None:
        raise ApiError(404, "not_found", f"job {job_id} has no output {name[:128]!r}")
    url = services.blobs.signed_url(
        meta["key"],
        expires_s=services.settings.signed_url_ttl_s,
        filename=meta.get("filename") or name,
        base_url=_base_url(request, services),
    )
    return RedirectResponse(url, status_code=307)
