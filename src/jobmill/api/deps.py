"""Request dependencies as type aliases: `Caller` (authenticated and rate limited), `Admin`, `Services`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from jobmill.access import AccessService
from jobmill.api.errors import ApiError, RateLimited
from jobmill.api.ratelimit import RateLimiter
from jobmill.auth import AuthError, Principal
from jobmill.config import Settings
from jobmill.errors import Forbidden
from jobmill.service import Actor, JobService
from jobmill.storage.base import BlobStore

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
    # IPs whose failed authentications ran out: refused before any key is checked, until this time.
    blocked_until: dict[str, float] = field(default_factory=dict)


def get_services(request: Request) -> AppServices:
    services: AppServices = request.app.state.services
    return services


Services = Annotated[AppServices, Depends(get_services)]


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _refuse(services: AppServices, ip: str, reason: str) -> ApiError:
    """Count a failed authentication against the caller's IP; past the burst, 429 instead of 401."""
    decision = await services.auth_failures_limiter.hit(f"ip:{ip}")
    if not decision.allowed:
        services.blocked_until[ip] = time.monotonic() + decision.retry_after_s
        return RateLimited(decision.retry_after_s, "failed authentications")
    return ApiError(401, "unauthenticated", reason, headers={"WWW-Authenticate": "Bearer"})


async def get_principal(
    request: Request,
    services: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    ip = _client_ip(request)
    blocked = services.blocked_until.get(ip)
    if blocked is not None:
        if blocked > time.monotonic():
            raise RateLimited(blocked - time.monotonic(), "failed authentications")
        del services.blocked_until[ip]
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise await _refuse(services, ip, "missing bearer token (Authorization: Bearer <key or JWT>)")
    try:
        principal = await run_in_threadpool(services.access.authenticate, credentials.credentials)
    except AuthError as exc:
        raise await _refuse(services, ip, str(exc)) from None
    request.state.principal = principal
    decision = await services.requests_limiter.hit(f"principal:{principal.tenant}:{principal.subject}")
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: Caller) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this operation needs the admin role")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]


def actor_of(principal: Principal) -> Actor:
    return Actor(principal.subject, principal.is_admin)
