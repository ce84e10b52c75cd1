"""Rate limits through HTTP (issue 3, acceptance 6): per principal, failed authentications per IP, and,
with Redis, one limit shared by two real API processes (`jobmill serve --no-worker`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis

from jobmill.access import AccessService
from jobmill.api import deps
from jobmill.api.app import API_PREFIX
from jobmill.service import utc_now
from jobmill.store import open_store
from tests.api.conftest import MakeApi
from tests.api.harness import BAD_KEY, SECRET_KEY, Api
from tests.support.processes import REPO, wait_until

QUEUES = f"{API_PREFIX}/queues"
REDIS_URL = os.environ.get("JOBMILL_TEST_API_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_REQUIRED = os.environ.get("JOBMILL_REQUIRE_REDIS") == "1"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _limited(api: Api, token: str) -> httpx.Response:
    response = api.get(QUEUES, token=token)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert response.json()["error"]["details"] == {"retry_after_s": retry_after}
    return response


def test_requests_are_limited_per_principal(make_api: MakeApi) -> None:
    api = make_api(rate_limit_per_s=0.01, rate_limit_burst=3)
    for _ in range(3):
        assert api.get(QUEUES, token=api.user).status_code == 200
    response = _limited(api, api.user)
    assert 90 <= int(response.headers["retry-after"]) <= 101  # one token at 0.01/s
    # Every endpoint of the principal counts against the same bucket.
    assert api.post(f"{API_PREFIX}/jobs", token=api.user, json={"kind": "t.echo"}).status_code == 429
    # Other principals have their own buckets: another key, a JWT subject, another tenant.
    for token in (api.user2, api.jwt("alice"), api.other_user):
        for _ in range(3):
            assert api.get(QUEUES, token=token).status_code == 200
        _limited(api, token)
    # Unauthenticated endpoints are not limited per principal.
    assert api.get(f"{API_PREFIX}/healthz").status_code == 200


def test_failed_authentication_is_limited_per_ip(make_api: MakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api = make_api(auth_rate_limit_per_s=0.5, auth_rate_limit_burst=3)
    valid = api.user
    for token in (None, BAD_KEY, api.jwt("x", expires_in_s=-60)):
        assert api.get(QUEUES, token=token).status_code == 401
    # The next failure exhausts the IP's allowance; from then on even a valid key is refused...
    response = _limited(api, BAD_KEY)
    assert "authentication" in response.json()["error"]["message"]
    _limited(api, valid)
    assert api.post(f"{API_PREFIX}/jobs", token=valid, json={"kind": "t.echo"}).status_code == 429
    # ...until the block expires (the clock of the block is moved, nobody sleeps).
    offset = int(response.headers["retry-after"]) + 0.5
    monkeypatch.setattr(deps, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + offset))
    assert api.get(QUEUES, token=valid).status_code == 200
    # Successful authentications never count as failures.
    for _ in range(10):
        assert api.get(QUEUES, token=valid).status_code == 200


WS = f"{API_PREFIX}/ws"


def _ws_refused(api: Api, path: str, first_message: str | None = None) -> dict[str, object]:
    """The error a WebSocket was closed with: one error message, then the close code 4000 + status."""
    messages, close_code = api.websocket(path, first_message)
    assert [m["type"] for m in messages] == ["error"], messages
    error = messages[0]["error"]
    assert close_code == {"unauthenticated": 4401, "rate_limited": 4429}[error["code"]], (error, close_code)
    return dict(error)


def test_websocket_failed_tokens_count_per_ip(make_api: MakeApi) -> None:
    """Tokens tried over /ws count against the IP's failed authentications, as over HTTP: a WebSocket is
    no way around the limit for someone guessing keys."""
    api = make_api(auth_rate_limit_per_s=0.01, auth_rate_limit_burst=3)
    assert _ws_refused(api, f"{WS}?token={BAD_KEY}")["code"] == "unauthenticated"
    missing = _ws_refused(api, WS, first_message="{}")
    assert missing["code"] == "unauthenticated" and "first message" in str(missing["message"])
    assert _ws_refused(api, f"{WS}?token={api.jwt('x', expires_in_s=-60)}")["code"] == "unauthenticated"
    # The fourth failure runs out the allowance: refused as rate limited, with the wait...
    limited = _ws_refused(api, f"{WS}?token={BAD_KEY}")
    assert limited["code"] == "rate_limited"
    assert int(limited["details"]["retry_after_s"]) >= 90  # type: ignore[index]
    # ...and from then on the IP is blocked everywhere, with a valid key too, over HTTP and /ws.
    assert _ws_refused(api, f"{WS}?token={api.user}")["code"] == "rate_limited"
    _limited(api, api.user)


def test_websocket_connections_count_against_the_principal(make_api: MakeApi) -> None:
    api = make_api(rate_limit_per_s=0.01, rate_limit_burst=2)
    messages, close_code = api.websocket(f"{WS}?token={api.user}")
    assert messages == [{"type": "ready", "tenant": "t1"}] and close_code is None
    assert api.get(QUEUES, token=api.user).status_code == 200
    # Both tokens are spent: the next connection is refused like the next request.
    assert _ws_refused(api, WS, first_message=f'{{"token": "{api.user}"}}')["code"] == "rate_limited"
    _limited(api, api.user)
    # Another principal has its own bucket.
    messages, close_code = api.websocket(f"{WS}?token={api.user2}")
    assert messages[0]["type"] == "ready" and close_code is None


# ------------------------------------------------------------------------------------- Redis, 2 nodes


def _redis_client() -> redis.Redis[bytes]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        message = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if REDIS_REQUIRED:
            pytest.fail(message + " and JOBMILL_REQUIRE_REDIS=1", pytrace=False)
        pytest.skip(message)
    return client


@pytest.fixture
def redis_db() -> Iterator[str]:
    """An empty Redis database for the test (the rate-limit keys have a fixed prefix), emptied after."""
    client = _redis_client()
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}{API_PREFIX}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_two_api_processes_share_one_limit_through_redis(redis_db: str, tmp_path: Path) -> None:
    burst = 6
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = open_store(database_url)  # migrates before the servers start
    try:
        _, token = AccessService(store, utc_now).create_key("t1", "user", "shared", "tests")
        _, other = AccessService(store, utc_now).create_key("t1", "user", "other", "tests")
    finally:
        store.close()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JOBMILL_DATABASE_URL": database_url,
        "JOBMILL_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "JOBMILL_WORKDIR_ROOT": str(tmp_path / "work"),
        "JOBMILL_SECRET_KEY": SECRET_KEY,
        "JOBMILL_REDIS_URL": redis_db,
        "JOBMILL_RATE_LIMIT_PER_S": "0.001",
        "JOBMILL_RATE_LIMIT_BURST": str(burst),
    }
    servers: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for n in range(2):
            port = _free_port()
            log = tmp_path / f"server{n}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "jobmill.cli.main", "serve", "--no-worker",
                     "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            servers.append((proc, f"http://127.0.0.1:{port}", log))
        for proc, url, log in servers:
            wait_until(lambda p=proc, u=url: _ready(u) or p.poll() is not None, 30, f"API at {url}")  # type: ignore[misc]
            assert proc.poll() is None, log.read_text()

        headers = {"Authorization": f"Bearer {token}"}
        answers: dict[str, list[int]] = {url: [] for _, url, _ in servers}
        with httpx.Client(timeout=10) as client:
            for i in range(2 * burst):
                url = servers[i % 2][1]
                answers[url].append(client.get(f"{url}{QUEUES}", headers=headers).status_code)
            # Another principal is still allowed on both nodes.
            for _, url, _ in servers:
                assert (
                    client.get(f"{url}{QUEUES}", headers={"Authorization": f"Bearer {other}"}).status_code
                    == 200
                )
        statuses = [s for url in answers for s in answers[url]]
        assert statuses.count(200) == burst, answers
        assert statuses.count(429) == burst, answers
        # Each node alone would have allowed `burst`: both served some and refused some.
        for url, codes in answers.items():
            assert codes == [200] * (burst // 2) + [429] * (burst // 2), (url, codes)
    finally:
        for proc, _, _ in servers:
            proc.terminate()
        for proc, _, _ in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
