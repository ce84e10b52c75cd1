"""The jobmill HTTP API from Python: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

    from jobmill.client import Client

    with Client("http://127.0.0.1:8000", api_key) as jobs:
        job = jobs.submit("demo.checksum", files={"source": "song.wav"})
        done = jobs.wait(job.id, on_update=lambda j: print(j.status, j.stage, j.progress))
        jobs.download(done.id, "checksum.txt", "out/")

The error classes are drawn in `jobmill.client._errors`; everything here is also exported from `jobmill`.
"""

from jobmill.client._client import AsyncClient, Client
from jobmill.client._errors import (
    ApiError,
    BadRequest,
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
from jobmill.client._models import FileInfo, Job, JobEvent, JobFailure, JobPage, OutputFile

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "ConfirmationRequired",
    "Conflict",
    "ConnectionFailed",
    "FileInfo",
    "Forbidden",
    "Job",
    "JobEvent",
    "JobFailure",
    "JobPage",
    "NotFound",
    "OutputFile",
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
]
