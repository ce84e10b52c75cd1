"""The web dashboard: server-rendered pages under `/` and `/ui/...`, signed in with an API key.

Pages are Jinja2 templates (autoescaped) with one hand-written stylesheet and script. Reads go through
the same service calls as the API, scoped by the signed-in key's tenant; the live parts follow
`/ui/events`, the tenant event stream of the API authenticated by the session cookie. GET never changes
anything; every change is a POST carrying the session's CSRF token, and the service decides what the
caller may do (admin actions answer 403 to users even when forged).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit
from uuid import UUID

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from jobmill.api.deps import AppServices, Services, actor_of
from jobmill.api.errors import ApiError, RateLimited
from jobmill.api.routes_events import SSE_HEADERS, _hub, _parse_last_id, _tenant_events, sse
from jobmill.api.routes_jobs import _current_view, _delete_blobs
from jobmill.api.schemas import JobView
from jobmill.api.views import audit_view, queue_view
from jobmill.auth import AuthError, Principal
from jobmill.dashboard import pages
from jobmill.dashboard.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_CSRF_COOKIE,
    MAX_KEY_LENGTH,
    SESSION_COOKIE,
    Flash,
    Session,
    clear_flash,
    end_session,
    login_csrf,
    read_session_cookie,
    set_flash,
    set_login_csrf,
    start_session,
    take_flash,
    tokens_match,
)
from jobmill.domain.job import JobStatus
from jobmill.domain.ordering import PRIORITY_MAX, PRIORITY_MIN
from jobmill.errors import Forbidden, InvalidTransition, JobNotFound
from jobmill.handlers import NAME_PATTERN
from jobmill.store.base import JobListParams

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
RECENT_JOBS = 10
AUDIT_PAGE_SIZE = 100
# Distinct lease owners are counted over at most this many running jobs of the tenant.
BUSY_SCAN_LIMIT = 1000
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Csrf = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]


# -- sessions ------------------------------------------------------------------------------------------


async def current_session(request: Request, services: Services) -> Session | None:
    """The signed-in user of this request, or None (no cookie, tampered, expired, key revoked)."""
    cookie = read_session_cookie(request, services)
    if cookie is None:
        return None
    key, csrf = cookie
    try:
        principal = await run_in_threadpool(services.access.authenticate, key)
    except AuthError:
        return None
    request.state.principal = principal  # for the access log, as the API does
    decision = await services.requests_limiter.hit(f"principal:{principal.tenant}:{principal.subject}")
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    return Session(principal, csrf)


SessionDep = Annotated[Session | None, Depends(current_session)]


def _check_csrf(request: Request, session: Session, field: str) -> None:
    given = field or request.headers.get(CSRF_HEADER, "")
    if not tokens_match(session.csrf, given):
        raise ApiError(
            403, "forbidden", "missing or wrong CSRF token; reload the page and try again", {"reason": "csrf"}
        )


def _require_admin(session: Session) -> Principal:
    if not session.principal.is_admin:
        raise Forbidden("this operation needs the admin role")
    return session.principal


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: only a path of this site."""
    # Browsers drop tabs and newlines from URLs ("/\t/evil" becomes "//evil"): refuse any control or space.
    if not value or len(value) > 500 or "\\" in value or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/"
    return value


def _to_sign_in(request: Request, services: AppServices) -> RedirectResponse:
    """Every dashboard URL, pages, fragments and the stream alike, sends a visitor without a valid session
    to the sign-in page (scripts notice the redirect and reload, which lands there too)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/" if target == "/" else f"/?next={quote(target, safe='')}"
    response = RedirectResponse(location, status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        end_session(response, request, services)  # expired or revoked: drop it
    return response


def _page(
    request: Request,
    services: AppServices,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = take_flash(request, services)
    principal = session.principal if session else None
    html = pages.render(
        template,
        {
            "session": session,
            "principal": principal,
            "is_admin": bool(principal and principal.is_admin),
            "csrf": session.csrf if session else "",
            "flash": flash,
            "path": request.url.path,
            **context,
        },
    )
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    clear_flash(response, request, services)
    return response


def _fragment(html: str) -> HTMLResponse:
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def _back_to_job(
    request: Request, services: AppServices, job_id: UUID, flash: Flash | None = None
) -> RedirectResponse:
    response = RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
    if flash is not None:
        set_flash(response, request, services, flash)
    return response


def _error_page(
    request: Request, services: AppServices, session: Session | None, status: int, title: str, message: str
) -> HTMLResponse:
    return _page(request, services, "error.html", session, status, title=title, message=message)


def _parse_job_id(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


# -- sign-in and sign-out ------------------------------------------------------------------------------


def _sign_in_page(
    request: Request, services: AppServices, next_url: str, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = login_csrf(request)
    response = _page(
        request, services, "sign_in.html", None, status, login_csrf=token, next_url=next_url, error=error
    )
    set_login_csrf(response, request, services, token)
    return response


@router.get("/", response_class=HTMLResponse)
async def home(
    request: Request,
    services: Services,
    session: SessionDep,
    next_url: Annotated[str | None, Query(alias="next", max_length=500)] = None,
) -> Response:
    """The queues overview when signed in; the sign-in form otherwise."""
    if session is None:
        return _sign_in_page(request, services, _safe_next(next_url))
    queues, recent = await _overview(request, services, session.principal)
    return _page(
        request,
        services,
        "overview.html",
        session,
        queues=queues,
        jobs=recent,
        live_url="/ui/events",
        rows_url="/ui/jobs/rows?" + urlencode({"limit": RECENT_JOBS}),
    )


@router.post("/ui/sign-in")
async def sign_in(
    request: Request,
    services: Services,
    csrf: Csrf = "",
    api_key: Annotated[str, Form(max_length=MAX_KEY_LENGTH)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=500)] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not tokens_match(expected, csrf):
        raise ApiError(
            403, "forbidden", "the sign-in form expired; reload the page and try again", {"reason": "csrf"}
        )
    ip = request.client.host if request.client else "unknown"
    blocked = services.blocked_until.get(ip)
    if blocked is not None and blocked > time.monotonic():
        raise RateLimited(blocked - time.monotonic(), "failed authentications")
    try:
        principal = await run_in_threadpool(services.access.authenticate, api_key.strip())
    except AuthError:
        # Failed sign-ins count against the caller's IP exactly like failed API authentications.
        decision = await services.auth_failures_limiter.hit(f"ip:{ip}")
        if not decision.allowed:
            services.blocked_until[ip] = time.monotonic() + decision.retry_after_s
            raise RateLimited(decision.retry_after_s, "failed authentications") from None
        return _sign_in_page(
            request,
            services,
            _safe_next(next_url),
            "That key was not accepted: it is unknown, revoked or mistyped.",
            401,
        )
    request.state.principal = principal
    response = RedirectResponse(_safe_next(next_url), status_code=303)
    start_session(response, request, services, api_key.strip())
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request, services: Services, session: SessionDep, csrf: Csrf = "") -> Response:
    if session is None:
        return _to_sign_in(request, services)
    _check_csrf(request, session, csrf)
    response = RedirectResponse("/", status_code=303)
    end_session(response, request, services)
    return response


# -- overview ------------------------------------------------------------------------------------------


async def _overview(
    request: Request, services: AppServices, principal: Principal
) -> tuple[list[dict[str, Any]], list[JobView]]:
    stats = await run_in_threadpool(services.jobs.queue_stats, principal.tenant)
    running = await run_in_threadpool(
        services.jobs.list_jobs,
        JobListParams(
            tenant=principal.tenant,
            statuses=(JobStatus.RUNNING, JobStatus.CANCELLING),
            limit=BUSY_SCAN_LIMIT,
        ),
    )
    busy: dict[str, set[str]] = {}
    for job in running:
        if job.lease_owner:
            busy.setdefault(job.queue, set()).add(job.lease_owner)
    now = services.jobs.clock()
    queues = [
        {"view": queue_view(s, now), "busy_workers": len(busy.get(s.queue, ()))}
        for s in sorted(stats, key=lambda s: s.queue)
    ]
    recent = await run_in_threadpool(
        services.jobs.list_jobs, JobListParams(tenant=principal.tenant, limit=RECENT_JOBS)
    )
    views = [await _current_view(request, services, principal, job) for job in recent]
    return queues, views


@router.get("/ui/queues", response_class=HTMLResponse)
async def queues_fragment(request: Request, services: Services, session: SessionDep) -> Response:
    """The queues table alone, for the overview's live refresh."""
    if session is None:
        return _to_sign_in(request, services)
    queues, _ = await _overview(request, services, session.principal)
    return _fragment(pages.render("_queues.html", {"queues": queues}))


# -- jobs ----------------------------------------------------------------------------------------------


def _filters(status: str | None, kind: str | None, queue: str | None) -> tuple[dict[str, str], list[str]]:
    """The valid filters (as given) and messages about the invalid ones, which are ignored."""
    valid: dict[str, str] = {}
    problems: list[str] = []
    if status:
        if status in {s.value for s in JobStatus}:
            valid["status"] = status
        else:
            problems.append(f"unknown status {status[:40]!r}")
    for name, value in (("kind", kind), ("queue", queue)):
        if value:
            if NAME_PATTERN.fullmatch(value):
                valid[name] = value
            else:
                problems.append(f"{name} {value[:40]!r} is not a valid name")
    return valid, problems


async def _job_page(
    request: Request,
    services: AppServices,
    principal: Principal,
    filters: dict[str, str],
    cursor: str | None,
    limit: int,
) -> tuple[list[JobView], str | None]:
    params = JobListParams(
        tenant=principal.tenant,
        statuses=(JobStatus(filters["status"]),) if "status" in filters else (),
        kind=filters.get("kind"),
        queue=filters.get("queue"),
        before_seq=int(cursor) if cursor else None,
        limit=limit + 1,
    )
    jobs = await run_in_threadpool(services.jobs.list_jobs, params)
    page, more = jobs[:limit], len(jobs) > limit
    views = [await _current_view(request, services, principal, job) for job in page]
    return views, (str(page[-1].seq) if more and page else None)


FilterStatus = Annotated[str | None, Query(max_length=40)]
FilterName = Annotated[str | None, Query(max_length=200)]
# Seq numbers are 64-bit: 18 digits always fit, so a longer cursor is refused (422), never an overflow.
Cursor = Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]*$")]


@router.get("/ui/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    services: Services,
    session: SessionDep,
    status: FilterStatus = None,
    kind: FilterName = None,
    queue: FilterName = None,
    cursor: Cursor = None,
) -> Response:
    if session is None:
        return _to_sign_in(request, services)
    filters, problems = _filters(status, kind, queue)
    jobs, next_cursor = await _job_page(request, services, session.principal, filters, cursor, PAGE_SIZE)
    stats = await run_in_threadpool(services.jobs.queue_stats, session.principal.tenant)
    registry = services.jobs.registry
    live_query = urlencode({"queue": filters["queue"]}) if "queue" in filters else ""
    return _page(
        request,
        services,
        "jobs.html",
        session,
        jobs=jobs,
        filters=filters,
        problems=problems,
        cursor=cursor or "",
        next_url=("/ui/jobs?" + urlencode({**filters, "cursor": next_cursor})) if next_cursor else None,
        kinds=sorted(spec.kind for spec in registry) if registry is not None else [],
        queue_names=sorted({s.queue for s in stats}),
        live_url="/ui/events" + (f"?{live_query}" if live_query else ""),
        rows_url="/ui/jobs/rows?" + urlencode({**filters, **({"cursor": cursor} if cursor else {})}),
    )


@router.get("/ui/jobs/rows", response_class=HTMLResponse)
async def job_rows(
    request: Request,
    services: Services,
    session: SessionDep,
    status: FilterStatus = None,
    kind: FilterName = None,
    queue: FilterName = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE)] = PAGE_SIZE,
) -> Response:
    """The rows of a jobs table alone: what the page refetches when the live stream asks to resync."""
    if session is None:
        return _to_sign_in(request, services)
    filters, _ = _filters(status, kind, queue)
    jobs, _ = await _job_page(request, services, session.principal, filters, cursor, limit)
    return _fragment(pages.render("_job_rows.html", {"jobs": jobs}))


async def _job_context(
    request: Request, services: AppServices, session: Session, job_id: UUID
) -> dict[str, Any]:
    principal = session.principal
    job = await run_in_threadpool(services.jobs.get, job_id, principal.tenant)
    view = await _current_view(request, services, principal, job)
    events = await run_in_threadpool(services.jobs.events, job_id, principal.tenant)
    now = services.jobs.clock()
    live = not job.status.is_terminal
    return {
        "job": view,
        "events": events,
        "steps": pages.timeline(events, now, job.finished_at),
        "total_s": ((job.finished_at or now) - job.created_at).total_seconds(),
        "run_s": ((job.finished_at or now) - job.started_at).total_seconds() if job.started_at else None,
        "can_cancel": live and (principal.is_admin or job.principal == principal.subject),
        "own_job": job.principal == principal.subject,
        "priority_min": PRIORITY_MIN,
        "priority_max": PRIORITY_MAX,
        "is_admin": principal.is_admin,
        "csrf": session.csrf,
    }


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, services: Services, session: SessionDep, job_id: str) -> Response:
    if session is None:
        return _to_sign_in(request, services)
    parsed = _parse_job_id(job_id)
    try:
        if parsed is None:
            raise JobNotFound(UUID(int=0))
        context = await _job_context(request, services, session, parsed)
    except JobNotFound:
        return _error_page(request, services, session, 404, "Job not found", "There is no such job here.")
    return _page(
        request,
        services,
        "job.html",
        session,
        live_url="/ui/events?" + urlencode({"job_id": str(parsed)}),
        panel_url=f"/ui/jobs/{parsed}/panel",
        **context,
    )


@router.get("/ui/jobs/{job_id}/panel", response_class=HTMLResponse)
async def job_panel(request: Request, services: Services, session: SessionDep, job_id: UUID) -> Response:
    """The job page's content alone, refetched when the job's status changes."""
    if session is None:
        return _to_sign_in(request, services)
    context = await _job_context(request, services, session, job_id)
    return _fragment(pages.render("_job_panel.html", context))


# -- actions -------------------------------------------------------------------------------------------


def _state_message(exc: InvalidTransition, what: str) -> Flash:
    return Flash("error", f"Cannot {what}: the job is {exc.current.value}.")


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel(
    request: Request, services: Services, session: SessionDep, job_id: UUID, csrf: Csrf = ""
) -> Response:
    """The owner's (or an admin's) cancel: pending jobs are cancelled at once, running ones stopped."""
    if session is None:
        return _to_sign_in(request, services)
    _check_csrf(request, session, csrf)
    actor = actor_of(session.principal)
    try:
        job = await run_in_threadpool(services.jobs.cancel, job_id, session.principal.tenant, actor)
    except InvalidTransition as exc:
        return _back_to_job(request, services, job_id, _state_message(exc, "cancel it"))
    message = "Job cancelled." if job.status is JobStatus.CANCELLED else "Stopping the job's processes…"
    return _back_to_job(request, services, job_id, Flash("ok", message))


@router.post("/ui/jobs/{job_id}/admin-cancel")
async def admin_cancel(
    request: Request, services: Services, session: SessionDep, job_id: UUID, csrf: Csrf = ""
) -> Response:
    """Admin cancel of any job of the tenant (audited); removes its stored inputs, as the API does."""
    if session is None:
        return _to_sign_in(request, services)
    _check_csrf(request, session, csrf)
    principal = _require_admin(session)
    try:
        job = await run_in_threadpool(
            lambda: services.jobs.cancel(job_id, principal.tenant, actor_of(principal), admin_action=True)
        )
    except InvalidTransition as exc:
        return _back_to_job(request, services, job_id, _state_message(exc, "cancel it"))
    await run_in_threadpool(_delete_blobs, services, job.inputs)
    return _back_to_job(request, services, job_id, Flash("ok", f"Admin cancel recorded: {job.status.value}."))


@router.post("/ui/jobs/{job_id}/priority")
async def change_priority(
    request: Request,
    services: Services,
    session: SessionDep,
    job_id: UUID,
    csrf: Csrf = "",
    priority: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    if session is None:
        return _to_sign_in(request, services)
    _check_csrf(request, session, csrf)
    principal = _require_admin(session)
    try:
        value = int(priority)
    except ValueError:
        value = PRIORITY_MIN - 1
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        return _back_to_job(
            request,
            services,
            job_id,
            Flash("error", f"The priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}."),
        )
    try:
        _, position = await run_in_threadpool(
            services.jobs.reprioritize, job_id, value, principal.tenant, actor_of(principal)
        )
    except InvalidTransition as exc:
        return _back_to_job(request, services, job_id, _state_message(exc, "change its priority"))
    where = f"new queue position: {position}" if position is not None else "not runnable yet"
    return _back_to_job(request, services, job_id, Flash("ok", f"Priority set to {value}; {where}."))


@router.post("/ui/jobs/{job_id}/retry")
async def retry(
    request: Request, services: Services, session: SessionDep, job_id: UUID, csrf: Csrf = ""
) -> Response:
    if session is None:
        return _to_sign_in(request, services)
    _check_csrf(request, session, csrf)
    principal = _require_admin(session)
    try:
        job = await run_in_threadpool(services.jobs.requeue, job_id, principal.tenant, actor_of(principal))
    except InvalidTransition as exc:
        return _back_to_job(request, services, job_id, _state_message(exc, "retry it"))
    position = await run_in_threadpool(services.jobs.queue_position, job.id, principal.tenant)
    where = f" (queue position {position})" if position is not None else ""
    return _back_to_job(request, services, job_id, Flash("ok", f"Job re-queued{where}."))


# -- audit log -----------------------------------------------------------------------------------------


@router.get("/ui/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request, services: Services, session: SessionDep, cursor: Cursor = None
) -> Response:
    if session is None:
        return _to_sign_in(request, services)
    if not session.principal.is_admin:
        return _error_page(
            request, services, session, 403, "Admins only", "The audit log is visible to admins only."
        )
    records = await run_in_threadpool(
        services.jobs.audit_log,
        session.principal.tenant,
        int(cursor) if cursor else None,
        AUDIT_PAGE_SIZE + 1,
    )
    page, more = records[:AUDIT_PAGE_SIZE], len(records) > AUDIT_PAGE_SIZE
    return _page(
        request,
        services,
        "audit.html",
        session,
        entries=[audit_view(r) for r in page],
        next_url=f"/ui/audit?cursor={page[-1].id}" if more and page else None,
    )


# -- live events and static files ----------------------------------------------------------------------


@router.get("/ui/events")
async def events(
    request: Request,
    services: Services,
    session: SessionDep,
    job_id: UUID | None = None,
    queue: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Response:
    """Server-Sent Events of the signed-in tenant's jobs (`job` events; `resync` after a lag)."""
    if session is None:
        return _to_sign_in(request, services)
    start = _parse_last_id(last_event_id, None)
    stream_events = _tenant_events(
        services, _hub(request), session.principal, start, job_id, queue, request.is_disconnected
    )

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async for kind, data, event_id in stream_events:
            if kind == "event":
                yield sse(event_id, "job", data)
            elif kind == "resync":
                yield sse(None, "resync", {"reason": "fell behind"})
            else:
                yield b": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in pages.STATIC_TYPES:
        raise ApiError(404, "not_found", "no such file")
    data, _ = pages.static_file(name)
    return Response(
        data,
        media_type=pages.STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
