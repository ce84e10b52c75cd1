"""Authentication under attack: key brute force, how keys are stored, forged JWTs, revocation on two nodes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from jobmill.api.app import API_PREFIX
from tests.api.harness import JWT_SECRET, Api
from tests.security.conftest import LIMITS, make_keys
from tests.support.service import ServeProcess, cli, service_env

QUEUES = f"{API_PREFIX}/queues"


def _random_key() -> str:
    return f"jm_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def test_key_brute_force_is_rate_limited_per_ip(tmp_path: Path) -> None:
    api = Api(
        tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}", auth_rate_limit_per_s=0.2, auth_rate_limit_burst=5
    )
    try:
        valid = api.user
        statuses = [api.get(QUEUES, token=_random_key()).status_code for _ in range(30)]
        # The burst is spent on 401s, then every guess is 429 (with Retry-After), however many follow.
        assert statuses[:5] == [401] * 5, statuses
        assert set(statuses[5:]) == {429}, statuses
        # A guessed-right key from the blocked IP is refused too, until the block ends.
        blocked = api.get(QUEUES, token=valid)
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        # Other guessing styles count the same: JWTs, garbage, no token at all.
        for token in (api.jwt("x", expires_in_s=-60), "x" * 9000, None):
            assert api.get(QUEUES, token=token).status_code == 429
    finally:
        api.close()


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    api = Api(tmp_path, f"sqlite:///{database}")
    try:
        tokens = [api.user, api.admin, api.other_user]
        assert api.get(QUEUES, token=api.user).status_code == 200
        listed = api.get(f"{API_PREFIX}/audit", token=api.admin, params={"limit": 500}).text
    finally:
        api.close()
    connection = sqlite3.connect(database)
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = "\n".join(
            repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')
        )
        key_rows = connection.execute("SELECT * FROM jobmill_api_keys").fetchall()
    finally:
        connection.close()
    assert len(key_rows) == len(tokens)
    for token in tokens:
        secret = _secret_part(token)
        assert token not in dump and secret not in dump, "a key is stored in clear"
        assert secret not in listed
        # What is stored is the sha256 of the token (so a leaked database gives no usable key).
        assert hashlib.sha256(token.encode()).hexdigest() in dump
    # Nor in the database's files on disk (WAL included).
    for path in database.parent.glob("jobs.db*"):
        raw = path.read_bytes()
        assert not any(_secret_part(t).encode() in raw for t in tokens), path


def _secret_part(token: str) -> str:
    """The random part of jm_<hex key id>_<urlsafe secret>. Not rsplit('_'): the urlsafe alphabet has '_',
    so that could keep only the secret's last few characters, which then turn up in any binary file by
    chance (a flaky failure seen in the chaos run)."""
    prefix, _key_id, secret = token.split("_", 2)
    assert prefix == "jm" and len(secret) >= 32
    return secret


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hs512(claims: dict[str, Any]) -> str:
    """HS512 with the HS256 secret, signed by hand (PyJWT warns about the key length)."""
    signing_input = f"{_b64({'alg': 'HS512', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{_b64(mac)}"


def _forged_jwts() -> dict[str, str]:
    now = int(time.time())
    good = {"sub": "mallory", "tenant": "t1", "role": "admin", "iat": now, "exp": now + 300}
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg None": f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg none, signature kept": (
            f"{_b64({'alg': 'none'})}.{_b64(good)}." + pyjwt.encode(good, JWT_SECRET).rsplit(".", 1)[1]
        ),
        "wrong key": pyjwt.encode(good, "another-secret-of-at-least-32-bytes-long!!", algorithm="HS256"),
        "other algorithm, same secret": _hs512(good),
        "expired": pyjwt.encode({**good, "exp": now - 5}, JWT_SECRET, algorithm="HS256"),
        "not yet valid": pyjwt.encode({**good, "nbf": now + 600}, JWT_SECRET, algorithm="HS256"),
        "no exp": pyjwt.encode({k: v for k, v in good.items() if k != "exp"}, JWT_SECRET, algorithm="HS256"),
        "no tenant": pyjwt.encode(
            {k: v for k, v in good.items() if k != "tenant"}, JWT_SECRET, algorithm="HS256"
        ),
        "tenant not a string": pyjwt.encode({**good, "tenant": ["t1", "t2"]}, JWT_SECRET, algorithm="HS256"),
        "tenant wildcard": pyjwt.encode({**good, "tenant": "*"}, JWT_SECRET, algorithm="HS256"),
        "tenant injection": pyjwt.encode({**good, "tenant": "t1' OR '1'='1"}, JWT_SECRET, algorithm="HS256"),
        "tenant empty": pyjwt.encode({**good, "tenant": ""}, JWT_SECRET, algorithm="HS256"),
        "role superuser": pyjwt.encode({**good, "role": "root"}, JWT_SECRET, algorithm="HS256"),
        "sub in the key namespace": pyjwt.encode({**good, "sub": "key:abc"}, JWT_SECRET, algorithm="HS256"),
        "tampered payload": (
            lambda t: t.split(".")[0] + "." + _b64({**good, "tenant": "t2"}) + "." + t.split(".")[2]
        )(pyjwt.encode(good, JWT_SECRET, algorithm="HS256")),
        "garbage": "a.b.c",
    }


@pytest.mark.parametrize("name", list(_forged_jwts()))
def test_forged_jwts_are_401(api: Api, name: str) -> None:
    token = _forged_jwts()[name]
    response = api.get(QUEUES, token=token)
    assert response.status_code == 401, (name, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    assert token not in response.text


def test_a_valid_jwt_only_reaches_its_own_tenant(api: Api) -> None:
    job = api.submit(api.user)
    mine = api.jwt("alice", tenant="t1")
    theirs = api.jwt("alice", tenant="t2", role="admin")
    assert api.get(f"{API_PREFIX}/jobs/{job['id']}", token=mine).status_code == 200
    assert api.get(f"{API_PREFIX}/jobs/{job['id']}", token=theirs).status_code == 404


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[list[ServeProcess], dict[str, str], dict[str, str]]]:
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, **LIMITS)
    keys = make_keys(env["JOBMILL_DATABASE_URL"])
    nodes: list[ServeProcess] = []
    try:
        for i in range(2):
            nodes.append(
                ServeProcess(env, tmp_path / f"node{i}.log", "--no-worker", "--app", "tests.e2e.handlers")
            )
        for node in nodes:
            node.wait_ready()
        yield nodes, env, keys
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
def test_a_revoked_key_stops_working_at_once_on_every_node(
    two_nodes: tuple[list[ServeProcess], dict[str, str], dict[str, str]],
) -> None:
    nodes, env, keys = two_nodes
    victim, bystander = keys["user"], keys["admin"]
    clients = [httpx.Client(base_url=node.url, timeout=10) for node in nodes]
    try:
        for client in clients:  # both nodes know the key (and any cache would now be warm)
            for _ in range(3):
                assert client.get(QUEUES, headers={"Authorization": f"Bearer {victim}"}).status_code == 200
        key_id = victim.split("_")[1]
        revoked = cli(env, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        for client in clients:  # the very next request on each node
            response = client.get(QUEUES, headers={"Authorization": f"Bearer {victim}"})
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "unauthenticated"
            assert client.get(QUEUES, headers={"Authorization": f"Bearer {bystander}"}).status_code == 200
    finally:
        for client in clients:
            client.close()
