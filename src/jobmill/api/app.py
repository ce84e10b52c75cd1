"""create_app(): the HTTP service, built from settings (or from given parts, for tests and embedding)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from jobmill.access import AccessService
from jobmill.api.coalesce import Coalescer
from jobmill.api.deps import AppServices
from jobmill.api.errors import install_error_handlers
from jobmill.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from jobmill.api.ratelimit import open_rate_limiter
from jobmill.api.routes_events import router as events_router
from jobmill.api.routes_jobs import add_get_job_route
from jobmill.api.routes_jobs import router as jobs_router
from jobmill.api.routes_system import files_router
from jobmill.api.routes_system import router as system_router
from jobmill.api.schemas import JobCreate
from jobmill.auth import JwtVerifier
from jobmill.config import Settings
from jobmill.dashboard import router as dashboard_router
from jobmill.events import EventFollower, EventHub
from jobmill.handlers import HandlerRegistry
from jobmill.metrics import REGISTRY, QueueGauges
from jobmill.service import JobService, RetryPolicy, utc_now
from jobmill.storage import open_blobstore
from jobmill.storage.base import BlobStore
from jobmill.store import JobStore, open_store

API_PREFIX = "/api/v1"
_queue_gauges: QueueGauges | None = None
_gauge_services: AppServices | None = None


def resolve_secret_key(settings: Settings) -> str:
    """JOBMILL_SECRET_KEY, or (single machine) a random key kept next to the database in ./var."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.workdir_root).parent / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def build_services(
    settings: Settings,
    *,
    store: JobStore | None = None,
    blobs: BlobStore | None = None,
    registry: HandlerRegistry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> AppServices:
    secret = resolve_secret_key(settings)
    store = store or open_store(settings.database_url)
    jobs = JobService(
        store,
        registry=registry,
        clock=clock,
        lease_s=settings.lease_s,
        retry=RetryPolicy(settings.retry_base_s, settings.retry_max_s),
        cache_ttl_s=settings.result_cache_ttl_s,
    )
    jwt = None
    if settings.jwt_hs256_secret or settings.jwt_rs256_public_key:
        jwt = JwtVerifier(
            hs256_secret=settings.jwt_hs256_secret,
            rs256_public_key=settings.jwt_rs256_public_key,
            leeway_s=settings.jwt_leeway_s,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    access = AccessService(store, clock, jwt)
    return AppServices(
        settings=settings,
        jobs=jobs,
        access=access,
        blobs=blobs or open_blobstore(settings.storage_url, secret_key=secret),
        requests_limiter=open_rate_limiter(
            settings.redis_url, settings.rate_limit_per_s, settings.rate_limit_burst
        ),
        auth_failures_limiter=open_rate_limiter(
            settings.redis_url, settings.auth_rate_limit_per_s, settings.auth_rate_limit_burst
        ),
        secret_key=secret,
        job_reads=Coalescer(access.jobs_of_key, partial(access.jobs_of_key, wait=False)),
    )


def create_app(
    settings: Settings | None = None,
    *,
    services: AppServices | None = None,
    registry: HandlerRegistry | None = None,
) -> FastAPI:
    """The jobmill HTTP app. Resources given in `services` are the caller's to close; others are closed
    when the app shuts down."""
    settings = settings or Settings.from_env()
    owned = services is None
    app_services = services or build_services(settings, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        global _queue_gauges, _gauge_services
        # The gauges read the store of the app that started last (one app per process in practice); not
        # the first app's, whose store may be closed by now.
        _gauge_services = app_services
        if _queue_gauges is None:
            _queue_gauges = QueueGauges(
                lambda: _gauge_services.jobs.queue_stats(None) if _gauge_services is not None else []
            )
            REGISTRY.register(_queue_gauges)
        hub = EventHub()
        follower = EventFollower(app_services.jobs.store, hub, poll_interval_s=settings.poll_interval_s)
        app.state.hub = hub
        await follower.start()
        try:
            yield
        finally:
            if _gauge_services is app_services:
                _gauge_services = None  # its store is about to close
            await follower.stop()
            await app_services.requests_limiter.close()
            await app_services.auth_failures_limiter.close()
            if owned:
                app_services.blobs.close()
                app_services.jobs.store.close()

    app = FastAPI(
        title="jobmill",
        version="1",
        description="Submit long-running jobs, follow their progress and queue position, cancel them.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = app_services
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware, json_limit=settings.max_json_bytes, multipart_limit=settings.max_request_bytes
    )
    app.add_middleware(RequestContextMiddleware)
    add_get_job_route(app.router, API_PREFIX)  # the most frequent request: on the app itself, first
    app.include_router(jobs_router, prefix=API_PREFIX)
    app.include_router(events_router, prefix=API_PREFIX)
    app.include_router(system_router, prefix=API_PREFIX)
    app.include_router(files_router)
    app.include_router(dashboard_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            # The submit body is read by hand (JSON or multipart), so its model is added explicitly.
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["JobCreate"] = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
