"""GET /jobs/{id}, the API's most frequent request, takes a short way (routes_jobs._get_job_fast): the
caller's key and the job are read in one store call, shared by the concurrent requests of one key
(api/coalesce.py), and FastAPI's per-request machinery is skipped (api/direct.py). Here: it answers exactly
what FastAPI's handling of the declared endpoint answers, and it keeps every check (revocation at once on
every node, tenants, each caller's own secret, rate limits)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from jobmill.api.app import API_PREFIX
from jobmill.api.coalesce import Coalescer
from jobmill.api.direct import DirectRoute
from jobmill.errors import StoreError
from jobmill.service import utc_now
from jobmill.store import postgres
from jobmill.store.base import ApiKeyJobs, JobGetManyByApiKeyParams, JobQueuePositionParams, WouldBlock
from tests.api.conftest import MakeApi
from tests.api.harness import BAD_KEY, Api

JOBS = f"{API_PREFIX}/jobs"


def _route(api: Api) -> DirectRoute:
    [route] = [r for r in api.app.router.routes if isinstance(r, DirectRoute)]
    assert route.path == f"{JOBS}/{{job_id}}"
    return route


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str], str]:
    """Status, headers and body, without what differs between any two answers (request ids, and the
    expiry that signed download URLs carry)."""
    body = re.sub(r'"request_id":"[^"]*"', '"request_id":"-"', response.text)
    body = re.sub(r"/files/[^\"]*", "/files/-", body)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
    return response.status_code, headers, body


def test_answers_equal_fastapis_answers(api: Api) -> None:
    # Jobs in every state a view distinguishes: pending (position), running, completed with a result and an
    # output (signed URL), failed (traceback for admins only), cached.
    running = api.submit(api.user)
    api.start(running["id"])
    done = api.submit(api.admin, kind="t.other")
    api.complete(
        api.start(done["id"]),
        {"ok": True, "n": 1.5},
        {"out.txt": api.store_output("t1", "out.txt", b"hello", "text/plain")},
    )
    failed = api.submit(api.user)
    api.fail(api.start(failed["id"]))
    first = api.submit(api.user, kind="t.cached", params={"c": 1})
    api.complete(api.start(first["id"]), {"r": 2})
    cached = api.submit(api.user, kind="t.cached", params={"c": 1})
    pending = api.submit(api.user, params={"x": [1, 2.5, None, "é", {"y": 1e16}]})
    behind = api.submit(api.user2, priority=-3)
    revoked = api.token("t1", "user", "revoked")
    api.services.access.revoke_key(api.services.access.authenticate(revoked).key_id, "tests")
    ids = [j["id"] for j in (running, done, failed, cached, pending, behind)]
    paths = [f"{JOBS}/{i}" for i in ids]
    paths += [f"{JOBS}/{uuid4()}", f"{JOBS}/not-a-uuid", f"{JOBS}/{pending['id'].upper()}"]
    paths += [f"{JOBS}/{pending['id'].replace('-', '')}"]
    callers: list[dict[str, str]] = [
        {"Authorization": f"Bearer {token}"}
        for token in (api.user, api.admin, api.other_user, api.jwt("alice"), revoked, BAD_KEY, "x.y")
    ]
    callers += [{}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "}]
    route = _route(api)
    direct = route.app
    answers: dict[str, list[tuple[int, dict[str, str], str]]] = {"direct": [], "fastapi": []}
    for name, app in (("direct", direct), ("fastapi", route.standard_app)):
        route.app = app
        try:
            for headers in callers:
                for path in paths:
                    answers[name].append(_comparable(api.get(path, headers=headers)))
        finally:
            route.app = direct
    statuses = {status for status, _, _ in answers["direct"]}
    assert statuses == {200, 400, 401, 404}, statuses
    assert answers["direct"] == answers["fastapi"]


def test_a_revoked_key_is_refused_at_once_on_every_node(make_api: MakeApi) -> None:
    node_a, node_b = make_api(), make_api()  # two API nodes on one database
    token = node_a.token("t1", "user", "soon-revoked")
    job = node_a.submit(token)
    assert node_b.get(f"{JOBS}/{job['id']}", token=token).status_code == 200
    key_id = node_a.services.access.authenticate(token).key_id
    assert key_id is not None
    node_a.services.access.revoke_key(key_id, "tests")
    response = node_b.get(f"{JOBS}/{job['id']}", token=token)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["message"] == "invalid or revoked API key"
    assert response.headers["www-authenticate"] == "Bearer"


class _HeldReads:
    """Wraps the store's read so that it is made in a thread (never on the event loop: WouldBlock), and
    that the first one waits until released: the requests sent meanwhile queue up behind it, and are read
    together next."""

    def __init__(self, api: Api) -> None:
        self.store = api.services.jobs.store
        self.read = self.store.job_get_many_by_api_key
        self.calls: list[list[UUID]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        if not params.wait:
            raise WouldBlock("in a thread, for this test")
        self.calls.append(list(params.job_ids))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return self.read(params)


def _while_held(api: Api, held: _HeldReads, requests: Sequence[tuple[str, str]]) -> list[int]:
    """Sends the first request, and the others while its read is held; their statuses."""

    async def get(path: str, token: str) -> int:
        response = await api.client.get(path, headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    async def send() -> list[int]:
        first = asyncio.ensure_future(get(*requests[0]))
        assert await asyncio.to_thread(held.entered.wait, 10)
        others = [asyncio.ensure_future(get(*request)) for request in requests[1:]]
        for _ in range(20):  # let them reach the coalescer, behind the held read
            await asyncio.sleep(0.005)
        held.release.set()
        return [await first, *await asyncio.gather(*others)]

    return api.run(send())


def test_concurrent_requests_of_one_key_share_a_read_and_each_is_checked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = [api.submit(api.user)["id"] for _ in range(3)]
    theirs = api.submit(api.other_user)["id"]
    key_id = api.services.access.authenticate(api.user).key_id
    forged = f"jm_{key_id}_" + "A" * 43  # the same key id, not its secret
    held = _HeldReads(api)
    monkeypatch.setattr(held.store, "job_get_many_by_api_key", held)
    requests = [(f"{JOBS}/{mine[0]}", api.user)]  # the first read, held
    requests += [(f"{JOBS}/{i}", api.user) for i in mine[1:]]
    requests += [(f"{JOBS}/{theirs}", api.user), (f"{JOBS}/{uuid4()}", api.user)]
    requests += [(f"{JOBS}/{mine[1]}", forged)]
    statuses = _while_held(api, held, requests)
    assert statuses == [200, 200, 200, 404, 404, 401]
    # The first request was read alone; the five that came while it was held, in one read together.
    assert [len(ids) for ids in held.calls] == [1, 5]


def test_a_read_that_fails_fails_its_requests_only(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    job = api.submit(api.user)
    store = api.services.jobs.store
    read = store.job_get_many_by_api_key
    failures = iter([RuntimeError("the database went away")])

    def flaky(params: JobGetManyByApiKeyParams) -> ApiKeyJobs:
        for failure in failures:
            raise failure
        return read(params)

    monkeypatch.setattr(store, "job_get_many_by_api_key", flaky)
    client = api._client(raise_app_exceptions=False)
    try:
        assert api.get(f"{JOBS}/{job['id']}", token=api.user, client=client).status_code == 500
    finally:
        api.run(client.aclose())
    assert api.get(f"{JOBS}/{job['id']}", token=api.user).status_code == 200


def test_rate_limits_apply(make_api: MakeApi) -> None:
    api = make_api(rate_limit_per_s=0.01, rate_limit_burst=2)
    job = api.submit(api.user)  # the first of the two
    assert api.get(f"{JOBS}/{job['id']}", token=api.user).status_code == 200
    response = api.get(f"{JOBS}/{job['id']}", token=api.user)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    # Failed authentications count per IP; past their burst the IP is refused, whatever it sends.
    api = make_api(auth_rate_limit_per_s=0.01, auth_rate_limit_burst=2)
    job = api.submit(api.user)
    assert [api.get(f"{JOBS}/{job['id']}", token=BAD_KEY).status_code for _ in range(3)] == [401, 401, 429]
    assert api.get(f"{JOBS}/{job['id']}", token=api.user).status_code == 429


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reads_wait_in_a_thread_not_on_the_loop(api: Api) -> None:
    """A GET while another thread holds the SQLite connection (a write in progress) is read in the thread
    pool once the connection is free; meanwhile the event loop goes on serving."""
    job = api.submit(api.user)
    store: Any = api.services.jobs.store
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store._lock:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)

        async def scenario() -> tuple[int, int]:
            get = asyncio.ensure_future(api.client.get(f"{JOBS}/{job['id']}", headers=_bearer(api.user)))
            health = await api.client.get(f"{API_PREFIX}/healthz")
            assert not get.done()  # still waiting for the connection, not holding the loop
            release.set()
            return health.status_code, (await get).status_code

        assert api.run(scenario()) == (200, 200)
    finally:
        release.set()
        thread.join()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------------- the store's read


def test_the_store_reads_a_key_and_its_tenants_jobs(api: Api) -> None:
    store = api.services.jobs.store
    access = api.services.access
    first, second = api.submit(api.user), api.submit(api.user)
    api.start(first["id"])
    theirs = api.submit(api.other_user)
    now = utc_now()
    key_id = access.authenticate(api.user).key_id
    assert key_id is not None
    ids = [UUID(first["id"]), UUID(second["id"]), UUID(theirs["id"]), uuid4(), UUID(second["id"])]
    found = store.job_get_many_by_api_key(JobGetManyByApiKeyParams(key_id, ids, now))
    assert found.key is not None and found.key.tenant == "t1" and found.key.active
    assert set(found.jobs) == {UUID(first["id"]), UUID(second["id"])}  # not the other tenant's
    position = store.job_queue_position(JobQueuePositionParams(UUID(second["id"]), now, "t1"))
    assert position is not None
    assert found.positions == {UUID(second["id"]): position}  # the pending one only
    unknown = store.job_get_many_by_api_key(JobGetManyByApiKeyParams("0" * 12, ids, now))
    assert (unknown.key, unknown.jobs, unknown.positions) == (None, {}, {})
    access.revoke_key(key_id, "tests")
    revoked = store.job_get_many_by_api_key(JobGetManyByApiKeyParams(key_id, ids, now))
    assert revoked.key is not None and not revoked.key.active  # the service refuses it


def test_a_read_that_must_not_wait_raises_would_block(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    store: Any = api.services.jobs.store
    key_id = api.services.access.authenticate(api.user).key_id
    assert key_id is not None
    params = JobGetManyByApiKeyParams(key_id, [uuid4()], utc_now(), wait=False)
    if hasattr(store, "_pool"):  # PostgreSQL answers over the network: never without waiting
        with pytest.raises(WouldBlock):
            store.job_get_many_by_api_key(params)
        return
    assert store.job_get_many_by_api_key(params).key is not None  # SQLite, its connection free: at once
    seen: list[int] = []

    def locked(key_id: str) -> None:
        # What SQLite answers when another process holds the database: with a busy timeout of 0, at once.
        seen.append(store._conn.execute("PRAGMA busy_timeout").fetchone()[0])
        busy = sqlite3.OperationalError("database is locked")
        busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise StoreError(str(busy)) from busy

    monkeypatch.setattr(store, "api_key_get", locked)
    with pytest.raises(WouldBlock):
        store.job_get_many_by_api_key(params)
    assert seen == [0]
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # back to normal
    monkeypatch.undo()
    assert store.job_get_many_by_api_key(params).key is not None


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_reads_the_jobs_as_the_keys_tenant_and_then_leaves_it(api: Api) -> None:
    store: Any = api.services.jobs.store
    key_id = api.services.access.authenticate(api.user).key_id
    job = api.submit(api.user)
    # The jobs are read by the statement that follows the key's in the same pipeline: it runs under
    # row-level security, as the key's tenant (the pipeline is one implicit transaction).
    with store._pool.connection() as conn:
        with conn.pipeline():
            conn.execute(postgres._API_KEY_THEN_TENANT_SQL, {"key_id": key_id, "role": postgres.TENANT_ROLE})
            probe = conn.execute("SELECT current_user, current_setting('jobmill.tenant', true)")
        assert probe.fetchone() == (postgres.TENANT_ROLE, "t1")
    for _ in range(3):
        store.job_get_many_by_api_key(JobGetManyByApiKeyParams(key_id, [UUID(job["id"])], utc_now()))
    # And every pooled connection is back to the owner role, with no tenant set: the switch lasted the
    # read's transaction only.
    with store._pool.connection() as conn:
        owner = conn.execute("SELECT current_user, current_setting('jobmill.tenant', true)").fetchone()
    assert owner[0] != postgres.TENANT_ROLE and not owner[1], owner


# ---------------------------------------------------------------------------------------- Coalescer


class _Reads:
    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.release = threading.Event()
        self.fail_first = fail_first

    def __call__(self, key: str, items: Sequence[int]) -> dict[int, str]:
        self.calls.append((key, list(items)))
        number = len(self.calls)
        if number == 1:
            assert self.release.wait(10)
            if self.fail_first:
                raise RuntimeError("boom")
        return {item: f"{key}:{item}:{number}" for item in items}


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_coalescer_reads_what_came_meanwhile_together() -> None:
    async def scenario() -> None:
        reads = _Reads()
        coalescer: Coalescer[str, int, dict[int, str]] = Coalescer(reads, max_items=3, max_reads=1)
        first = asyncio.ensure_future(coalescer("k", 1))
        await _settle()
        meanwhile = [asyncio.ensure_future(coalescer("k", i)) for i in (2, 3, 4, 5)]
        other_key = asyncio.ensure_future(coalescer("j", 9))  # not held behind k's read
        assert (await other_key)[9] == "j:9:2"
        await _settle()
        reads.release.set()
        assert (await first)[1] == "k:1:1"
        answers = await asyncio.gather(*meanwhile)
        # One read for the first call, then the waiting ones, at most three a read.
        assert reads.calls == [("k", [1]), ("j", [9]), ("k", [2, 3, 4]), ("k", [5])]
        assert [a[i] for a, i in zip(answers, (2, 3, 4, 5), strict=True)] == [
            "k:2:3",
            "k:3:3",
            "k:4:3",
            "k:5:4",
        ]

    asyncio.run(scenario())


def test_coalescer_makes_up_to_max_reads_of_a_key_at_once() -> None:
    async def scenario() -> None:
        held = threading.Event()
        calls: list[list[int]] = []

        def read(key: str, items: Sequence[int]) -> list[int]:
            calls.append(list(items))
            if len(calls) <= 2:
                assert held.wait(10)  # the first two reads wait together: two at once
            return list(items)

        coalescer: Coalescer[str, int, list[int]] = Coalescer(read, max_reads=2)
        first = asyncio.ensure_future(coalescer("k", 1))
        await _settle()
        second = [asyncio.ensure_future(coalescer("k", i)) for i in (2, 3)]
        await _settle()
        third = [asyncio.ensure_future(coalescer("k", i)) for i in (4, 5)]
        await _settle()
        assert calls == [[1], [2, 3]]  # the third waits for one of them to end
        held.set()
        assert await first == [1]
        assert await asyncio.gather(*second) == [[2, 3], [2, 3]]
        assert await asyncio.gather(*third) == [[4, 5], [4, 5]]
        assert calls == [[1], [2, 3], [4, 5]]

    asyncio.run(scenario())


def test_coalescer_failure_reaches_its_callers_and_the_next_read_goes_on() -> None:
    async def scenario() -> None:
        reads = _Reads(fail_first=True)
        coalescer: Coalescer[str, int, dict[int, str]] = Coalescer(reads, max_reads=1)
        first = asyncio.ensure_future(coalescer("k", 1))
        await _settle()
        second = asyncio.ensure_future(coalescer("k", 2))
        cancelled = asyncio.ensure_future(coalescer("k", 3))
        await _settle()
        cancelled.cancel()  # its caller went away: it is not read
        reads.release.set()
        with pytest.raises(RuntimeError, match="boom"):
            await first
        assert (await second)[2] == "k:2:2"
        assert reads.calls == [("k", [1]), ("k", [2])]

    asyncio.run(scenario())


def test_coalescer_calls_made_together_share_the_first_read() -> None:
    async def scenario() -> None:
        calls: list[list[int]] = []

        def read(key: str, items: Sequence[int]) -> int:
            calls.append(list(items))
            return sum(items)

        coalescer: Coalescer[str, int, int] = Coalescer(read)
        assert await asyncio.gather(coalescer("k", 1), coalescer("k", 2), coalescer("k", 3)) == [6, 6, 6]
        assert calls == [[1, 2, 3]]

    asyncio.run(scenario())


def test_coalescer_reads_on_the_loop_when_it_can() -> None:
    async def scenario() -> None:
        threads: list[str] = []

        def read(key: str, items: Sequence[int]) -> int:
            threads.append("pool")
            return sum(items)

        def read_now(key: str, items: Sequence[int]) -> int:
            if key == "busy":
                raise WouldBlock("not now")
            if key == "broken":
                raise RuntimeError("broken")
            threads.append("loop")
            return -sum(items)

        coalescer: Coalescer[str, int, int] = Coalescer(read, read_now)
        assert await asyncio.gather(coalescer("k", 1), coalescer("k", 2)) == [-3, -3]
        assert await coalescer("busy", 5) == 5  # WouldBlock: read in the thread pool instead
        with pytest.raises(RuntimeError, match="broken"):
            await coalescer("broken", 1)
        assert threads == ["loop", "pool"]

    asyncio.run(scenario())
