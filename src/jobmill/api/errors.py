"""The error envelope: every error answer is {"error": {"code", "message", "details", "request_id"}}.

Exceptions raised below the HTTP layer are mapped to status codes here, in one table, so routes only
raise and never build error responses themselves.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobmill.auth import AuthError
from jobmill.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidTransition,
    JobmillError,
    JobNotFound,
    StoreUnavailable,
    UnknownKind,
    ValidationError,
)
from jobmill.storage.base import (
    BlobNotFound,
    InvalidKey,
    InvalidSignature,
    StorageError,
    UnsupportedMediaType,
    UploadTooLarge,
)

log = logging.getLogger("jobmill.api")


class ApiError(Exception):
    """An error answer decided by the HTTP layer itself (malformed ids, missing headers, rate limits)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


class RateLimited(ApiError):
    def __init__(self, retry_after_s: float, what: str = "requests") -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            429,
            "rate_limited",
            f"too many {what}; retry after {seconds}s",
            {"retry_after_s": seconds},
            {"Retry-After": str(seconds)},
        )


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {"code": code, "message": message, "details": details, "request_id": request_id_of(request)}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _for_domain_error(exc: JobmillError) -> tuple[int, str, Any]:
    """Status, code and details of an error raised below the HTTP layer."""
    if isinstance(exc, JobNotFound):
        return 404, "not_found", None
    if isinstance(exc, InvalidTransition):
        return 409, "invalid_state", {"status": exc.current.value}
    if isinstance(exc, IdempotencyConflict):
        return 409, "idempotency_conflict", {"job_id": str(exc.job_id)}
    if isinstance(exc, UnknownKind):
        return 422, "unknown_kind", {"kind": exc.kind}
    if isinstance(exc, ValidationError):
        return 422, "invalid", None
    if isinstance(exc, AuthError):
        return 401, "unauthenticated", None
    if isinstance(exc, Forbidden):
        return 403, "forbidden", None
    if isinstance(exc, UploadTooLarge):
        return 413, "too_large", None
    if isinstance(exc, UnsupportedMediaType):
        return 415, "unsupported_media_type", None
    if isinstance(exc, InvalidSignature):
        return 403, "invalid_signature", None
    if isinstance(exc, BlobNotFound):
        return 404, "not_found", None
    if isinstance(exc, InvalidKey):
        return 500, "internal", None  # a key jobmill would never make: a bug, not an outage
    # Any other storage failure (S3 down or refusing, a bucket gone, a disk full or unwritable) is the
    # service's trouble, not the request's: retry later.
    if isinstance(exc, StoreUnavailable | StorageError):
        return 503, "unavailable", None
    return 500, "internal", None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(JobmillError)
    async def on_domain_error(request: Request, exc: JobmillError) -> JSONResponse:
        status, code, details = _for_domain_error(exc)
        if status >= 500:
            log.error("request failed: %s", exc, exc_info=exc)
            message = "the service is unavailable; retry later" if status == 503 else "internal error"
        else:
            message = str(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(request, status, code, message, details, headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        # A malformed path parameter (a job id that is not a UUID) is a bad request, not an invalid body.
        status = 400 if any(d["loc"][:1] == ["path"] for d in details) else 422
        code = "malformed" if status == 400 else "invalid"
        return error_response(request, status, code, "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "malformed", 413: "too_large"}
        limit = getattr(exc, "limit", None)  # BodyTooLarge, as the middleware's own 413 says
        return error_response(
            request,
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            {"limit": limit} if isinstance(limit, int) else None,
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        # Starlette answers this one from its outermost middleware, outside RequestContextMiddleware,
        # which therefore cannot add the header: add it here.
        request_id = request_id_of(request)
        headers = {"X-Request-ID": request_id} if request_id else None
        return error_response(request, 500, "internal", "internal error", headers=headers)
