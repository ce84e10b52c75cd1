"""AccessService: API keys (create, list, revoke) and turning a bearer token into a Principal.

Keys are random tokens shown once; the store keeps only their sha256. A JWT is checked against the
configured key and its claims give the principal directly. Every lookup reads the store, so a revoked
key stops working at once on every API node (no cache to go stale).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

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
from jobmill.errors import ValidationError
from jobmill.handlers import check_name
from jobmill.store.base import ApiKeyInsertParams, ApiKeyListParams, ApiKeyRevokeParams, JobStore

ROLES: tuple[Role, ...] = ("user", "admin")


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
        parsed = parse_api_key(token)
        if parsed is not None:
            key_id, _ = parsed
            record = self.store.api_key_get(key_id)
            # Hash check even when the key is unknown or revoked would not hide more: the key id is not
            # secret. The comparison itself is constant-time.
            if record is None or not record.active or not verify_api_key_hash(token, record.secret_hash):
                raise AuthError("invalid or revoked API key")
            return api_key_principal(record.key_id, record.tenant, record.role)
        if looks_like_jwt(token):
            if self.jwt is None:
                raise AuthError("JWTs are not accepted: no JWT key is configured")
            return self.jwt.verify(token)
        raise AuthError("the bearer token is neither an API key nor a JWT")
