"""API keys and the audit log: who may act, and what admins did."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from jobmill.domain.job import JsonObject

Role = Literal["user", "admin"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    tenant: str
    role: Role
    name: str | None
    secret_hash: str  # sha256 of the whole token; the token itself is shown once and never stored
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What the service asks the store to record, in the same transaction as the change it describes."""

    actor: str
    action: str
    before: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    tenant: str
    actor: str
    action: str
    job_id: UUID | None
    before: JsonObject | None
    after: JsonObject | None
