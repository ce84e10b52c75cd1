"""AccessService: API keys (create, list, revoke) and turning a bearer token into a Principal.

Keys are random tokens shown once; the store keeps only their sha256. A JWT is checked against the
configured key and its claims give the principal directly. Every lookup reads the store, so a revoked
key stops working at once on every API node (no cache to go stale).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from jobmill.auth import (
    AuthError,
    JwtVerifier,
    Principal,
    api_key_principal,
    generate_api_key,
    looks_like_jwt,
    parse_api_key,
    verify_api_key_hash,
)
from jobmill.domain.admin import ApiKeyRecord, AuditEntry, Role
from jobmill.domain.job import Job, JobStatus
from jobmill.errors import JobNotFound, ValidationError
from jobmill.handlers import check_name
from jobmill.store.base import (
    ApiKeyInsertParams,
    ApiKeyJobs,
    ApiKeyListParams,
    ApiKeyRevokeParams,
    JobGetManyByApiKeyParams,
    JobGetParams,
    JobQueuePositionParams,
    JobStore,
)

ROLES: tuple[Role, ...] = ("user", "admin")


@dataclass(frozen=True, slots=True)
class CallerJob:
    """A bearer token's principal and, in its tenant, the job it asked for."""

    principal: Principal
    job_id: UUID
    job: Job | None  # None: no such job in the principal's tenant
    position: int | None  # its queue position while pending

    def visible_job(self) -> Job:
        """The job; JobNotFound (404) for an unknown job and for another tenant's, alike."""
        if self.job is None:
            raise JobNotFound(self.job_id)
        return self.job


class AccessService:
    def __init__(
        self, store: JobStore, clock: Callable[[], datetime], jwt: JwtVerifier | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.jwt = jwt

    def create_key(self, tenant: str, role: str, name: str | None, actor: str) -> tuple[ApiKeyRecord, str]:
        """A new key for `tenant`; returns its record and the token, which is never shown again."""
        check_name("tenant", tenant)
        if role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if name is not None and len(name) > 200:
            raise ValidationError("a key name is at most 200 characters")
        new = generate_api_key()
        record = ApiKeyRecord(new.key_id, tenant, role, name, new.secret_hash, self.clock())
        self.store.api_key_insert(ApiKeyInsertParams(record, AuditEntry(actor, "key.create")))
        return record, new.secret

    def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return self.store.api_key_list(ApiKeyListParams(tenant))

    def revoke_key(self, key_id: str, actor: str, tenant: str | None = None) -> ApiKeyRecord | None:
        return self.store.api_key_revoke(
            ApiKeyRevokeParams(key_id, tenant, self.clock(), AuditEntry(actor, "key.revoke"))
        )

    def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token; AuthError (401) for anything unknown, revoked or invalid."""
        key_id = self.api_key_id(token)
        if key_id is not None:
            return self._key_principal(token, self.store.api_key_get(key_id))
        return self._token_principal(token)

    @staticmethod
    def api_key_id(token: str) -> str | None:
        """The key id of a token shaped like an API key (which says nothing of its validity), else None."""
        parsed = parse_api_key(token)
        return None if parsed is None else parsed[0]

    def jobs_of_key(self, key_id: str, job_ids: Sequence[UUID], *, wait: bool = True) -> ApiKeyJobs:
        """The API key `key_id` and the jobs of its tenant among `job_ids`, with their queue positions, in
        one store call (GET job of API-key callers: the API's most frequent request). wait=False: at once,
        or WouldBlock (see JobGetManyByApiKeyParams)."""
        return self.store.job_get_many_by_api_key(
            JobGetManyByApiKeyParams(key_id, job_ids, self.clock(), wait=wait)
        )

    @classmethod
    def caller_job(cls, token: str, job_id: UUID, found: ApiKeyJobs) -> CallerJob:
        """What jobs_of_key read, for the caller holding `token`: its key verified exactly as authenticate
        verifies it (AuthError), then the job it asked for."""
        principal = cls._key_principal(token, found.key)
        return CallerJob(principal, job_id, found.jobs.get(job_id), found.positions.get(job_id))

    def authenticate_and_get_job(self, token: str, job_id: UUID) -> CallerJob:
        """authenticate(token), and the job `job_id` of the principal's tenant with its queue position."""
        key_id = self.api_key_id(token)
        if key_id is not None:
            return self.caller_job(token, job_id, self.jobs_of_key(key_id, [job_id]))
        principal = self._token_principal(token)
        job = self.store.job_get(JobGetParams(job_id, principal.tenant))
        position = None
        if job is not None and job.status is JobStatus.PENDING:
            position = self.store.job_queue_position(
                JobQueuePositionParams(job_id, self.clock(), principal.tenant)
            )
        return CallerJob(principal, job_id, job, position)

    @staticmethod
    def _key_principal(token: str, record: ApiKeyRecord | None) -> Principal:
        # Hash check even when the key is unknown or revoked would not hide more: the key id is not
        # secret. The comparison itself is constant-time.
        if record is None or not record.active or not verify_api_key_hash(token, record.secret_hash):
            raise AuthError("invalid or revoked API key")
        return api_key_principal(record.key_id, record.tenant, record.role)

    def _token_principal(self, token: str) -> Principal:
        """The principal of a bearer token that is not an API key: a JWT, or AuthError."""
        if looks_like_jwt(token):
            if self.jwt is None:
                raise AuthError("JWTs are not accepted: no JWT key is configured")
            return self.jwt.verify(token)
        raise AuthError("the bearer token is neither an API key nor a JWT")
