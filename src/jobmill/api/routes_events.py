"""Live streams: Server-Sent Events of one job or of the tenant, and the same over a WebSocket.

Per-job streams are exact: they replay from the store by per-job sequence number (`Last-Event-ID`) and
fill any gap from it, and they end after the terminal event. Tenant streams carry the global event id;
a client that fell behind gets a `resync` event (refetch the state you show) instead of unbounded
buffering on the server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from jobmill.api.deps import AppServices, Caller, Services
from jobmill.api.errors import ApiError
from jobmill.api.routes_jobs import ERRORS
from jobmill.api.views import event_view
from jobmill.auth import AuthError, Principal
from jobmill.domain.job import JobEvent
from jobmill.events.hub import EventHub, EventSubscription
from jobmill.handlers import NAME_PATTERN
from jobmill.store.base import EventListParams

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0
REPLAY_BATCH = 500
# Event ids and sequence numbers are 64-bit in the store; a bigger `after` must be refused (422) up front,
# not overflow the database driver once the stream has started.
MAX_EVENT_ID = 2**63 - 1
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse(event_id: int | None, event_type: str, data: Any) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"{head}event: {event_type}\ndata: {body}\n\n".encode()


def _hub(request: Request | WebSocket) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


def _parse_last_id(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or header == "":
        return 0
    if not header.isdigit() or len(header) > 18:
        raise ApiError(400, "malformed", "Last-Event-ID must be a non-negative integer")
    return int(header)


async def _job_events(services: AppServices, job_id: UUID, tenant: str, after_seq: int) -> list[JobEvent]:
    return await run_in_threadpool(services.jobs.events, job_id, tenant, after_seq)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "one job's events"}, **ERRORS},
    summary="Server-Sent Events of one job; replays after Last-Event-ID; ends after the terminal event",
)
async def job_event_stream(
    job_id: UUID,
    request: Request,
    principal: Caller,
    services: Services,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="same as Last-Event-ID, for EventSource URLs")
    ] = None,
) -> StreamingResponse:
    await run_in_threadpool(services.jobs.get, job_id, principal.tenant)  # 404 before the stream starts
    start = _parse_last_id(last_event_id, after)
    hub = _hub(request)
    # Subscribe before reading the backlog, so nothing committed in between is missed.
    subscription = hub.subscribe(principal.tenant, job_id)

    async def stream() -> AsyncIterator[bytes]:
        last = start
        try:
            while True:
                backlog = await _job_events(services, job_id, principal.tenant, last)
                for event in backlog:
                    yield sse(event.seq, event.type, event_view(event).model_dump(mode="json"))
                    last = event.seq
                    if event.status.is_terminal and event.type == "status":
                        return
                # Then wait for news; on news (or a lag) read from the store, which keeps the order exact.
                while True:
                    if await request.is_disconnected():
                        return
                    news = await subscription.next(KEEPALIVE_S)
                    subscription.take_lagged()
                    if news is None:
                        yield b": keep-alive\n\n"
                        continue
                    if news.seq > last:
                        break
        finally:
            hub.unsubscribe(subscription)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _tenant_events(
    services: AppServices,
    hub: EventHub,
    principal: Principal,
    after_id: int,
    job_id: UUID | None,
    queue: str | None,
    is_disconnected: Any,
) -> AsyncIterator[tuple[str, dict[str, Any] | None, int | None]]:
    """("event", view, id) for each event of the tenant (filtered), ("resync", None, None) after a lag,
    ("keepalive", None, None) when idle."""
    subscription: EventSubscription = hub.subscribe(principal.tenant, job_id)
    queues: dict[UUID, str] = {}

    async def queue_of(event: JobEvent) -> str | None:
        if event.job_id not in queues:
            try:
                job = await run_in_threadpool(services.jobs.get, event.job_id, principal.tenant)
            except Exception:
                return None
            if len(queues) > 10_000:
                queues.clear()
            queues[event.job_id] = job.queue
        return queues[event.job_id]

    async def wanted(event: JobEvent) -> bool:
        return queue is None or await queue_of(event) == queue

    try:
        # Events replayed here may also arrive through the subscription (taken first): skip those.
        replayed: set[int] = set()
        if after_id:
            params = EventListParams(
                job_id=job_id, tenant=principal.tenant, after_id=after_id, limit=REPLAY_BATCH
            )
            for event in await run_in_threadpool(services.jobs.store.event_list, params):
                replayed.add(event.id)
                if await wanted(event):
                    yield "event", event_view(event).model_dump(mode="json"), event.id
        while not await is_disconnected():
            news = await subscription.next(KEEPALIVE_S)
            if subscription.take_lagged():
                yield "resync", None, None
            if news is None:
                yield "keepalive", None, None
            elif news.id not in replayed and await wanted(news):
                yield "event", event_view(news).model_dump(mode="json"), news.id
    finally:
        hub.unsubscribe(subscription)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the tenant's events"}, **ERRORS},
    summary="Server-Sent Events of every job of the caller's tenant (filters: job_id, queue)",
)
async def tenant_event_stream(
    request: Request,
    principal: Caller,
    services: Services,
    job_id: UUID | None = None,
    queue: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
) -> StreamingResponse:
    start = _parse_last_id(last_event_id, after)
    events = _tenant_events(services, _hub(request), principal, start, job_id, queue, request.is_disconnected)

    async def stream() -> AsyncIterator[bytes]:
        async for kind, data, event_id in events:
            if kind == "event":
                yield sse(event_id, str(data["type"]) if data else "event", data)
            elif kind == "resync":
                yield sse(None, "resync", {"reason": "the stream fell behind; refetch the state you show"})
            else:
                yield b": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.websocket("/ws")
async def tenant_websocket(
    websocket: WebSocket,
    token: str | None = None,
    job_id: UUID | None = None,
    queue: Annotated[str | None, Query(pattern=NAME_PATTERN.pattern)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
) -> None:
    """The tenant's events as JSON messages. Authenticate with `?token=<key or JWT>`, or by sending
    `{"token": "..."}` as the first message (keeps the token out of URLs and logs)."""
    services: AppServices = websocket.app.state.services
    await websocket.accept()
    try:
        if token is None:
            first = await asyncio.wait_for(websocket.receive_json(), 10)
            token = first.get("token") if isinstance(first, dict) else None
        if not token:
            raise AuthError("missing token")
        principal = await run_in_threadpool(services.access.authenticate, token)
    except (AuthError, TimeoutError, ValueError, KeyError, WebSocketDisconnect) as exc:
        await websocket.send_json(
            {"type": "error", "error": {"code": "unauthenticated", "message": str(exc)}}
        )
        await websocket.close(code=4401)
        return

    disconnected = asyncio.Event()

    async def watch_client() -> None:
        try:
            while True:
                await websocket.receive_text()  # clients may ping; nothing else is expected
        except WebSocketDisconnect:
            disconnected.set()

    watcher = asyncio.create_task(watch_client())

    async def is_disconnected() -> bool:
        return disconnected.is_set()

    try:
        await websocket.send_json({"type": "ready", "tenant": principal.tenant})
        async for kind, data, _ in _tenant_events(
            services, _hub(websocket), principal, after or 0, job_id, queue, is_disconnected
        ):
            if kind == "event":
                await websocket.send_json({"type": "event", "event": data})
            elif kind == "resync":
                await websocket.send_json({"type": "resync"})
            else:
                await websocket.send_json({"type": "keepalive"})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        watcher.cancel()
