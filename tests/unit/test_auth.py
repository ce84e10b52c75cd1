from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jobmill import errors
from jobmill.auth import (
    AuthError,
    Forbidden,
    JwtVerifier,
    Principal,
    api_key_principal,
    generate_api_key,
    hash_api_key,
    looks_like_jwt,
    parse_api_key,
    verify_api_key_hash,
)
from jobmill.errors import ConfigError, JobmillError

SECRET = "s" * 40
OTHER_SECRET = "t" * 40


def _rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    return _rsa_pair()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "tenant": "acme", "role": "user", "exp": int(time.time()) + 300}
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_token(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    message = str(info.value)
    assert not token or token not in message  # never echo the token
    return message


# ---------------------------------------------------------------------------------------------- API keys


def test_generated_key_shape() -> None:
    key = generate_api_key()
    assert re.fullmatch(r"[0-9a-f]{12}", key.key_id)
    assert key.secret.startswith(f"jm_{key.key_id}_")
    random_part = key.secret[len(f"jm_{key.key_id}_") :]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", random_part)  # >= 32 bytes, urlsafe base64
    assert key.secret_hash == hashlib.sha256(key.secret.encode()).hexdigest()
    assert key.secret not in repr(key)
    assert parse_api_key(key.secret) == (key.key_id, key.secret)
    assert not looks_like_jwt(key.secret)


def test_generated_keys_are_unique() -> None:
    keys = [generate_api_key() for _ in range(500)]
    assert len({k.key_id for k in keys}) == 500
    assert len({k.secret for k in keys}) == 500
    assert len({k.secret_hash for k in keys}) == 500


def test_hash_verify() -> None:
    key = generate_api_key()
    assert hash_api_key(key.secret) == key.secret_hash
    assert verify_api_key_hash(key.secret, key.secret_hash)
    other = generate_api_key()
    assert not verify_api_key_hash(other.secret, key.secret_hash)
    assert not verify_api_key_hash(key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"), key.secret_hash)
    assert not verify_api_key_hash(key.secret, "")
    assert not verify_api_key_hash(key.secret, "é" * 64)  # garbage in the store is no crash


@pytest.mark.parametrize(
    "token",
    [
        "",
        "jm_",
        "jm_0123456789ab",
        "jm_0123456789ab_",
        "jm_0123456789ab_short",
        "jm_0123456789AB_" + "a" * 43,  # key id is lower-case hex
        "jm_0123456789a_" + "a" * 43,  # key id too short
        "jx_0123456789ab_" + "a" * 43,
        "jm_0123456789ab_" + "a" * 42 + "!",
        "jm_0123456789ab_" + "a" * 43 + "\n",
        " jm_0123456789ab_" + "a" * 43,
        "jm_0123456789ab_" + "a" * 10_000,
        "Bearer jm_0123456789ab_" + "a" * 43,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    ],
)
def test_parse_refuses_malformed(token: str) -> None:
    assert parse_api_key(token) is None


def test_parse_accepts_underscores_and_dashes_in_random_part() -> None:
    token = "jm_0123456789ab_" + "_-" * 22
    assert parse_api_key(token) == ("0123456789ab", token)


def test_api_key_principal() -> None:
    principal = api_key_principal("0123456789ab", "acme", "admin")
    assert principal == Principal(
        tenant="acme", subject="key:0123456789ab", role="admin", via="api_key", key_id="0123456789ab"
    )
    assert principal.is_admin


def test_errors_are_jobmill_errors() -> None:
    assert issubclass(AuthError, JobmillError)
    assert issubclass(Forbidden, JobmillError)
    assert Forbidden is errors.Forbidden  # one 403 class for auth and the service layer
    assert not issubclass(Forbidden, AuthError)


# -------------------------------------------------------------------------------------------------- JWT


def test_hs256_valid() -> None:
    token = jwt.encode(_claims(role="admin"), SECRET, algorithm="HS256")
    assert looks_like_jwt(token)
    principal = JwtVerifier(hs256_secret=SECRET).verify(token)
    assert principal == Principal(tenant="acme", subject="alice", role="admin", via="jwt")
    assert principal.is_admin and principal.key_id is None


def test_rs256_valid(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    private, public_pem = rsa_pair
    token = jwt.encode(_claims(), private, algorithm="RS256")
    principal = JwtVerifier(rs256_public_key=public_pem).verify(token)
    assert principal == Principal(tenant="acme", subject="alice", role="user", via="jwt")
    assert not principal.is_admin
    # Both configured: each algorithm is checked with its own key.
    both = JwtVerifier(hs256_secret=SECRET, rs256_public_key=public_pem)
    assert both.verify(token).subject == "alice"
    assert both.verify(jwt.encode(_claims(), SECRET, algorithm="HS256")).subject == "alice"


def test_rs256_public_key_with_escaped_newlines(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    private, public_pem = rsa_pair
    verifier = JwtVerifier(rs256_public_key=public_pem.replace("\n", "\\n"))
    assert verifier.verify(jwt.encode(_claims(), private, algorithm="RS256")).tenant == "acme"


def test_alg_none_refused(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    token = _unsigned_token(_claims(role="admin"))
    assert looks_like_jwt(token)
    for verifier in (
        JwtVerifier(hs256_secret=SECRET),
        JwtVerifier(rs256_public_key=rsa_pair[1]),
        JwtVerifier(hs256_secret=SECRET, rs256_public_key=rsa_pair[1]),
    ):
        assert _reason(verifier, token) == "algorithm not allowed"
    # Also with a (meaningless) signature appended, and with the alg spelled differently.
    for alg in ("none", "None", "NONE", "HS512", "RS512", "ES256", "PS256"):
        header = _b64(json.dumps({"alg": alg}).encode())
        forged = f"{header}.{_b64(json.dumps(_claims()).encode())}.{_b64(b'x' * 32)}"
        assert _reason(JwtVerifier(hs256_secret=SECRET), forged) == "algorithm not allowed"


def test_wrong_key_refused(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    token = jwt.encode(_claims(), OTHER_SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == "invalid signature"
    other_private, _ = _rsa_pair()
    rs_token = jwt.encode(_claims(), other_private, algorithm="RS256")
    assert _reason(JwtVerifier(rs256_public_key=rsa_pair[1]), rs_token) == "invalid signature"


def test_tampered_payload_refused() -> None:
    token = jwt.encode(_claims(role="user"), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    tampered = f"{header}.{_b64(json.dumps(_claims(role='admin')).encode())}.{signature}"
    assert _reason(JwtVerifier(hs256_secret=SECRET), tampered) == "invalid signature"


def test_expired_refused() -> None:
    verifier = JwtVerifier(hs256_secret=SECRET, leeway_s=30)
    expired = jwt.encode(_claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    assert _reason(verifier, expired) == "token expired"
    # Within the leeway it is still accepted.
    recent = jwt.encode(_claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert verifier.verify(recent).subject == "alice"
    assert _reason(JwtVerifier(hs256_secret=SECRET, leeway_s=0), recent) == "token expired"


def test_exp_required() -> None:
    token = jwt.encode(_claims(exp=None), SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == "missing claim exp"
    bad = jwt.encode(_claims(exp="tomorrow"), SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), bad) == "malformed token"


def test_not_yet_valid_refused() -> None:
    token = jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == "token not yet valid"


@pytest.mark.parametrize("claim", ["sub", "tenant", "role"])
def test_missing_claims_refused(claim: str) -> None:
    token = jwt.encode(_claims(**{claim: None}), SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == f"missing claim {claim}"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tenant": ""}, "invalid claim tenant"),
        ({"tenant": 42}, "invalid claim tenant"),
        ({"tenant": ["acme"]}, "invalid claim tenant"),
        ({"tenant": "-acme"}, "invalid claim tenant"),
        ({"tenant": "acme corp"}, "invalid claim tenant"),
        ({"tenant": "acme\n"}, "invalid claim tenant"),
        ({"tenant": "a" * 129}, "invalid claim tenant"),
        ({"tenant": "../etc"}, "invalid claim tenant"),
        ({"role": "root"}, "invalid claim role"),
        ({"role": "Admin"}, "invalid claim role"),
        ({"role": ["admin"]}, "invalid claim role"),
        ({"role": True}, "invalid claim role"),
        ({"sub": ""}, "invalid claim sub"),
        ({"sub": 123}, "invalid claim sub"),
        ({"sub": "x" * 256}, "invalid claim sub"),
        ({"sub": "bob\x00"}, "invalid claim sub"),
        ({"sub": "key:0123456789ab"}, "invalid claim sub"),  # the API-key namespace is reserved
    ],
)
def test_invalid_claims_refused(overrides: dict[str, Any], reason: str) -> None:
    token = jwt.encode(_claims(**overrides), SECRET, algorithm="HS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == reason


def test_valid_tenant_shapes() -> None:
    verifier = JwtVerifier(hs256_secret=SECRET)
    for tenant in ("a", "A9", "acme.corp:eu-1_x", "a" * 128):
        token = jwt.encode(_claims(tenant=tenant), SECRET, algorithm="HS256")
        assert verifier.verify(token).tenant == tenant


def test_hs256_refused_by_rs256_only_verifier(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    verifier = JwtVerifier(rs256_public_key=rsa_pair[1])
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert _reason(verifier, token) == "algorithm not allowed"


def test_rs256_refused_by_hs256_only_verifier(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    token = jwt.encode(_claims(), rsa_pair[0], algorithm="RS256")
    assert _reason(JwtVerifier(hs256_secret=SECRET), token) == "algorithm not allowed"


def test_key_confusion_attack_refused(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    """RS256 -> HS256: an attacker HMAC-signs a token with the (public) RSA key PEM as the secret."""
    public_pem = rsa_pair[1]
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    for secret in (public_pem, public_pem.strip()):
        signature = _b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
        forged = f"{header}.{payload}.{signature}"
        assert _reason(JwtVerifier(rs256_public_key=public_pem), forged) == "algorithm not allowed"
        # Even when HS256 is also enabled (with its own secret), the PEM is never used as the HMAC key.
        both = JwtVerifier(hs256_secret=SECRET, rs256_public_key=public_pem)
        assert _reason(both, forged) == "invalid signature"


def test_issuer_and_audience() -> None:
    verifier = JwtVerifier(hs256_secret=SECRET, issuer="https://idp.example", audience="jobmill")
    good = jwt.encode(_claims(iss="https://idp.example", aud="jobmill"), SECRET, algorithm="HS256")
    assert verifier.verify(good).subject == "alice"
    wrong_iss = jwt.encode(_claims(iss="https://evil.example", aud="jobmill"), SECRET, algorithm="HS256")
    assert _reason(verifier, wrong_iss) == "invalid issuer"
    wrong_aud = jwt.encode(_claims(iss="https://idp.example", aud="other"), SECRET, algorithm="HS256")
    assert _reason(verifier, wrong_aud) == "invalid audience"
    no_iss = jwt.encode(_claims(aud="jobmill"), SECRET, algorithm="HS256")
    assert _reason(verifier, no_iss) == "missing claim iss"
    no_aud = jwt.encode(_claims(iss="https://idp.example"), SECRET, algorithm="HS256")
    assert _reason(verifier, no_aud) == "missing claim aud"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "!!!.???.***", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "x" * 10_000],
)
def test_garbage_refused(token: str) -> None:
    message = _reason(JwtVerifier(hs256_secret=SECRET), token)
    assert message in {"missing token", "malformed token", "token too long", "invalid signature"}


def test_verifier_without_keys_refuses_everything() -> None:
    verifier = JwtVerifier()
    assert verifier.algorithms == ()
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert _reason(verifier, token) == "JWT authentication is not enabled"


def test_verifier_config_errors(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    with pytest.raises(ConfigError):
        JwtVerifier(hs256_secret="short")
    with pytest.raises(ConfigError):
        JwtVerifier(hs256_secret=rsa_pair[1])  # a PEM is not an HMAC secret
    with pytest.raises(ConfigError):
        JwtVerifier(rs256_public_key="not a key")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small_pem = (
        small.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ConfigError):
        JwtVerifier(rs256_public_key=small_pem)
    with pytest.raises(ConfigError):
        JwtVerifier(hs256_secret=SECRET, leeway_s=-1)
    assert JwtVerifier(hs256_secret=SECRET, rs256_public_key=rsa_pair[1]).algorithms == ("HS256", "RS256")


def test_looks_like_jwt() -> None:
    assert looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # unsigned: still routed to the verifier
    for token in ("", "a.b", "a.b.c.d", "a..c", ".b.c", "a b.c.d", "a.b.c\n", "jm_0123456789ab_" + "a" * 43):
        assert not looks_like_jwt(token), token
