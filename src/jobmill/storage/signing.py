"""Expiring, tamper-proof tokens for download URLs of the local backend (`/files/{token}`).

A token is `<payload>.<mac>`: the payload is URL-safe base64 (unpadded) of compact JSON holding the
caller's payload and the expiry; the MAC is HMAC-SHA256 over the payload's base64 text. It is not
encrypted: the key and file name in it are readable by whoever holds the URL, which is fine since the URL
grants exactly that download.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from jobmill.errors import ConfigError
from jobmill.storage.base import InvalidKey, InvalidSignature, check_key

# The secret key also signs other things (sessions); deriving a key per purpose means a MAC made for
# one purpose can never be replayed as valid for another.
_PURPOSE = b"jobmill/storage/download-token/v1"
# Bounds the work an attacker can make us do per request; real tokens are a few hundred characters.
MAX_TOKEN_LENGTH = 4096
_B64 = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class FileGrant:
    """What a verified download token allows: this key, served under this file name."""

    key: str
    filename: str | None


def sign_token(secret: str, payload: dict[str, Any], expires_at: int) -> str:
    body = json.dumps({"p": payload, "e": int(expires_at)}, separators=(",", ":"), sort_keys=True)
    body_b64 = _b64encode(body.encode("utf-8"))
    return f"{body_b64}.{_mac(_derive_key(secret), body_b64)}"


def verify_token(secret: str, token: str, now: float | None = None) -> dict[str, Any]:
    """The payload of a token this secret signed and that has not expired; InvalidSignature otherwise."""
    key = _derive_key(secret)
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise InvalidSignature("malformed token")
    body_b64, mac = token.split(".")
    if not _B64.fullmatch(body_b64) or not _B64.fullmatch(mac):
        raise InvalidSignature("malformed token")
    # The MAC is compared as text: base64 decoding accepts several spellings of the same bytes, and a
    # token must have exactly one valid form.
    if not hmac.compare_digest(mac.encode("ascii"), _mac(key, body_b64).encode("ascii")):
        raise InvalidSignature("bad token signature")
    try:
        body = json.loads(_b64decode(body_b64))
    except ValueError as exc:  # only reachable with the secret, i.e. a bug in the signer
        raise InvalidSignature("malformed token payload") from exc
    if not isinstance(body, dict) or not isinstance(body.get("p"), dict):
        raise InvalidSignature("malformed token payload")
    expires_at = body.get("e")
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise InvalidSignature("malformed token payload")
    if (time.time() if now is None else now) >= expires_at:
        raise InvalidSignature("token expired")
    payload: dict[str, Any] = body["p"]
    return payload


def sign_file_token(secret: str, key: str, filename: str | None, expires_at: int) -> str:
    return sign_token(secret, {"k": check_key(key), "fn": filename}, expires_at)


def verify_file_token(secret: str, token: str, now: float | None = None) -> FileGrant:
    """Verify a `/files/{token}` token and return the blob key and download name it grants."""
    payload = verify_token(secret, token, now)
    key, filename = payload.get("k"), payload.get("fn")
    if not isinstance(key, str) or not (filename is None or isinstance(filename, str)):
        raise InvalidSignature("token is not a file token")
    try:
        check_key(key)
    except InvalidKey as exc:
        raise InvalidSignature("token is not a file token") from exc
    return FileGrant(key=key, filename=filename)


def _derive_key(secret: str) -> bytes:
    if not secret:
        raise ConfigError("signed download URLs need a secret key: set JOBMILL_SECRET_KEY")
    return hmac.new(secret.encode("utf-8"), _PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, body_b64: str) -> str:
    return _b64encode(hmac.new(key, body_b64.encode("ascii"), hashlib.sha256).digest())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
