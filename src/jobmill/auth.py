"""Authentication primitives: who is calling, and with what right.

Two kinds of bearer token are accepted (DESIGN section 4):

- API keys, ``jm_<key_id>_<secret>``: created by ``jobmill keys create``, shown once, stored as a hash.
  This module makes, parses and checks them; the store keeps ``key_id -> tenant, role, secret_hash,
  revoked_at`` and turns a verified key into a :class:`Principal` with :func:`api_key_principal`.
- JWTs signed with the configured key (HS256 secret and/or RS256 public key), claims ``sub``, ``tenant``,
  ``role``: :class:`JwtVerifier`.

No I/O happens here. Every refusal is an :class:`AuthError` whose message is short, safe to show to the
caller and never contains the token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# Authenticated, but the role does not allow the operation (HTTP 403). One class for the whole project:
# the service layer raises jobmill.errors.Forbidden too, so it is re-exported here rather than redefined.
from jobmill.errors import ConfigError, Forbidden, JobmillError

__all__ = [
    "API_KEY_PREFIX",
    "AuthError",
    "Forbidden",
    "JwtVerifier",
    "NewApiKey",
    "Principal",
    "Role",
    "api_key_principal",
    "generate_api_key",
    "hash_api_key",
    "looks_like_jwt",
    "parse_api_key",
    "verify_api_key_hash",
]

Role = Literal["user", "admin"]
ROLES: Final[frozenset[str]] = frozenset(get_args(Role))

TENANT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: API-key principals are named "key:<key_id>"; JWT subjects may not use that namespace.
API_KEY_SUBJECT_PREFIX: Final = "key:"
MAX_SUBJECT_LEN: Final = 255
#: Tokens longer than this are refused before any parsing or cryptography (cheap DoS guard).
MAX_TOKEN_LEN: Final = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Every store query is scoped by ``tenant``."""

    tenant: str
    subject: str  # "key:<key_id>" for API keys, the JWT "sub" otherwise
    role: Role
    via: Literal["api_key", "jwt"]
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class AuthError(JobmillError):
    """No or bad credentials (HTTP 401). The message is safe to show; it never echoes the token."""


# --------------------------------------------------------------------------------------------- API keys

API_KEY_PREFIX: Final = "jm_"
_KEY_ID_BYTES: Final = 6  # 12 hex chars: public, only has to be unique (the store enforces it)
_SECRET_BYTES: Final = 32  # 256 bits of randomness -> 43 urlsafe base64 chars
_API_KEY_RE: Final = re.compile(r"jm_([0-9a-f]{12})_([A-Za-z0-9_-]{43,128})")


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key_id: str  # short public id (12 hex chars), safe to list and log
    secret: str  # the full token, shown ONCE to the user: "jm_<key_id>_<random>"
    secret_hash: str  # what the store keeps: hex sha256 of the full token

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"NewApiKey(key_id={self.key_id!r}, secret='***', secret_hash={self.secret_hash!r})"


def generate_api_key() -> NewApiKey:
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    token = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewApiKey(key_id=key_id, secret=token, secret_hash=hash_api_key(token))


def parse_api_key(token: str) -> tuple[str, str] | None:
    """``(key_id, token)`` if ``token`` has the shape of one of our API keys, else None.

    The shape says nothing about validity: look the key id up, then :func:`verify_api_key_hash`.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
        return None
    match = _API_KEY_RE.fullmatch(token)
    if match is None:
        return None
    return match.group(1), token


def hash_api_key(token: str) -> str:
    # A plain sha256 is enough here, unlike for passwords: the token carries 256 bits from a CSPRNG, so
    # even a leaked hash cannot be brute-forced, and a slow KDF (bcrypt, argon2) would only add tens of
    # milliseconds of CPU to every authenticated request, an easy DoS lever, for no security gain.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_api_key_hash(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash``, compared in constant time."""
    computed = hash_api_key(token).encode("ascii")
    return hmac.compare_digest(computed, stored_hash.strip().lower().encode("utf-8", "replace"))


def api_key_principal(key_id: str, tenant: str, role: Role) -> Principal:
    """The principal of a verified, unrevoked API key (for the store / API dependency)."""
    return Principal(
        tenant=tenant, subject=f"{API_KEY_SUBJECT_PREFIX}{key_id}", role=role, via="api_key", key_id=key_id
    )


# ------------------------------------------------------------------------------------------------- JWTs

_JWT_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url parts (the last may be empty: an unsigned token still *looks* like a
    JWT, so that it reaches :meth:`JwtVerifier.verify` and is refused with a clear reason)."""
    return isinstance(token, str) and len(token) <= MAX_TOKEN_LEN and _JWT_RE.fullmatch(token) is not None


_REQUIRED_CLAIMS: Final = ["exp", "sub", "tenant", "role"]


class JwtVerifier:
    """Verifies bearer JWTs and turns their claims into a :class:`Principal`.

    Only the algorithms whose key is configured are accepted: HS256 with ``hs256_secret``, RS256 with
    ``rs256_public_key`` (PEM). The key is chosen by the algorithm, never the other way round, so the
    RS256 -> HS256 key-confusion attack (HMAC-signing with the public key as the secret) cannot work.
    A verifier with neither key refuses every token.
    """

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        rs256_public_key: str | None = None,
        leeway_s: float = 30,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        if leeway_s < 0:
            raise ConfigError("JWT leeway must be >= 0 seconds")
        self._keys: dict[str, Any] = {}
        if hs256_secret:
            secret = hs256_secret.encode("utf-8")
            if b"-----BEGIN" in secret:
                raise ConfigError("the JWT HS256 secret looks like a PEM key; configure it as the RS256 key")
            if len(secret) < 32:  # RFC 7518 3.2: at least the size of the hash output
                raise ConfigError("the JWT HS256 secret must be at least 32 bytes long")
            self._keys["HS256"] = secret
        if rs256_public_key:
            # Settings often arrive through environment variables with the newlines escaped.
            pem = rs256_public_key.replace("\\n", "\n").strip().encode("ascii", "replace")
            try:
                public_key = load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"the JWT RS256 public key is not a PEM public key: {exc}") from None
            if not isinstance(public_key, RSAPublicKey):
                raise ConfigError("the JWT RS256 public key is not an RSA key")
            if public_key.key_size < 2048:
                raise ConfigError("the JWT RS256 public key must be at least 2048 bits")
            self._keys["RS256"] = public_key
        self._leeway = leeway_s
        self._issuer = issuer or None
        self._audience = audience or None
        self._jwt = jwt.PyJWT(
            options={
                "require": [*_REQUIRED_CLAIMS, *(["iss"] if self._issuer else [])],
                "verify_signature": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_iss": True,
                "verify_aud": True,
                "verify_sub": False,  # checked in _principal, with a clearer reason (and on PyJWT < 2.10)
                "enforce_minimum_key_length": True,
            }
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this verifier accepts (empty: JWT authentication is disabled)."""
        return tuple(self._keys)

    def verify(self, token: str) -> Principal:
        if not isinstance(token, str) or not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_LEN:
            raise AuthError("token too long")
        if not self._keys:
            raise AuthError("JWT authentication is not enabled")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys:
            # Covers "none", every unconfigured algorithm, and a missing or non-string "alg".
            raise AuthError("algorithm not allowed")
        try:
            claims = self._jwt.decode(
                token,
                key=self._keys[alg],
                algorithms=[alg],
                leeway=self._leeway,
                issuer=self._issuer,
                audience=self._audience,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim}") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm not allowed") from None
        except jwt.PyJWTError:  # DecodeError (bad base64/JSON, non-numeric exp...), InvalidKeyError, ...
            raise AuthError("malformed token") from None
        return self._principal(claims)

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        if (
            not isinstance(sub, str)
            or not sub
            or len(sub) > MAX_SUBJECT_LEN
            or not sub.isprintable()
            or sub.startswith(API_KEY_SUBJECT_PREFIX)
        ):
            raise AuthError("invalid claim sub")
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or TENANT_RE.fullmatch(tenant) is None:
            raise AuthError("invalid claim tenant")
        role = claims.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise AuthError("invalid claim role")
        return Principal(tenant=tenant, subject=sub, role=cast(Role, role), via="jwt")
