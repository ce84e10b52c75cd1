"""Dashboard sessions: a signed, expiring cookie holding the API key, plus CSRF tokens and flash messages.

The session cookie is `<payload>.<mac>` from `jobmill.storage.signing`, made with a key derived for this
purpose only (a download token can never pass as a session, nor the reverse). It is HttpOnly, SameSite
Strict and Secure on https. The key inside is checked again on every request, so a revoked key ends its
sessions at once. Each session carries a random CSRF token; every POST must send it back in the `csrf`
form field (or the `X-CSRF-Token` header) and it is compared in constant time. Before sign-in, a separate
random cookie plays the same role for the sign-in form (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Response

from jobmill.api.deps import AppServices
from jobmill.auth import Principal
from jobmill.storage.base import InvalidSignature
from jobmill.storage.signing import sign_token, verify_token

SESSION_COOKIE = "jobmill_session"
LOGIN_CSRF_COOKIE = "jobmill_login_csrf"
FLASH_COOKIE = "jobmill_flash"
SESSION_TTL_S = 12 * 3600
FLASH_TTL_S = 60
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
MAX_KEY_LENGTH = 4096

FlashKind = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in dashboard user: who they are (checked against the store just now) and their CSRF token."""

    principal: Principal
    csrf: str


@dataclass(frozen=True, slots=True)
class Flash:
    kind: FlashKind
    message: str


def _purpose_secret(services: AppServices, purpose: str) -> str:
    return hmac.new(
        services.secret_key.encode(), f"jobmill/dashboard/{purpose}/v1".encode(), hashlib.sha256
    ).hexdigest()


def is_https(request: Request, services: AppServices) -> bool:
    return request.url.scheme == "https" or services.settings.public_url.lower().startswith("https://")


def _set_cookie(
    response: Response, request: Request, services: AppServices, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request, services),
    )


def _clear_cookie(response: Response, request: Request, services: AppServices, name: str) -> None:
    response.delete_cookie(
        name, path="/", httponly=True, samesite="strict", secure=is_https(request, services)
    )


# -- the session --------------------------------------------------------------------------------------


def start_session(response: Response, request: Request, services: AppServices, api_key: str) -> None:
    expires_at = int(time.time()) + SESSION_TTL_S
    payload = {"k": api_key, "c": secrets.token_urlsafe(32)}
    token = sign_token(_purpose_secret(services, "session"), payload, expires_at)
    _set_cookie(response, request, services, SESSION_COOKIE, token, SESSION_TTL_S)
    _clear_cookie(response, request, services, LOGIN_CSRF_COOKIE)


def end_session(response: Response, request: Request, services: AppServices) -> None:
    _clear_cookie(response, request, services, SESSION_COOKIE)


def read_session_cookie(request: Request, services: AppServices) -> tuple[str, str] | None:
    """(api key, csrf token) from a valid, unexpired session cookie; None otherwise."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        payload = verify_token(_purpose_secret(services, "session"), raw)
    except InvalidSignature:
        return None
    key, csrf = payload.get("k"), payload.get("c")
    if not isinstance(key, str) or not isinstance(csrf, str) or not key or not csrf:
        return None
    return key, csrf


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


# -- sign-in form CSRF (before there is a session) ----------------------------------------------------


def login_csrf(request: Request) -> str:
    """The current sign-in CSRF token (the cookie's), or a new one to set."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE)
    if current and 20 <= len(current) <= 100 and current.replace("-", "").replace("_", "").isalnum():
        return current
    return secrets.token_urlsafe(32)


def set_login_csrf(response: Response, request: Request, services: AppServices, token: str) -> None:
    _set_cookie(response, request, services, LOGIN_CSRF_COOKIE, token, SESSION_TTL_S)


# -- flash messages (one-shot, signed so that nobody can make the dashboard say things) ---------------


def set_flash(response: Response, request: Request, services: AppServices, flash: Flash) -> None:
    payload = {"k": flash.kind, "m": flash.message[:500]}
    token = sign_token(_purpose_secret(services, "flash"), payload, int(time.time()) + FLASH_TTL_S)
    _set_cookie(response, request, services, FLASH_COOKIE, token, FLASH_TTL_S)


def take_flash(request: Request, services: AppServices) -> Flash | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        payload = verify_token(_purpose_secret(services, "flash"), raw)
    except InvalidSignature:
        return None
    kind, message = payload.get("k"), payload.get("m")
    if kind not in ("ok", "error") or not isinstance(message, str):
        return None
    return Flash("ok" if kind == "ok" else "error", message)


def clear_flash(response: Response, request: Request, services: AppServices) -> None:
    if FLASH_COOKIE in request.cookies:
        _clear_cookie(response, request, services, FLASH_COOKIE)
