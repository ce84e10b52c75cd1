"""ASGI middleware: request ids and JSON access logs; request-body limits enforced while streaming.

Both are plain ASGI (not BaseHTTPMiddleware) so that streaming responses (downloads, SSE) pass through
untouched and cheaply.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from typing import Any

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobmill.metrics import HTTP_REQUESTS

access_log = logging.getLogger("jobmill.access")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The last value of header `name` (as dict(scope["headers"]) would have it)."""
    found = None
    for key, value in scope.get("headers") or ():
        if key == name:
            found = value
    return None if found is None else bytes(found)


def new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex, but from the process's PRNG (reseeded in forked
    # children) rather than a getrandom() system call per request: an id correlates logs, it guards nothing.
    return f"{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    """Gives every request an id (the caller's X-Request-ID when sane), returns it, logs one JSON line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, int], Counter] = {}  # HTTP_REQUESTS children, labels() once each

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = (_header(scope, b"x-request-id") or b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            counter = self._counters.get((scope["method"], status))
            if counter is None:
                counter = HTTP_REQUESTS.labels(scope["method"], str(status))
                self._counters[scope["method"], status] = counter
            counter.inc()
            if access_log.isEnabledFor(logging.INFO):
                principal = state.get("principal")
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "tenant": getattr(principal, "tenant", None),
                    "principal": getattr(principal, "subject", None),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                }
                access_log.info(json.dumps(record, separators=(",", ":")))


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reading lets it through (it turns other errors into 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class TruncatedMultipart(HTTPException):
    """A multipart body that ended before its closing boundary: its last part may be cut short.

    The multipart parser silently drops an unfinished part, so without this check a submission could be
    accepted with a file missing or cut; it is refused before the body reaches the parser's end.
    """

    def __init__(self) -> None:
        super().__init__(400, "the multipart body ends before its closing boundary (truncated upload)")


# A request with none of these has no body to limit (nor a multipart one to check).
BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"content-type"})
MULTIPART_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
TAIL_KEPT = 1024  # room for the closing delimiter plus a short epilogue


class BodyLimitMiddleware:
    """Refuses bodies over the limit: at once by Content-Length, else as soon as the bytes arrive.

    Multipart submissions get `multipart_limit`; every other body `json_limit`, so a huge or deeply
    nested JSON document is refused before anyone parses it.
    """

    def __init__(self, app: ASGIApp, *, json_limit: int, multipart_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.multipart_limit = multipart_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or ()
        if scope.get("http_version") in ("1.0", "1.1") and not any(
            key in BODY_HEADERS for key, _ in raw_headers
        ):
            # HTTP/1 framing: no Content-Length and no Transfer-Encoding is no body (RFC 9112, 6.3).
            await self.app(scope, receive, send)
            return
        headers = dict(raw_headers)
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit = self.multipart_limit if content_type.startswith("multipart/") else self.json_limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, send, limit)
            return
        received = 0
        response_started = False
        boundary = MULTIPART_BOUNDARY.search(headers.get(b"content-type", b""))
        closing = b"--" + boundary.group(1) + b"--" if boundary else None
        tail = b""

        async def limited_receive() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge(limit)
                if closing is not None:
                    tail = (tail + chunk)[-TAIL_KEPT:]
                    if not message.get("more_body", False) and closing not in tail:
                        raise TruncatedMultipart()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await _too_large(scope, send, limit)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(
        {
            "error": {
                "code": "too_large",
                "message": f"the request body is larger than {limit} bytes",
                "details": {"limit": limit},
                "request_id": request_id,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
