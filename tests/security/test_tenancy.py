"""Tenancy under attack: another tenant's ids on every endpoint, and crafted filters, cursors and headers
(SQL injection strings included) on every query parameter. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit
from uuid import UUID, uuid4

from jobmill.api.app import API_PREFIX
from jobmill.store.base import JobListParams
from tests.api.harness import Api

JOBS = f"{API_PREFIX}/jobs"
DATA = b"%PDF-1.4 tenant one's secret report\n"

INJECTIONS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE jobmill_jobs; --',
    "1; DROP TABLE jobmill_jobs",
    "pending' UNION SELECT * FROM jobmill_api_keys --",
    "t1",
    "*",
    "%",
    "_",
    "\u2019 OR 1=1 --",  # a unicode right quote
    "\uff07 OR 1=1 --",  # a fullwidth apostrophe
    "\u02bc OR \u02bc1\u02bc=\u02bc1",  # modifier letter apostrophe
    "0x7fffffffffffffff",
    "-1",
    "99999999999999999999999999999999999",
    "9" * 32,  # was a 500: a cursor of up to 32 digits overflowed the 64-bit column
    str(2**63),  # was a 500 as `after`: past the 64-bit event ids
    str(2**63 - 1),
    "999999999999999999",
    "1e309",
    "NaN",
    "null",
    "\\",
    "default\x00",
    "x" * 5000,
]


def _setup(api: Api) -> dict[str, Any]:
    """Tenant t1: a pending job, a completed one with an output, a failed one. Tenant t2: one job."""
    pending = api.submit(api.user, params={"secret": "t1-pending"})
    done = api.submit(api.user, queue="out", params={"secret": "t1-done"})
    output = api.store_output("t1", "report.pdf", DATA, "application/pdf")
    api.complete(api.start(done["id"]), {"secret": "t1-result"}, {"report.pdf": output})
    failed = api.submit(api.user, "t.other")
    api.fail(api.start(failed["id"]))
    theirs = api.submit(api.other_user, params={"mine": "t2"})
    url = api.job(api.user, done["id"])["outputs"][0]["download_url"]
    return {
        "t1": [pending["id"], done["id"], failed["id"]],
        "pending": pending["id"],
        "done": done["id"],
        "failed": failed["id"],
        "t2": [theirs["id"]],
        "url": urlsplit(url).path,
    }


def _no_t1_data(text: str, ids: list[str]) -> None:
    assert "t1-" not in text, text[:500]
    for job_id in ids:
        assert job_id not in text, (job_id, text[:500])


def test_other_tenant_ids_give_404_on_every_endpoint(db_api: Api) -> None:
    api = db_api
    world = _setup(api)
    t1 = world["t1"]
    for token in (api.other_user, api.other_admin):
        for job_id in t1:
            calls: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", f"{JOBS}/{job_id}", {}),
                ("POST", f"{JOBS}/{job_id}/cancel", {}),
                ("POST", f"{JOBS}/{job_id}/cancel", {"json": {"confirm_token": "x.y"}}),
                ("DELETE", f"{JOBS}/{job_id}", {}),
                ("PATCH", f"{JOBS}/{job_id}/priority", {"json": {"priority": 100}}),
                ("POST", f"{JOBS}/{job_id}/retry", {}),
                ("GET", f"{JOBS}/{job_id}/outputs/report.pdf", {"follow_redirects": False}),
            ]
            for method, path, kwargs in calls:
                response = api.request(method, path, token=token, **kwargs)
                # A user is refused admin operations first (403); anyone else learns nothing (404).
                assert response.status_code in (403, 404), (method, path, response.status_code, response.text)
                if token == api.other_admin or (method in ("GET", "POST") and "retry" not in path):
                    assert response.status_code == 404, (method, path, response.text)
                # Exactly what an id that exists nowhere gets: no oracle for "exists elsewhere".
                unknown = str(uuid4())
                twin = api.request(method, path.replace(job_id, unknown), token=token, **kwargs)
                assert twin.status_code == response.status_code, (method, path)
                assert (
                    twin.json()["error"]["message"].replace(unknown, job_id)
                    == (response.json()["error"]["message"])
                ), (method, path)
                _no_t1_data(response.text, [])
            stream = api.open_stream(f"{JOBS}/{job_id}/events", token)
            assert stream.status_code == 404, stream.text
            # The tenant stream filtered on t1's job, replaying from the start: nothing of t1.
            stream = api.open_stream(f"{API_PREFIX}/events?job_id={job_id}&after=1", token)
            assert stream.status_code == 200
            _no_t1_data(stream.text, t1)
            messages, _ = api.websocket(f"{API_PREFIX}/ws?token={token}&job_id={job_id}&after=1")
            assert [m["type"] for m in messages] == ["ready"] and messages[0]["tenant"] == "t2", messages
    # Nothing changed for t1.
    assert api.job(api.user, world["pending"])["status"] == "pending"
    assert api.job(api.user, world["pending"])["priority"] == 0
    assert api.job(api.user, world["failed"])["status"] == "failed"
    # t2's own views hold nothing of t1.
    for path in (JOBS, f"{API_PREFIX}/queues", f"{API_PREFIX}/audit?limit=500"):
        response = api.get(path, token=api.other_admin)
        assert response.status_code == 200
        _no_t1_data(response.text, t1)
    queues = {q["queue"]: q for q in api.get(f"{API_PREFIX}/queues", token=api.other_admin).json()["queues"]}
    assert queues["default"]["pending"] == 1, queues  # t2's one job; t1's pending job is not counted
    for name in ("out", "other"):
        assert name not in queues or all(v in (0, None) for k, v in queues[name].items() if k != "queue")


def _params_of(value: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(path, query, headers) of every list/stream endpoint with `value` in one parameter each."""
    cases: list[tuple[str, dict[str, str], dict[str, str]]] = []
    for name in ("status", "kind", "queue", "cursor", "limit"):
        cases.append((JOBS, {name: value}, {}))
    cases.append((JOBS, {"status": f"pending,{value}"}, {}))
    for name in ("cursor", "limit"):
        cases.append((f"{API_PREFIX}/audit", {name: value}, {}))
    return cases


def _stream_cases(value: str, job_id: str) -> list[tuple[str, dict[str, str]]]:
    quoted = quote(value, safe="")
    return [
        (f"{API_PREFIX}/events?queue={quoted}&after=1", {}),
        (f"{API_PREFIX}/events?after={quoted}", {}),
        (f"{API_PREFIX}/events?job_id={quoted}&after=1", {}),
        (f"{API_PREFIX}/events?after=1", {"last-event-id": value}),
        (f"{JOBS}/{job_id}/events?after={quoted}", {}),
        (f"{JOBS}/{job_id}/events", {"last-event-id": value}),
    ]


def test_crafted_filters_cursors_and_headers_reach_no_other_tenant(db_api: Api) -> None:
    api = db_api
    world = _setup(api)
    t1, t2 = world["t1"], world["t2"]
    for value in INJECTIONS:
        for path, query, headers in _params_of(value):
            response = api.request("GET", path, token=api.other_admin, params=query, headers=headers)
            assert response.status_code < 500, (path, query, response.text[:300])
            assert response.status_code in (200, 400, 422), (path, query, response.status_code)
            _no_t1_data(response.text, t1)
            if response.status_code == 200 and path == JOBS:
                assert {j["id"] for j in response.json()["jobs"]} <= set(t2), (query, response.text[:300])
        for path, headers in _stream_cases(value, t2[0]):
            if any(ord(ch) > 0x7E or ord(ch) < 0x20 for h in headers.values() for ch in h):
                continue  # not sendable as an HTTP header
            response = api.open_stream(path, api.other_admin, extra_headers=headers)
            assert response.status_code < 500, (path, headers, response.text[:300])
            _no_t1_data(response.text, t1)
    # Every table is still there and t1 still has all its jobs.
    params = JobListParams(tenant="t1", limit=50)
    assert {str(j.id) for j in api.services.jobs.list_jobs(params)} == set(t1)
    assert api.get(f"{API_PREFIX}/audit", token=api.admin).status_code == 200
    assert len(api.services.jobs.events(UUID(world["done"]), "t1")) >= 2
    assert api.get(JOBS, token=api.user).json()["jobs"]
