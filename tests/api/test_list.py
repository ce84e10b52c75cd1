"""GET /jobs: filters, cursor pagination, tenant isolation."""

from __future__ import annotations

from typing import Any

from jobmill.api.app import API_PREFIX
from tests.api.harness import Api

JOBS = f"{API_PREFIX}/jobs"


def _list(api: Api, token: str, **params: Any) -> dict[str, Any]:
    response = api.get(JOBS, token=token, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_filters(api: Api) -> None:
    echo = [api.submit(api.user)["id"] for _ in range(3)]
    other = [api.submit(api.user, "t.other")["id"] for _ in range(2)]
    special = api.submit(api.user, queue="special")["id"]
    cancelled = echo[0]
    assert api.post(f"{JOBS}/{cancelled}/cancel", token=api.user).status_code == 200
    running = api.submit(api.user, queue="busy")["id"]
    api.start(running)

    def ids(**params: Any) -> list[str]:
        return [j["id"] for j in _list(api, api.user, **params)["jobs"]]

    everything = ids()
    # Newest first.
    assert everything == [running, special, *reversed(other), *reversed(echo)]
    assert set(ids(kind="t.other")) == set(other)
    assert set(ids(kind="t.echo")) == {*echo, special, running}
    assert set(ids(queue="other")) == set(other)
    assert ids(queue="special") == [special]
    assert ids(status="cancelled") == [cancelled]
    assert ids(status="running") == [running]
    assert set(ids(status="pending")) == {*echo[1:], *other, special}
    # Several statuses: repeated or comma-separated.
    assert set(ids(status=["running", "cancelled"])) == {running, cancelled}
    assert set(ids(kind="t.echo", status="pending", queue="default")) == set(echo[1:])
    assert ids(kind="no.such") == []
    for bad in ({"status": "exploded"}, {"kind": "../x"}, {"limit": 0}, {"limit": 10_000}, {"queue": ""}):
        response = api.get(JOBS, token=api.user, params=bad)
        assert response.status_code in (400, 422), (bad, response.text)


def test_cursor_pagination_has_no_gap_and_no_overlap(api: Api) -> None:
    created = [api.submit(api.user, params={"n": n})["id"] for n in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        body = _list(api, api.user, **params)
        pages += 1
        seen.extend(j["id"] for j in body["jobs"])
        assert len(body["jobs"]) <= 3
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A job submitted while paging is newer than every page still to come: it never shows up there.
        if pages == 1:
            api.submit(api.user)
    assert pages == 3
    assert seen == list(reversed(created))
    assert len(set(seen)) == len(seen)
    # Exactly a page's worth leaves no empty trailing page.
    body = _list(api, api.user, limit=8)
    assert len(body["jobs"]) == 8 and body["next_cursor"] is None

    for bad in ("abc", "-1", "1" * 40, "1.5"):
        response = api.get(JOBS, token=api.user, params={"cursor": bad})
        assert response.status_code in (400, 422), (bad, response.text)


def test_tenant_isolation(api: Api) -> None:
    mine = {api.submit(api.user)["id"] for _ in range(2)}
    theirs = {api.submit(api.other_user)["id"] for _ in range(3)}
    for token, expected in ((api.user, mine), (api.admin, mine), (api.other_admin, theirs)):
        assert {j["id"] for j in _list(api, token)["jobs"]} == expected
    # Paging through the other tenant's cursor values shows nothing of ours either.
    page = _list(api, api.other_admin, limit=1)
    rest = _list(api, api.other_admin, limit=50, cursor=page["next_cursor"])
    assert {j["id"] for j in page["jobs"] + rest["jobs"]} == theirs
    # Nor do their jobs' views, queues or audit entries leak.
    for job_id in theirs:
        assert api.get(f"{JOBS}/{job_id}", token=api.admin).status_code == 404
    queues = api.get(f"{API_PREFIX}/queues", token=api.user).json()["queues"]
    assert sum(q["pending"] for q in queues) == len(mine)
