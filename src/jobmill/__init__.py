"""jobmill: a self-hosted async job service.

Write handlers as plain functions, run them with `jobmill worker`, submit and follow jobs through the
service. The names below are the public Python API; everything else may change between versions.
"""

import typing as _typing

from jobmill.domain.job import Job, JobEvent, JobStatus
from jobmill.errors import (
    ConfigError,
    InvalidTransition,
    JobmillError,
    JobNotFound,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    UnknownKind,
    ValidationError,
)
from jobmill.handlers import HandlerRegistry, default_registry, handler
from jobmill.service import JobService, RetryPolicy, SubmitRequest
from jobmill.store import JobStore, open_store
from jobmill.worker.context import JobCancelled, JobContext, SyncJobContext
from jobmill.worker.supervisor import ProcessFailed, RunResult
from jobmill.worker.worker import Worker, WorkerConfig

# The HTTP client (httpx and friends) is imported on first use: a worker process never needs it, and
# it is a third of the package's import time.
_CLIENT_NAMES = frozenset(
    {
        "ApiError",
        "AsyncClient",
        "BadRequest",
        "Client",
        "ClientError",
        "ConfirmationRequired",
        "Conflict",
        "ConnectionFailed",
        "Forbidden",
        "NotFound",
        "PayloadTooLarge",
        "RateLimited",
        "RequestTimeout",
        "ServerError",
        "ServiceUnavailable",
        "Unauthorized",
        "UnexpectedResponse",
        "Unprocessable",
        "UnsupportedMediaType",
        "WaitTimeout",
    }
)

if _typing.TYPE_CHECKING:
    from jobmill.client import (
        ApiError,
        AsyncClient,
        BadRequest,
        Client,
        ClientError,
        ConfirmationRequired,
        Conflict,
        ConnectionFailed,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        RateLimited,
        RequestTimeout,
        ServerError,
        ServiceUnavailable,
        Unauthorized,
        UnexpectedResponse,
        Unprocessable,
        UnsupportedMediaType,
        WaitTimeout,
    )


def __getattr__(name: str) -> object:
    if name in _CLIENT_NAMES:
        import jobmill.client

        return getattr(jobmill.client, name)
    raise AttributeError(f"module 'jobmill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})


__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "ConfigError",
    "ConfirmationRequired",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "HandlerRegistry",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobNotFound",
    "JobService",
    "JobStatus",
    "JobStore",
    "JobmillError",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "ProcessFailed",
    "RateLimited",
    "RequestTimeout",
    "RetryPolicy",
    "RunResult",
    "ServerError",
    "ServiceUnavailable",
    "StoreError",
    "StoreUnavailable",
    "SubmitRequest",
    "SyncJobContext",
    "Unauthorized",
    "UnexpectedResponse",
    "UnknownKind",
    "Unprocessable",
    "UnsupportedMediaType",
    "ValidationError",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "default_registry",
    "handler",
    "open_store",
]
