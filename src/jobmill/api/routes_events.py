"""Live streams: Server-Sent Events of one job or of the tenant, and the same over a WebSocket.

Per-job streams are exact: they replay from the store by per-job sequence number (`Last-Event-ID`) and
fill any gap from it, and they end after the terminal event. Tenant streams carry the global event id;
a client that fell behind gets a `resync` event (refetch the state you show) instead of unbounded
buffering on the server.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from jobmill.api.deps import AppServices, Caller, Services, admitted_principal
from jobmill.api.errors import ApiError
from jobmill.api.routes_jobs import ERRORS
from jobmill.api.views import event_view
from jobmill.auth import Principal
from jobmill.domain.job import JobEvent
from jobmill.events.hub import EventHub, EventSubscription
from jobmill.handlers import NAME_PATTERN
from jobmill.store.base import EventListParams

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0
FIRST_MESSAGE_S = 10.0  # a WebSocket without ?token= must send {"token": ...} within this
WS_MISSING_TOKEN = 'missing token (?token=<key or JWT>, or {"token": "..."} as the first message)'
REPLAY_BATCH = 500
# Event ids and sequence numbers are 64-bit in the store; a bigger `after` must be refused (422) up front,
# not overflow the database driver once the stream has started.
MAX_EVENT_ID = 2**63 - 1
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse(event_id: int | None, event_type: str, data: Any) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"{head}event: {event_type}\ndata: {body}\n\n".encode()


class _EventJson:
    """The JSON of recent events, made once per event rather than once per subscriber: with a thousand
    streams open, serialising the same event a thousand times was most of the cost of fanning it out."""

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        # Keyed by (job id, per-job seq), not by the event id: ids are per database, and one process may
        # serve several (tests do), while job ids are UUIDs.
        self._cache: OrderedDict[tuple[UUID, int], str] = OrderedDict()

    def __call__(self, event: JobEvent) -> str:
        key = (event.job_id, event.seq)
        text = self._cache.get(key)
        if text is None:
            text = json.dumps(event_view(event).model_dump(mode="json"), separators=(",", ":"), default=str)
            self._cache[key] = text
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return text


_event_json = _EventJson()


def sse_event(event_id: int, event: JobEvent) -> bytes:
    return f"id: {event_id}\nevent: {event.type}\ndata: {_event_json(event)}\n\n".encode()


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


def _ends_stream(event: JobEvent) -> bool:
    return event.type == "status" and event.status.is_terminal


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
                    yield sse_event(event.seq, event)
                    last = event.seq
                    if _ends_stream(event):
                        return
                # Then follow the hub. The next event in sequence is sent as it comes; a gap (an event
                # the hub has not seen yet) or a lag (events the hub dropped for us) is filled from the
                # store, which keeps the stream exact. Reading the store only then, not on every event,
                # is what lets a thousand streams follow busy jobs.
                while True:
                    news = await subscription.next(KEEPALIVE_S)
                    if subscription.take_lagged():
                        break
                    if news is None:
                        # A client that went away is noticed here, when idle, or by the next write,
                        # which fails. Not checked per event: Starlette's check enters and cancels an
                        # anyio cancel scope, which with a thousand streams took a third of the server.
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    if news.seq > last + 1:
                        break
                    if news.seq == last + 1:
                        yield sse_event(news.seq, news)
                        last = news.seq
                        if _ends_stream(news):
                            return
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
    ("keepalive", None, None) when idle. (The dashboard's stream; the API's use `_tenant_feed`.)"""
    feed = _tenant_feed(services, hub, principal, after_id, job_id, queue, is_disconnected)
    async for kind, event in feed:
        if event is None:
            yield kind, None, None
        else:
            yield kind, event_view(event).model_dump(mode="json"), event.id


async def _tenant_feed(
    services: AppServices,
    hub: EventHub,
    principal: Principal,
    after_id: int,
    job_id: UUID | None,
    queue: str | None,
    is_disconnected: Any,
) -> AsyncIterator[tuple[str, JobEvent | None]]:
    """("event", event) for each event of the tenant (filtered), ("resync", None) after a lag,
    ("keepalive", None) when idle."""
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
                    yield "event", event
        while True:
            news = await subscription.next(KEEPALIVE_S)
            if subscription.take_lagged():
                yield "resync", None
            if news is None:
                # Checked when idle only (see job_event_stream); a busy stream's writes notice it.
                if await is_disconnected():
                    return
                yield "keepalive", None
            elif news.id not in replayed and await wanted(news):
                yield "event", news
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
    events = _tenant_feed(services, _hub(request), principal, start, job_id, queue, request.is_disconnected)

    async def stream() -> AsyncIterator[bytes]:
        async for kind, event in events:
            if event is not None:
                yield sse_event(event.id, event)
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
            first = await asyncio.wait_for(websocket.receive_json(), FIRST_MESSAGE_S)
            token = first.get("token") if isinstance(first, dict) else None
    except (TimeoutError, ValueError, KeyError):
        token = None  # no usable first message: refused (and counted) below as a missing token
    except WebSocketDisconnect:
        return
    try:
        # The same checks as every HTTP endpoint: failed tokens count against the client's IP, and a
        # principal's connections against its request rate limit.
        principal = await admitted_principal(websocket, services, token, WS_MISSING_TOKEN)
    except ApiError as exc:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details is not None:
            error["details"] = exc.details
        await websocket.send_json({"type": "error", "error": error})
        await websocket.close(code=4000 + exc.status)  # 4401 unauthenticated, 4429 rate limited
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
        async for kind, event in _tenant_feed(
            services, _hub(websocket), principal, after or 0, job_id, queue, is_disconnected
        ):
            if event is not None:
                await websocket.send_text(f'{{"type":"event","event":{_event_json(event)}}}')
            elif kind == "resync":
                await websocket.send_json({"type": "resync"})
            else:
                await websocket.send_json({"type": "keepalive"})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        watcher.cancel()
