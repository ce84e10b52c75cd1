"""Request dependencies as type aliases: `Caller` (authenticated and rate limited), `Admin`, `Services`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from jobmill.access import AccessService
from jobmill.api.coalesce import Coalescer
from jobmill.api.errors import ApiError, RateLimited
from jobmill.api.ratelimit import RateLimiter
from jobmill.auth import AuthError, Principal
from jobmill.config import Settings
from jobmill.errors import Forbidden
from jobmill.service import Actor, JobService
from jobmill.storage.base import BlobStore
from jobmill.store.base import ApiKeyJobs

T = TypeVar("T")

MISSING_BEARER = "missing bearer token (Authorization: Bearer <key or JWT>)"

bearer = HTTPBearer(auto_error=False, description="an API key (jm_...) or a JWT")


@dataclass
class AppServices:
    """Everything a request may use; built once per app by create_app."""

    settings: Settings
    jobs: JobService
    access: AccessService
    blobs: BlobStore
    requests_limiter: RateLimiter
    auth_failures_limiter: RateLimiter
    secret_key: str
    # GET job reads of API-key callers, by key id: concurrent ones are made together (access.jobs_of_key).
    job_reads: Coalescer[str, UUID, ApiKeyJobs]
    # IPs whose failed authentications ran out: refused before any key is checked, until this time.
    blocked_until: dict[str, float] = field(default_factory=dict)


async def get_services(request: Request) -> AppServices:
    # async: FastAPI runs a plain-def dependency in the thread pool, a thread round trip per request.
    services: AppServices = request.app.state.services
    return services


Services = Annotated[AppServices, Depends(get_services)]


def _client_ip(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


async def _refuse(services: AppServices, ip: str, reason: str) -> ApiError:
    """Count a failed authentication against the caller's IP; past the burst, 429 instead of 401."""
    decision = await services.auth_failures_limiter.hit(f"ip:{ip}")
    if not decision.allowed:
        services.blocked_until[ip] = time.monotonic() + decision.retry_after_s
        return RateLimited(decision.retry_after_s, "failed authentications")
    return ApiError(401, "unauthenticated", reason, headers={"WWW-Authenticate": "Bearer"})


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, parsed as `bearer` parses it, or None."""
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(
    connection: HTTPConnection,
    services: AppServices,
    token: str | None,
    check: Callable[[str], Awaitable[T]],
    missing: str = MISSING_BEARER,
) -> T:
    """`await check(token)`: it authenticates the bearer token (AuthError), and may read more with the same
    store call. An IP whose failed authentications ran out is refused first, and a failure is counted.
    `connection` is a request or a WebSocket: both count against the same limits."""
    ip = _client_ip(connection)
    blocked = services.blocked_until.get(ip)
    if blocked is not None:
        if blocked > time.monotonic():
            raise RateLimited(blocked - time.monotonic(), "failed authentications")
        del services.blocked_until[ip]
    if not token:
        raise await _refuse(services, ip, missing)
    try:
        return await check(token)
    except AuthError as exc:
        raise await _refuse(services, ip, str(exc)) from None


async def admit(connection: HTTPConnection, services: AppServices, principal: Principal) -> None:
    """Let an authenticated principal in, within its rate limit (429 past it)."""
    connection.state.principal = principal
    decision = await services.requests_limiter.hit(f"principal:{principal.tenant}:{principal.subject}")
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)


async def admitted_principal(
    connection: HTTPConnection, services: AppServices, token: str | None, missing: str = MISSING_BEARER
) -> Principal:
    """The principal of `token`, authenticated and admitted: what every authenticated endpoint, the
    WebSocket included, goes through (ApiError 401 or 429 otherwise)."""

    async def check(token: str) -> Principal:
        return await run_in_threadpool(services.access.authenticate, token)

    principal = await authenticate(connection, services, token, check, missing)
    await admit(connection, services, principal)
    return principal


async def get_principal(request: Request, services: Services, credentials: Credentials) -> Principal:
    token = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else None
    return await admitted_principal(request, services, token)


Caller = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: Caller) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this operation needs the admin role")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]


def actor_of(principal: Principal) -> Actor:
    return Actor(principal.subject, principal.is_admin)
