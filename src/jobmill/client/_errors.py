"""What `jobmill.Client` and `jobmill.AsyncClient` raise.

JobmillError
└── ClientError                anything the client raises on purpose
    ├── ConnectionFailed       the service could not be reached, or the connection broke
    │   └── RequestTimeout     no answer in time (connect, read or pool timeout)
    ├── UnexpectedResponse     an answer that is not jobmill's (not JSON, or the wrong shape)
    ├── WaitTimeout            wait(timeout=...) ran out before the job finished (also a TimeoutError)
    ├── ConfirmationRequired   cancel(confirm=False) and the server asks for a confirm token
    └── ApiError               the server's error envelope: status, code, message, details, request_id
        ├── BadRequest             400 malformed (a job id that is not a UUID, a bad confirm token)
        ├── Unauthorized           401 no, unknown or revoked key
        ├── Forbidden              403 the key's role may not do this (admin endpoints)
        ├── NotFound               404 no such job (or another tenant's), no such output
        ├── Conflict               409 the job's state does not allow it; idempotency key reused
        ├── PayloadTooLarge        413
        ├── UnsupportedMediaType   415 a file type the server does not accept
        ├── Unprocessable          422 an invalid job (unknown kind, bad priority)
        ├── RateLimited            429, with `retry_after` in seconds
        └── ServerError            5xx
            └── ServiceUnavailable 503 the database or storage is away: retry later

These are distinct from the service-side errors in `jobmill.errors` (JobNotFound, InvalidTransition, ...),
which `JobService` raises in-process; every one of both families is a `JobmillError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobmill.errors import JobmillError

if TYPE_CHECKING:
    from jobmill.client._models import Job


class ClientError(JobmillError):
    """Base class of everything the HTTP client raises on purpose."""


class ConnectionFailed(ClientError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach jobmill at {url}: {reason}")
        self.url = url
        self.reason = reason


class RequestTimeout(ConnectionFailed):
    pass


class UnexpectedResponse(ClientError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WaitTimeout(ClientError, TimeoutError):
    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g}s")
        self.job = job
        self.timeout = timeout


class ConfirmationRequired(ClientError):
    """The server runs two-step cancels: send `token` back with `cancel(id, confirm_token=token)`."""

    def __init__(self, job: Job, token: str, expires_in_s: int) -> None:
        super().__init__(f"cancelling job {job.id} needs confirmation within {expires_in_s}s")
        self.job = job
        self.token = token
        self.expires_in_s = expires_in_s


class ApiError(ClientError):
    """An error answer of the API: `{"error": {"code", "message", "details", "request_id"}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class PayloadTooLarge(ApiError):
    pass


class UnsupportedMediaType(ApiError):
    pass


class Unprocessable(ApiError):
    pass


class RateLimited(ApiError):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        request_id: str | None = None,
        *,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(status, code, message, details, request_id)
        self.retry_after = retry_after


class ServerError(ApiError):
    pass


class ServiceUnavailable(ServerError):
    pass


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
}
